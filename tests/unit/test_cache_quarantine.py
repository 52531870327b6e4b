"""The cache stage quarantines rows that make no example, with id and reason, instead of failing the job.

Runs the Ray Data encoder callable directly on one batch (the tiny SD1.5 model, whose byte-level
tokenizer reads 77 characters), so each failure mode is checked without starting Ray.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tpo_ray.cache.encoder import NEGATIVE_PAST_TOKEN_LIMIT, CacheEncoder
from tpo_ray.config import ModelConfig
from tpo_ray.data import schema
from tpo_ray.data.images import ImageError, decode_image
from tpo_ray.data.synthetic import render_scene, sample_scene


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = render_scene(sample_scene(0, 0), 64)
LONG = "ab " * 40  # 80 tokens (one per character, spaces excluded): past the tiny tokenizer's 77


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[CacheEncoder, Path]:
    folder = tmp_path_factory.mktemp("cacheq")
    model = ModelConfig(cache_dir=str(folder / "models")).model_dump(mode="json")
    quarantine = folder / "quarantine"
    return CacheEncoder(model, "triplet", 32, True, 0.0, quarantine_dir=str(quarantine),
                        max_image_pixels=512 * 512), quarantine


def test_bad_rows_are_quarantined_with_id_and_reason_and_good_rows_are_encoded(encoder) -> None:
    enc, quarantine = encoder
    rows = [
        {"id": "good", "image": GOOD, "caption": "a red dog", "negative": "a blue dog", "edits": None},
        {"id": "corrupt", "image": b"\x89PNG\r\n\x1a\n garbage", "caption": "a red dog", "negative": "a blue dog"},
        {"id": "empty", "image": b"", "caption": "a red dog", "negative": "a blue dog"},
        {"id": "truncated", "image": png()[:60], "caption": "a red dog", "negative": "a blue dog"},
        {"id": "svg", "image": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>',
         "caption": "a red dog", "negative": "a blue dog"},
        {"id": "bomb", "image": png((1024, 1024)), "caption": "a red dog", "negative": "a blue dog"},
        {"id": "no_image", "image": None, "caption": "a red dog", "negative": "a blue dog"},
        {"id": "past_cut", "image": GOOD, "caption": LONG + "red dog", "negative": LONG + "blue dog"},
        {"id": "no_negative", "image": GOOD, "caption": "a red dog", "negative": None},
        {"id": "edit_in_reach", "image": GOOD, "caption": "red " + LONG, "negative": "blue " + LONG},
    ]
    out = enc(pa.Table.from_pylist(rows))
    assert sorted(out.column(schema.ID).to_pylist()) == ["edit_in_reach", "good"]
    [file] = list(quarantine.glob("*.parquet"))
    got = {r["id"]: r for r in pq.read_table(file).to_pylist()}
    assert {k: v["reason"] for k, v in got.items()} == {
        "corrupt": "not_an_image", "empty": "empty_image", "truncated": "corrupt_image", "svg": "not_an_image",
        "bomb": "image_too_large", "no_image": "missing_image", "past_cut": NEGATIVE_PAST_TOKEN_LIMIT,
        "no_negative": "missing_caption"}
    assert all(r["stage"] == "cache" for r in got.values())
    raw = json.loads(got["bomb"]["raw"])
    assert raw["row"]["caption"] == "a red dog" and "1024x1024" in raw["error"] and "image" not in raw["row"]
    enc(pa.Table.from_pylist(rows))  # a retried batch rewrites the same file instead of adding rows
    assert len(list(quarantine.glob("*.parquet"))) == 1


def test_decode_image_reasons_without_decoding_a_bomb() -> None:
    assert decode_image(GOOD).size == (64, 64)
    assert decode_image({"bytes": GOOD, "path": None}).mode == "RGB"  # HF Image feature rows
    with pytest.raises(ImageError, match="image_too_large: 1024x1024 pixels exceeds the limit of 1000"):
        decode_image(png((1024, 1024)), max_pixels=1000)
