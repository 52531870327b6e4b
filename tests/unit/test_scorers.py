"""Scorers on tiny random CLIP models of the real architectures: the loading code maps a correctly named
checkpoint onto the architecture (no missing or unexpected keys), scores are finite and follow each
scorer's definition, and missing weights name what to place and where it is published."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tpo_ray.config import EvalConfig
from tpo_ray.eval.scorers import SCORERS, ScorerWeightsError, build_scorer
from tpo_ray.eval.scorers.aesthetic import CLIP_FOLDER, MLP_FILE, AestheticPredictor
from tpo_ray.eval.scorers.registry import projected
from tests.helpers.clip import tiny_clip_folder



def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), (40 * i % 255, 90, 200 - 30 * i % 200)) for i in range(n)]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return tiny_clip_folder(tmp_path_factory.mktemp("clip") / "model")


def test_a_transformers_clip_checkpoint_maps_onto_the_architecture_without_missing_keys(clip_folder) -> None:
    from transformers import CLIPModel

    _, info = CLIPModel.from_pretrained(clip_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_clip_score_is_100_times_the_clipped_cosine(clip_folder) -> None:
    scorer = build_scorer("clip", str(clip_folder))
    prompts = ["a red car", "a blue bird", "a green field"]
    got = scorer.score(images(3), prompts)
    cos = scorer.cosine(images(3), prompts)
    assert got == pytest.approx((100 * cos.clamp(min=0)).tolist())
    assert all(0.0 <= s <= 100.0 for s in got)
    assert scorer.score(images(1), ["a red car"]) == pytest.approx(got[:1], abs=1e-4)  # per pair, not per batch


def test_pickscore_is_the_logit_scale_times_the_cosine(clip_folder) -> None:
    scorer = build_scorer("pickscore", str(clip_folder))
    prompts = ["a red car", "a blue bird"]
    scale = float(scorer.model.logit_scale.exp().detach())
    assert scorer.score(images(2), prompts) == pytest.approx((scale * scorer.cosine(images(2), prompts)).tolist())
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        scorer.score(images(2), prompts[:1])


def test_the_aesthetic_predictor_loads_the_published_layout(tmp_path) -> None:
    folder = tmp_path / "aesthetic"
    tiny_clip_folder(folder / CLIP_FOLDER, projection_dim=768)  # ViT-L/14's projection width
    published = {f"layers.{i}.{p}": t for i, (w, b) in {0: (1024, 768), 2: (128, 1024), 4: (64, 128), 6: (16, 64),
                                                         7: (1, 16)}.items()
                 for p, t in (("weight", torch.randn(w, b) * 0.01), ("bias", torch.zeros(w)))}
    assert set(published) == set(AestheticPredictor(768).state_dict())  # the names the .pth file holds
    torch.save(published, folder / MLP_FILE)
    scorer = build_scorer("aesthetic", str(folder))
    got = scorer.score(images(2), ["ignored", "ignored"])
    assert len(got) == 2 and all(torch.isfinite(torch.tensor(got)))
    with torch.no_grad():  # a linear MLP with zero biases: the score is linear in the normalised embedding
        pixel = scorer.processor(images=images(1), return_tensors="pt")["pixel_values"]
        emb = projected(scorer.clip.get_image_features(pixel_values=pixel))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        assert got[0] == pytest.approx(float(scorer.mlp(emb)), rel=1e-5)


def test_missing_weights_name_the_file_to_place_and_where_it_is_published(tmp_path) -> None:
    with pytest.raises(ScorerWeightsError, match=r"scorer 'pickscore' has no weights configured: place the "
                                                 r"PickScore_v1 folder .*huggingface.co/yuvalkirstain/PickScore_v1"):
        build_scorer("pickscore", None)
    with pytest.raises(ScorerWeightsError, match=r"/nowhere does not exist"):
        build_scorer("clip", "/nowhere")
    (tmp_path / "aesthetic").mkdir()
    with pytest.raises(ScorerWeightsError, match=rf"{re.escape(MLP_FILE)} is missing.*improved-aesthetic-predictor"):
        build_scorer("aesthetic", str(tmp_path / "aesthetic"))
    with pytest.raises(ValueError, match=r"unknown scorer 'hps'; available: \['aesthetic', 'clip', 'hpsv2', 'imagereward', 'pickscore', 'scene'\]"):
        build_scorer("hps", "/x")
    assert sorted(SCORERS) == ["aesthetic", "clip", "hpsv2", "imagereward", "pickscore", "scene"]
    assert set(SCORERS) == set(EvalConfig.model_fields["scorers"].annotation.__args__[0].__args__)  # config names


def test_weights_on_s3_are_copied_once_to_the_cache(clip_folder, s3_bucket, tmp_path) -> None:
    from tpo_ray.data.io import filesystem_for

    fs, bucket = filesystem_for(s3_bucket)
    for f in clip_folder.iterdir():
        fs.put(str(f), f"{bucket}/scorers/clip/{f.name}")
    scorer = build_scorer("clip", f"{s3_bucket}/scorers/clip", cache_dir=tmp_path / "cache")
    assert len(scorer.score(images(1), ["a red car"])) == 1
    copies = list((tmp_path / "cache" / "scorers").glob("*/clip"))
    assert len(copies) == 1 and (copies[0] / "config.json").is_file()


@pytest.fixture(scope="module")
def text_encoder_folder(tmp_path_factory) -> Path:
    """A CLIP text encoder alone (what an SD pipeline's text_encoder/ holds), with the CLIP processor files."""
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("text_encoder") / "model"
    tiny_clip_folder(folder)
    (folder / "model.safetensors").unlink()
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=77)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_a_clip_text_encoder_folder_is_refused_naming_the_folder_and_keys(text_encoder_folder, name) -> None:
    from tpo_ray.eval.scorers.registry import ScorerLoadError

    with pytest.raises(ScorerLoadError, match=rf"scorer '{name}': {re.escape(str(text_encoder_folder))} is not the model "
                                              r"it expects \(its config.json is a 'clip_text_model', not a 'clip'\).*"
                                              r"keys \d+ missing \(logit_scale, text_model\..*\d+ unexpected "
                                              r"\(embeddings\.position_embedding\.weight"):
        build_scorer(name, str(text_encoder_folder))


