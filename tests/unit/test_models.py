"""Model loading through the real loader, tiny factories, conditioning and reference holders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from tpo_ray.config import ModelConfig
from tpo_ray.models.conditioning import Conditioning
from tpo_ray.models.denoise import denoising_errors, training_target
from tpo_ray.models.encoding import attach_time_ids, encode_captions, encode_images
from tpo_ray.models.loading import ModelLoadError, load_components, model_fingerprint, resolve_model_dir
from tpo_ray.models.reference import (
    FrozenCopyReference,
    LoraOffReference,
    NoReference,
    adapters_disabled,
    add_lora,
    build_reference,
)
from tpo_ray.models.tokenizer import build_byte_tokenizer
from tpo_ray.data.synthetic import synthetic_table


def cfg_for(path: Path | str, **kw) -> ModelConfig:
    return ModelConfig(pretrained=str(path), **kw)


@pytest.fixture(scope="module")
def sd15(tiny_model_dirs):
    return load_components(cfg_for(tiny_model_dirs["sd15"]))


@pytest.fixture(scope="module")
def sdxl(tiny_model_dirs):
    return load_components(cfg_for(tiny_model_dirs["sdxl"]))


def test_byte_tokenizer_round_trips_and_fits_77(tmp_path: Path) -> None:
    tok = build_byte_tokenizer()
    ids = tok("two red circles").input_ids
    assert len(ids) == len("tworedcircles") + 2 and max(ids) < 514  # one token per non-space byte
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "tworedcircles"
    tok.save_pretrained(tmp_path)
    assert type(tok).from_pretrained(tmp_path)("two red circles").input_ids == ids


def test_family_detection_and_components(sd15, sdxl) -> None:
    assert sd15.family == "sd15" and len(sd15.text_encoders) == 1 and len(sd15.tokenizers) == 1
    assert sdxl.family == "sdxl" and len(sdxl.text_encoders) == 2
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sd15.prediction_type == "epsilon"
    for comps in (sd15, sdxl):
        assert not any(p.requires_grad for enc in comps.text_encoders for p in enc.parameters())
        assert not any(p.requires_grad for p in comps.vae.parameters())
        assert all(p.requires_grad for p in comps.unet.parameters())


def test_prediction_type_override(tiny_model_dirs) -> None:
    comps = load_components(cfg_for(tiny_model_dirs["sd15"], prediction_type="v_prediction"))
    assert comps.prediction_type == "v_prediction"
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.allclose(training_target(comps.noise_scheduler, x0, eps, t),
                          comps.noise_scheduler.get_velocity(x0, eps, t))


def test_conditioning_shapes(sd15, sdxl) -> None:
    rows = synthetic_table(3, 64).to_pylist()
    caps = [r["caption"] for r in rows]
    for comps, dim in ((sd15, 32), (sdxl, 64)):
        x0, time_ids = encode_images(comps, [r["image"] for r in rows], 64)
        cond = attach_time_ids(encode_captions(comps, caps), time_ids)
        assert x0.shape == (3, 4, 8, 8)
        assert cond.prompt_embeds.shape == (3, 77, dim)
        if comps.family == "sdxl":
            assert cond.pooled.shape == (3, 32) and cond.time_ids.shape == (3, 6)
            assert cond.time_ids[0].tolist() == [64, 64, 0, 0, 64, 64]
        else:
            assert cond.pooled is None and cond.time_ids is None
        pred = comps.unet(x0, torch.tensor([1, 2, 3]), **cond.unet_kwargs()).sample
        assert pred.shape == x0.shape
    assert len(Conditioning.cat([cond, cond.rows(1, 3)])) == 5


def test_tiny_prefix_materialises_once(tmp_path: Path) -> None:
    cfg = ModelConfig(pretrained="tiny:sdxl", cache_dir=str(tmp_path))
    first = resolve_model_dir(cfg)
    stamp = (first / "unet" / "config.json").stat().st_mtime_ns
    assert resolve_model_dir(cfg) == first == tmp_path / "tiny-sdxl"
    assert (first / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((first / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("tiny:sd3", "tiny families are"), ("/no/such/folder", "no such folder"), ("a/b/c", "not a hub id")],
)
def test_unresolvable_sources_fail_clearly(tmp_path: Path, source: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        resolve_model_dir(ModelConfig(pretrained=source, cache_dir=str(tmp_path)))


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="without model_index.json"):
        resolve_model_dir(cfg_for(tmp_path))


def test_hub_id_offline_and_not_cached_fails_with_advice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="pass a local folder or s3:// URI"):
        resolve_model_dir(cfg_for("nobody/not-a-model"))


def test_fingerprint_changes_with_encoder_config(tiny_model_dirs, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dirs["sd15"], copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dirs["sd15"])
    cfg = json.loads((copy / "vae" / "config.json").read_text())
    cfg["scaling_factor"] = 0.13
    (copy / "vae" / "config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dirs["sd15"])


@pytest.mark.parametrize(("family", "cls"), [("sd15", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)])
def test_saved_tiny_pipelines_load_with_diffusers_and_sample(tiny_model_dirs, family, cls) -> None:
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    pipe = cls.from_pretrained(tiny_model_dirs[family], **kwargs)
    images = pipe("two red circles", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)


def _errors(unet, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_t, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    return x_t, target, denoising_errors(unet, x_t, torch.tensor([5, 500]), cond, target)


def _cond(comps) -> Conditioning:
    return encode_captions(comps, ["two red circles", "a blue square"])


def test_frozen_copy_matches_at_init_and_stays_fixed(tiny_model_dirs) -> None:
    comps = load_components(cfg_for(tiny_model_dirs["sd15"]))
    cond = _cond(comps)
    ref = build_reference("frozen_copy", comps.unet)
    assert isinstance(ref, FrozenCopyReference)
    x_t, target, m = _errors(comps.unet, cond)
    r0 = ref.errors(x_t, torch.tensor([5, 500]), cond, target)
    assert torch.equal(m, r0)
    opt = torch.optim.SGD(comps.unet.parameters(), lr=1e-2)
    m.sum().backward()
    opt.step()
    _, _, m_after = _errors(comps.unet, cond)
    assert not torch.equal(m_after.detach(), m.detach())
    assert torch.equal(ref.errors(x_t, torch.tensor([5, 500]), cond, target), r0)


def test_lora_off_reference_is_the_base_model(tiny_model_dirs) -> None:
    comps = load_components(cfg_for(tiny_model_dirs["sd15"]))
    cond = _cond(comps)
    _, _, base = _errors(comps.unet, cond)
    add_lora(comps.unet, rank=4, alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    trainable = [p for p in comps.unet.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in comps.unet.named_parameters() if p.requires_grad)
    ref = build_reference("lora_off", comps.unet)
    assert isinstance(ref, LoraOffReference)
    x_t, target, m = _errors(comps.unet, cond)
    assert torch.allclose(m, base)  # LoRA B starts at zero
    opt = torch.optim.SGD(trainable, lr=1.0)
    m.sum().backward()
    opt.step()
    _, _, m_after = _errors(comps.unet, cond)
    assert not torch.allclose(m_after, base)
    assert torch.allclose(ref.errors(x_t, torch.tensor([5, 500]), cond, target), base)
    with pytest.raises(RuntimeError, match="boom"):
        with adapters_disabled(comps.unet):
            raise RuntimeError("boom")
    _, _, m_again = _errors(comps.unet, cond)
    assert torch.allclose(m_again, m_after)  # adapters came back after the exception


def test_lora_off_needs_adapters_and_none_refuses(sd15) -> None:
    with pytest.raises(ValueError, match="lora.enabled"):
        LoraOffReference(sd15.unet)
    with pytest.raises(RuntimeError, match="without a reference"):
        NoReference().errors(None, None, None, None)
    with pytest.raises(ValueError, match="unknown reference"):
        build_reference("ema", sd15.unet)


def test_center_crop_false_crops_at_a_seeded_random_offset(tiny_model_dirs) -> None:
    """data.center_crop=false must change the crop (it is part of the cache key), reproducibly per seed."""
    import io

    import numpy as np
    from PIL import Image

    from tpo_ray.config import ModelConfig
    from tpo_ray.models.encoding import encode_images
    from tpo_ray.models.loading import load_components

    comps = load_components(ModelConfig(pretrained=str(tiny_model_dirs["sdxl"])), parts=("vae",))
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, :, 0] = np.arange(96, dtype=np.uint8)[None, :] * 2  # a horizontal ramp: every crop differs
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    image = buf.getvalue()
    _, centre = encode_images(comps, [image], 32, center_crop=True)
    assert centre[0].tolist() == [32, 96, 0, 32, 32, 32]  # SDXL time ids: original (h, w), crop (top, left), target
    lefts = {int(encode_images(comps, [image], 32, center_crop=False, crop_seeds=[s])[1][0, 3]) for s in range(12)}
    assert len(lefts) > 3 and all(0 <= left <= 64 for left in lefts)
    again = {int(encode_images(comps, [image], 32, center_crop=False, crop_seeds=[s])[1][0, 3]) for s in range(12)}
    assert again == lefts
    with pytest.raises(ValueError, match="one crop seed per image"):
        encode_images(comps, [image], 32, center_crop=False)


def test_caption_embeddings_average_only_the_captions_own_tokens(tiny_model_dirs) -> None:
    from tpo_ray.config import ModelConfig
    from tpo_ray.models.encoding import caption_embeddings, encode_captions
    from tpo_ray.models.loading import load_components

    comps = load_components(ModelConfig(pretrained=str(tiny_model_dirs["sd15"])), parts=("text",))
    captions = ["a red circle", "two blue squares on the left of a tree"]
    states = encode_captions(comps, captions).prompt_embeds
    emb = caption_embeddings(comps, captions, states)
    for i, caption in enumerate(captions):
        n = len(comps.tokenizers[0](caption).input_ids)  # start + tokens + end
        torch.testing.assert_close(emb[i], states[i, :n].mean(dim=0))
        assert not torch.allclose(emb[i], states[i].mean(dim=0))  # the old mean over 77 padded positions


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_one_text_encoder_pass_gives_the_conditioning_and_the_pooled_caption_embedding(family, tiny_model_dirs) -> None:
    from tpo_ray.cache.encoder import caption_similarity
    from tpo_ray.models.conditioning import tokenize
    from tpo_ray.models.encoding import encode_captions_pooled

    comps = load_components(cfg_for(tiny_model_dirs[family]))
    captions = ["a red dog on a mat", "a blue cat on a mat", "two birds"]
    cond, pooled = encode_captions_pooled(comps, captions)
    alone = encode_captions(comps, captions)
    assert torch.equal(cond.prompt_embeds, alone.prompt_embeds)
    with torch.no_grad():  # what each pipeline's own text encoder pools, read straight from transformers
        if family == "sd15":
            expected = comps.text_encoders[0](tokenize(comps.tokenizers[0], captions)).pooler_output
        else:
            expected = comps.text_encoders[1](tokenize(comps.tokenizers[1], captions)).text_embeds
            assert torch.equal(pooled, alone.pooled)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    win, lose = pooled[:2].double(), pooled[1:].double()
    by_hand = (win * lose).sum(-1) / (win.norm(dim=-1) * lose.norm(dim=-1))
    torch.testing.assert_close(caption_similarity(pooled[:2], pooled[1:]).double(), by_hand, rtol=1e-6, atol=1e-6)
