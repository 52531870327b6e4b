"""HPSv2 and ImageReward on tiny random models of the real architectures: a checkpoint under the published
key names (those of open_clip's `CLIP` in `HPS_v2.1_compressed.pt`, of ImageReward's BLIP + MLP in
`ImageReward.pt`), written here from a tiny model, loads with no missing or unexpected key and gives that
model's scores; scores are finite, one per image and deterministic; missing files name what to place."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.clip import ASSETS
from tpo_ray.eval.scorers import SCORERS, ScorerWeightsError, build_scorer
from tpo_ray.eval.scorers.hpsv2 import CHECKPOINT as HPS_FILE
from tpo_ray.eval.scorers.hpsv2 import OPENAI_MEAN, OPENAI_STD, hps_pixels, open_clip_to_transformers
from tpo_ray.eval.scorers.imagereward import CHECKPOINT as IR_FILE
from tpo_ray.eval.scorers.imagereward import (MED_CONFIG, REWARD_MEAN, REWARD_STD, TOKENIZER, VISION_CONFIG,
                                              ImageRewardModel, image_reward_pixels, image_reward_to_transformers)

PROMPTS = ["a red car on the road", "a blue bird over a green field, photo"]


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (48 + 8 * i, 40), (40 * i % 255, 90, 200 - 30 * i % 200)) for i in range(n)]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights away from the init values (LayerNorm weights of exactly 1 would hide a swapped name)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# ---- HPSv2: open_clip ViT CLIP names, as HPSv2's open_clip fork (model.py, transformer.py) defines them ----

OPEN_CLIP_TOP = ["ln_final.bias", "ln_final.weight", "logit_scale", "positional_embedding", "text_projection",
                 "token_embedding.weight", "visual.class_embedding", "visual.conv1.weight",
                 "visual.ln_post.bias", "visual.ln_post.weight", "visual.ln_pre.bias", "visual.ln_pre.weight",
                 "visual.positional_embedding", "visual.proj"]
OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}


def open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel's weights under open_clip's names (what HPS_v2.1_compressed.pt holds)."""
    sd = model.state_dict()
    out = {"logit_scale": sd["logit_scale"],
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "text_projection": sd["text_projection.weight"].t(), "visual.proj": sd["visual_projection.weight"].t(),
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"]}
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
        out[f"visual.ln_pre.{p}"] = sd[f"vision_model.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = sd[f"vision_model.post_layernorm.{p}"]
    towers = (("transformer", "text_model", model.config.text_config),
              ("visual.transformer", "vision_model", model.config.vision_config))
    for ours, theirs, config in towers:
        for i in range(config.num_hidden_layers):
            a, b = f"{ours}.resblocks.{i}.", f"{theirs}.encoder.layers.{i}."
            for p in ("weight", "bias"):
                out[f"{a}attn.in_proj_{p}"] = torch.cat([sd[f"{b}self_attn.{x}_proj.{p}"] for x in "qkv"])
                out.update({f"{a}{o}.{p}": sd[f"{b}{t}.{p}"] for o, t in OPEN_CLIP_BLOCK.items()})
    return {k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def hps(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A folder in the published layout (tiny config.json, the real CLIP tokenizer, HPS_v2.1_compressed.pt)
    and the tiny CLIPModel its checkpoint was written from."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hpsv2")
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "hidden_act": "gelu"}  # ViT-H-14: GELU, not OpenAI's QuickGELU
    config = CLIPConfig(text_config={**tower, "max_position_embeddings": 77},
                        vision_config={**tower, "image_size": 32, "patch_size": 16}, projection_dim=16)
    reference = perturbed(CLIPModel(config))
    config.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(ASSETS / "tokenizer").save_pretrained(folder)
    torch.save({"state_dict": open_clip_state_dict(reference)}, folder / HPS_FILE)
    return folder, reference


def test_hps_checkpoint_has_the_open_clip_names_and_maps_onto_clip_model_without_missing_keys(hps) -> None:
    folder, reference = hps
    published = torch.load(folder / HPS_FILE, weights_only=True)["state_dict"]
    blocks = {f"{tower}.resblocks.{i}.{name}" for tower in ("transformer", "visual.transformer") for i in range(2)
              for name in ("attn.in_proj_weight", "attn.in_proj_bias",
                           *(f"{m}.{p}" for m in OPEN_CLIP_BLOCK for p in ("weight", "bias")))}
    assert set(published) == set(OPEN_CLIP_TOP) | blocks
    result = reference.load_state_dict(open_clip_to_transformers(published), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(ValueError, match=r"unknown keys \['module.ln_final.bias'"):
        open_clip_to_transformers({f"module.{k}": v for k, v in published.items()})


def test_hps_is_100_times_the_cosine_of_the_model_the_checkpoint_came_from(hps) -> None:
    folder, reference = hps
    scorer = build_scorer("hpsv2", str(folder), device="cpu")
    got = scorer.score(images(2), PROMPTS)
    with torch.no_grad():
        text = scorer.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
        image_emb = reference.get_image_features(pixel_values=hps_pixels(images(2), 32)).pooler_output
        text_emb = reference.get_text_features(**text).pooler_output
    want = 100 * torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
    assert got == pytest.approx(want.tolist(), abs=1e-4)
    assert len(got) == 2 and all(torch.isfinite(torch.tensor(got))) and all(-100 <= s <= 100 for s in got)
    assert scorer.score(images(2), PROMPTS) == got  # deterministic
    assert scorer.score(images(1), PROMPTS[:1]) == pytest.approx(got[:1], abs=1e-4)  # per pair, not per batch
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        scorer.score(images(2), PROMPTS[:1])


def test_hps_pixels_resize_the_short_side_and_crop_the_centre() -> None:
    wide = Image.new("RGB", (90, 30), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 30, 30))  # the left third, cropped away
    x = hps_pixels([wide], 30)
    assert x.shape == (1, 3, 30, 30)
    white = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(x[0, :, :, 5:25].mean(dim=(1, 2)), white, atol=1e-3)


# ---- ImageReward: BLIP (ViT + med.py BERT) + MLP names, as ImageReward's BLIP_Pretrain and MLP define them ----

VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
             "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
VIT_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
           "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
           "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
           "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}


def image_reward_state_dict(model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """An ImageRewardModel's weights under ImageReward's names, with what the published file holds besides
    (BLIP's contrastive projections, the position-id buffer)."""
    sd = model.state_dict()
    out = {f"blip.visual_encoder.{old}": sd[f"vision_model.{new}"] for old, new in VIT_TOP.items()}
    for i in range(model.vision_model.config.num_hidden_layers):
        out.update({f"blip.visual_encoder.blocks.{i}.{old}.{p}": sd[f"vision_model.encoder.layers.{i}.{new}.{p}"]
                    for old, new in VIT_BLOCK.items() for p in ("weight", "bias")})
    out.update({f"blip.{k}": v for k, v in sd.items() if k.startswith("text_encoder.")})
    out.update({k: v for k, v in sd.items() if k.startswith("mlp.")})
    text, vision = model.text_encoder.config, model.vision_model.config
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(text.max_position_embeddings)[None]
    for name, width in (("vision_proj", vision.hidden_size), ("text_proj", text.hidden_size)):
        out[f"blip.{name}.weight"], out[f"blip.{name}.bias"] = torch.randn(16, width), torch.zeros(16)
    return {k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def image_reward(tmp_path_factory) -> tuple[Path, ImageRewardModel]:
    """A folder in the published layout (ImageReward.pt, a tiny med_config.json, a tiny WordPiece tokenizer)
    plus a tiny vision_config.json, and the tiny model its checkpoint was written from."""
    folder = tmp_path_factory.mktemp("imagereward")
    words = "a red car on the road blue bird over green field photo , of".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words)]
    (folder / TOKENIZER).mkdir()
    (folder / TOKENIZER / "vocab.txt").write_text("\n".join(vocab) + "\n")
    med = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 32, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
           "encoder_width": 768, "add_cross_attention": True}  # + [DEC], [ENC]; encoder_width is set from the ViT
    vision = {"hidden_size": 24, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    (folder / MED_CONFIG).write_text(json.dumps(med))
    (folder / VISION_CONFIG).write_text(json.dumps(vision))
    torch.manual_seed(0)
    reference = perturbed(ImageRewardModel(med, {"hidden_act": "gelu", "layer_norm_eps": 1e-6, **vision}))
    torch.save(image_reward_state_dict(reference), folder / IR_FILE)
    return folder, reference


def test_image_reward_checkpoint_maps_onto_blip_without_missing_keys(image_reward) -> None:
    folder, reference = image_reward
    published = torch.load(folder / IR_FILE, weights_only=True)
    assert {k.split(".")[0] for k in published} == {"blip", "mlp"}
    assert {"blip.visual_encoder.cls_token", "blip.visual_encoder.blocks.1.attn.qkv.weight", "mlp.layers.7.weight",
            "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"} <= set(published)
    result = reference.load_state_dict(image_reward_to_transformers(published), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(ValueError, match=r"unknown keys \['blip.itm_head.weight'\]"):
        image_reward_to_transformers({**published, "blip.itm_head.weight": torch.zeros(2, 32)})


def test_image_reward_is_the_normalised_head_on_the_first_text_token(image_reward) -> None:
    folder, reference = image_reward
    scorer = build_scorer("imagereward", str(folder), device="cpu")
    got = scorer.score(images(2), PROMPTS)
    text = scorer.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert text["input_ids"][0, :8].tolist() == [2, 5, 6, 7, 8, 9, 10, 3]  # [CLS] a red car on the road [SEP]
    assert len(scorer.tokenizer) == reference.text_encoder.config.vocab_size  # + BLIP's [DEC] and [ENC]
    with torch.no_grad():
        image_embeds = reference.vision_model(pixel_values=image_reward_pixels(images(2), 32)).last_hidden_state
        first = reference.text_encoder(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                       encoder_hidden_states=image_embeds).last_hidden_state[:, 0]
        want = (reference.mlp(first).squeeze(-1) - REWARD_MEAN) / REWARD_STD
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert len(got) == 2 and all(torch.isfinite(torch.tensor(got)))
    assert scorer.score(images(2), PROMPTS) == got  # deterministic
    assert scorer.score(images(1), PROMPTS[:1]) == pytest.approx(got[:1], abs=1e-5)


def test_missing_reward_weights_name_the_file_to_place_and_where_it_is_published(tmp_path, image_reward) -> None:
    with pytest.raises(ScorerWeightsError, match=rf"scorer 'hpsv2' has no weights configured: "
                                                 rf".*{re.escape(HPS_FILE)}.*huggingface.co/xswu/HPSv2"):
        build_scorer("hpsv2", None)
    with pytest.raises(ScorerWeightsError, match=rf"{re.escape(HPS_FILE)} is missing.*huggingface.co/xswu/HPSv2"):
        build_scorer("hpsv2", str(tmp_path))
    with pytest.raises(ScorerWeightsError, match=r"scorer 'imagereward' has no weights configured: "
                                                 r".*ImageReward.pt.*huggingface.co/THUDM/ImageReward"):
        build_scorer("imagereward", None)
    with pytest.raises(ScorerWeightsError, match=rf"{IR_FILE} is missing.*huggingface.co/THUDM/ImageReward"):
        build_scorer("imagereward", str(tmp_path))
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in (IR_FILE, MED_CONFIG):
        (folder / name).write_bytes((image_reward[0] / name).read_bytes())
    with pytest.raises(ScorerWeightsError, match=r"no-tokenizer/tokenizer is missing.*bert-base-uncased"):
        build_scorer("imagereward", str(folder))
    assert {"hpsv2", "imagereward"} <= set(SCORERS)


def test_hps_version_picks_the_weights_file_and_antialias_the_resize(hps, tmp_path) -> None:
    import numpy as np
    import torch.nn.functional as F

    from tpo_ray.config import EvalConfig
    from tpo_ray.eval.scorers.hpsv2 import CHECKPOINTS
    from tpo_ray.eval.scorers.registry import scorer_options, scorer_stamp

    folder, reference = hps
    assert CHECKPOINTS == {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # hpsv2's own names
    with pytest.raises(ScorerWeightsError, match=r"HPS_v2_compressed.pt is missing"):
        build_scorer("hpsv2", str(folder), device="cpu", options={"version": "v2.0"})
    v20 = tmp_path / "v20"
    v20.mkdir()
    for f in folder.iterdir():
        (v20 / ("HPS_v2_compressed.pt" if f.name == HPS_FILE else f.name)).write_bytes(f.read_bytes())
    got = build_scorer("hpsv2", str(v20), device="cpu", options={"version": "v2.0"}).score(images(2), PROMPTS)
    assert got == build_scorer("hpsv2", str(folder), device="cpu").score(images(2), PROMPTS)  # the same weights here

    big = Image.new("RGB", (96, 64), (0, 0, 0))
    big.paste((255, 255, 255), (0, 0, 96, 1))  # a one-pixel line: antialiasing averages it, plain bicubic mostly skips it
    smooth, sharp = hps_pixels([big], 32), hps_pixels([big], 32, antialias=False)
    x = torch.from_numpy(np.asarray(big, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    plain = F.interpolate(x, size=(32, 48), mode="bicubic", align_corners=False, antialias=False)[0, :, :, 8:40]
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    assert torch.allclose(sharp[0], (plain - mean) / std, atol=1e-6) and not torch.allclose(smooth, sharp, atol=1e-3)
    scorer = build_scorer("hpsv2", str(folder), device="cpu", options={"antialias": False})
    assert scorer.score([big], PROMPTS[:1]) != pytest.approx(build_scorer("hpsv2", str(folder), device="cpu").score(
        [big], PROMPTS[:1]), abs=1e-6)

    options = scorer_options("hpsv2", EvalConfig(hps_version="v2.0", hps_antialias=False))
    assert options == {"version": "v2.0", "antialias": False} and scorer_options("clip", EvalConfig()) == {}
    # the other version's file next to this one does not change this one's stamp
    stamp = scorer_stamp("hpsv2", str(v20), options)
    (v20 / HPS_FILE).write_bytes(b"another file")
    assert scorer_stamp("hpsv2", str(v20), options) == stamp != scorer_stamp("hpsv2", str(v20), {"version": "v2.1"})


def test_reward_checkpoints_with_missing_keys_are_refused_naming_the_file(hps, image_reward, tmp_path) -> None:
    from tpo_ray.eval.scorers.registry import ScorerLoadError

    folder = tmp_path / "hps"
    shutil.copytree(hps[0], folder)
    published = torch.load(folder / HPS_FILE, weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in published.items() if k != "visual.proj"}}, folder / HPS_FILE)
    with pytest.raises(ScorerLoadError, match=rf"scorer 'hpsv2': {re.escape(str(folder / HPS_FILE))} is not the model "
                                              r"it expects.*1 missing \(visual_projection.weight\)"):
        build_scorer("hpsv2", str(folder), device="cpu")
    torch.save({"state_dict": {**published, "visual.extra": torch.zeros(1)}}, folder / HPS_FILE)
    with pytest.raises(ScorerLoadError, match=rf"{re.escape(str(folder / HPS_FILE))}: not an open_clip .*visual.extra"):
        build_scorer("hpsv2", str(folder), device="cpu")
    ir = tmp_path / "ir"
    shutil.copytree(image_reward[0], ir)
    state = torch.load(ir / IR_FILE, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "mlp.layers.7.bias"}, ir / IR_FILE)
    with pytest.raises(ScorerLoadError, match=rf"scorer 'imagereward': {re.escape(str(ir / IR_FILE))} is not the model "
                                              r"it expects.*1 missing \(mlp.layers.7.bias\)"):
        build_scorer("imagereward", str(ir), device="cpu")