def test_the_aesthetic_clip_is_loaded_strictly_too(tmp_path, text_encoder_folder) -> None:
    from tpo_ray.eval.scorers.registry import ScorerLoadError

    folder = tmp_path / "aesthetic"
    shutil.copytree(text_encoder_folder, folder / CLIP_FOLDER)
    torch.save(AestheticPredictor(16).state_dict(), folder / MLP_FILE)
    with pytest.raises(ScorerLoadError, match=rf"scorer 'aesthetic': {re.escape(str(folder / CLIP_FOLDER))} is not "
                                              r"the model it expects.*\d+ missing \(logit_scale"):
        build_scorer("aesthetic", str(folder))
    shutil.rmtree(folder / CLIP_FOLDER)
    tiny_clip_folder(folder / CLIP_FOLDER, projection_dim=768)
    torch.save({**AestheticPredictor(768).state_dict(), "layers.9.weight": torch.zeros(1)}, folder / MLP_FILE)
    with pytest.raises(ScorerLoadError, match=rf"{re.escape(MLP_FILE)} is not the model it expects.*1 unexpected "
                                              r"\(layers\.9\.weight\)"):
        build_scorer("aesthetic", str(folder))


def test_a_weights_stamp_follows_the_files_not_their_folder(tmp_path, clip_folder) -> None:
    from tpo_ray.eval.scorers.registry import scorer_stamp, weights_stamp

    copy = tmp_path / "copy"
    shutil.copytree(clip_folder, copy)  # copy2: names, sizes and modification times kept
    assert weights_stamp(str(copy)) == weights_stamp(str(clip_folder)) == scorer_stamp("clip", str(copy), {})
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("x")  # hidden: not a weight
    assert weights_stamp(str(copy)) == weights_stamp(str(clip_folder))
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert weights_stamp(str(copy)) != weights_stamp(str(clip_folder))
    assert scorer_stamp("scene", None, {}).startswith("program:scene-verifier:")
