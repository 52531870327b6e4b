"""Hard-negative mining (`data.hard_negatives`) and the semantic screen's settings, without Ray.

The group-wise filter is checked by hand on small tables (k per caption id, smallest reference margin,
highest text similarity, seeded random, ties, the order rows come in), through the cache reader over
several row groups (one caption's candidates spread across them), with the held-out split untouched;
then the config messages and the cache key's dependence on the threshold and the margins' settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tpo_ray.cache.job as job
from tpo_ray.cache.encoder import screen_near_synonyms
from tpo_ray.cache.store import CacheError, CacheReader, RowFilter, mining_order
from tpo_ray.config import ConfigError, load_config
from tpo_ray.cache.selection import check_hard_negatives, training_rows

# 3 captions x 3 candidate negatives: (id, example, principle, ref_margin, text_similarity)
ROWS = [
    ("a", "a:1", "content", 0.30, 0.91), ("a", "a:2", "attribute", -0.10, 0.95), ("a", "a:3", "spatial", 0.05, 0.99),
    ("b", "b:1", "content", 0.20, 0.97), ("b", "b:2", "content", 0.20, 0.90), ("b", "b:3", "attribute", 0.50, 0.93),
    ("c", "c:1", "spatial", 0.00, 0.80), ("c", "c:2", "contextual", 0.10, 0.80), ("c", "c:3", "content", None, 0.99),
]


def table(rows=ROWS) -> pa.Table:
    ids, examples, principles, margins, sims = zip(*rows)
    return pa.table({"id": list(ids), "example": list(examples), "principle": list(principles),
                     "num_edits": pa.array([1] * len(rows), pa.int32()),
                     "ref_margin": pa.array(margins, pa.float32()), "text_similarity": pa.array(sims, pa.float32())})


def kept(keep: RowFilter, t: pa.Table) -> list[str]:
    return sorted(np.asarray(t.column("example").to_pylist())[keep.mask(t)].tolist())


def test_reference_keeps_the_k_smallest_margins_per_caption_ties_to_the_smaller_key() -> None:
    one = RowFilter(hard_negatives=1, hard_negatives_by="reference")
    # b:1 and b:2 tie at 0.20: the smaller example key wins; c:3 has no margin and ranks last
    assert kept(one, table()) == ["a:2", "b:1", "c:1"]
    two = RowFilter(hard_negatives=2, hard_negatives_by="reference")
    assert kept(two, table()) == ["a:2", "a:3", "b:1", "b:2", "c:1", "c:2"]
    assert kept(RowFilter(hard_negatives=5), table()) == sorted(r[1] for r in ROWS)  # k above n: all


def test_clip_keeps_the_most_similar_negatives() -> None:
    assert kept(RowFilter(hard_negatives=1, hard_negatives_by="clip"), table()) == ["a:3", "b:1", "c:3"]
    # c:1 and c:2 tie at 0.80 behind c:3: the smaller key
    assert kept(RowFilter(hard_negatives=2, hard_negatives_by="clip"), table()) == [
        "a:2", "a:3", "b:1", "b:3", "c:1", "c:3"]


def test_random_is_seeded_by_the_example_key_and_keeps_k_per_caption() -> None:
    keep = RowFilter(hard_negatives=1, hard_negatives_by="random")
    chosen = kept(keep, table())
    assert [c.split(":")[0] for c in chosen] == ["a", "b", "c"]
    expected = [min((r[1] for r in ROWS if r[0] == i), key=lambda e: mining_order("random", None, e)) for i in "abc"]
    assert chosen == expected
    # the choice is not simply the first or the last candidate of every caption
    many = [(f"id{i}", f"id{i}:{j}", "content", 0.0, 0.9) for i in range(30) for j in range(3)]
    picks = {e.split(":")[1] for e in kept(keep, table(many))}
    assert picks == {"0", "1", "2"}


@pytest.mark.parametrize("by", ["reference", "clip", "random"])
def test_the_choice_does_not_depend_on_the_row_order(by: str) -> None:
    keep = RowFilter(hard_negatives=1, hard_negatives_by=by)
    shuffled = [ROWS[i] for i in np.random.default_rng(0).permutation(len(ROWS))]
    assert kept(keep, table(shuffled)) == kept(keep, table())


def test_mining_ranks_only_the_candidates_other_filters_keep() -> None:
    keep = RowFilter(principles=frozenset({"content", "attribute"}), hard_negatives=1, hard_negatives_by="reference")
    # a:2 (attribute, -0.10) is kept; c's only content candidate has no margin but is still its best
    assert kept(keep, table()) == ["a:2", "b:1", "c:3"]


def write_cache(root: Path, rows=ROWS, val_rows=ROWS, group_rows: int = 2, margins: bool = True) -> str:
    for split, data in (("train", rows), ("val", val_rows)):
        folder = root / f"split={split}"
        folder.mkdir(parents=True)
        t = table(data)
        if not margins:
            t = t.drop_columns(["ref_margin"])
        half = t.num_rows // 2  # two files: one caption's candidates span files and row groups
        pq.write_table(t.slice(0, half), folder / "part-0.parquet", row_group_size=group_rows)
        pq.write_table(t.slice(half), folder / "part-1.parquet", row_group_size=group_rows)
    return str(root)


def test_the_reader_mines_across_row_groups_and_files_and_leaves_held_out_pairs_alone(tmp_path: Path) -> None:
    directory = write_cache(tmp_path)
    keep = RowFilter(hard_negatives=1, hard_negatives_by="reference")
    reader = CacheReader(directory, "train", seed=0, keep=keep)
    assert len(reader) == 3
    assert sorted(r["example"] for r in reader.rows(0, 3)) == ["a:2", "b:1", "c:1"]
    # two epochs read each mined row once per epoch
    assert sorted(r["example"] for r in reader.rows(0, 6)) == sorted(["a:2", "b:1", "c:1"] * 2)
    # the held-out split as the trainer's eval and `tpo-ray eval implicit` read it: every candidate
    assert len(CacheReader(directory, "val", seed=0, shuffle=False)) == len(ROWS)


def config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path}", "tracking.enabled=false", *overrides])


def test_training_rows_counts_what_the_reader_reads(tmp_path: Path) -> None:
    directory = write_cache(tmp_path / "cache")
    manifest = {"kind": "triplet", "rows": {"train": len(ROWS), "val": len(ROWS)},
                "options": {"max_text_similarity": None, "reference_margins": {"seed": 0}}}
    cfg = config(tmp_path, "data.hard_negatives=2", "cache.reference_margins=true")
    assert training_rows(cfg, directory, manifest) == 6
    assert training_rows(config(tmp_path, "data.hard_negatives=1", "data.hard_negatives_by=clip",
                                "data.principles=[spatial]"), directory, manifest) == 2  # a:3, c:1
    assert training_rows(config(tmp_path), directory, manifest) == len(ROWS)


def test_config_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hard_negatives"):
        config(tmp_path, "data.hard_negatives=0")
    with pytest.raises(ConfigError, match="hard_negatives_by"):
        config(tmp_path, "data.hard_negatives_by=loss")
    with pytest.raises(ConfigError, match="max_text_similarity"):
        config(tmp_path, "cache.max_text_similarity=1.5")
    manifest = {"kind": "triplet", "rows": {"train": 9}, "options": {"max_text_similarity": None,
                                                                    "reference_margins": None}}
    # by the reference without margins, or streamed: refused when the config is read
    with pytest.raises(ConfigError, match="set cache.reference_margins=true"):
        config(tmp_path, "data.hard_negatives=1")
    with pytest.raises(ConfigError, match="set train.data_loader=positional"):
        config(tmp_path, "data.hard_negatives=1", "data.hard_negatives_by=random", "train.data_loader=ray_data")
    # a cache built without margins is refused when it is read
    cfg = config(tmp_path, "data.hard_negatives=1", "cache.reference_margins=true")
    with pytest.raises(CacheError, match="set cache.reference_margins=true"):
        check_hard_negatives(cfg, manifest)
    with pytest.raises(CacheError, match="cache.reference_margins=true"):
        CacheReader(write_cache(tmp_path / "old", margins=False), "train", seed=0,
                    keep=RowFilter(hard_negatives=1, hard_negatives_by="reference"))
    with pytest.raises(CacheError, match="mines negatives triplets"):
        check_hard_negatives(config(tmp_path, "data.hard_negatives=1", "data.hard_negatives_by=random"),
                             {**manifest, "kind": "image_pair"})
    check_hard_negatives(config(tmp_path, "data.hard_negatives=1", "data.hard_negatives_by=clip"), manifest)


def test_screen_near_synonyms() -> None:
    import torch

    sims = torch.tensor([0.90, 0.99, 0.95, 0.999])
    assert screen_near_synonyms(sims, None) == ([0, 1, 2, 3], [])
    assert screen_near_synonyms(sims, 0.95) == ([0, 2], [1, 3])  # above, not at, the threshold


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Configs whose cache key can be computed without a model: fixed model identity, a scheduler config
    and a start U-Net folder on disk."""
    import tpo_ray.models.loading as loading

    monkeypatch.setattr(job, "model_identity", lambda cfg: {"source": "m", "family": "sd15", "fingerprint": "mf"})
    model = tmp_path / "model"
    (model / "scheduler").mkdir(parents=True)
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 1000}))
    monkeypatch.setattr(loading, "resolve_model_dir", lambda cfg, subfolders=None: model)
    unet = tmp_path / "sft-unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    source = tmp_path / "triplets" / "shard-00000.parquet"
    source.parent.mkdir()
    pq.write_table(pa.table({"id": ["a"], "caption": ["a red dog"], "negative": ["a blue dog"]}), source)

    def make(*overrides: str):
        return config(tmp_path, f"cache.input={source.parent}", f"train.init_from={unet}", *overrides)
    return make, unet


def test_the_cache_key_follows_the_threshold_and_the_margins_settings(keyed) -> None:
    make, unet = keyed
    key = lambda *o: job.expected_cache(make(*o))[0]  # noqa: E731
    base = key()
    assert key() == base
    assert len({base, key("cache.max_text_similarity=0.9"), key("cache.max_text_similarity=0.95")}) == 3
    margins = key("cache.reference_margins=true")
    assert margins != base
    assert key("cache.reference_margins=true", "eval.timesteps=[100,500]") != margins
    assert key("cache.reference_margins=true", "train.seed=1") != margins
    assert key("eval.timesteps=[100,500]") == base  # without margins the timesteps do not matter
    # the start U-Net's content, not its path
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-2")
    assert key("cache.reference_margins=true") != margins
    # an SFT (single) cache computes neither: its key ignores both
    sft = ["train.loss.name=sft", "cache.kind=single"]
    assert key(*sft) == key(*sft, "cache.max_text_similarity=0.9", "cache.reference_margins=true")


def test_the_encoder_stores_similarity_and_margins_and_quarantines_near_synonyms(tmp_path: Path) -> None:
    """The Ray Data encoder callable on one batch of triplets (tiny SD1.5, no Ray): `text_similarity` is the
    cosine of the pooled embeddings, `ref_margin` the start U-Net's m_l - m_w, and a threshold between the
    batch's similarities quarantines the rows above it as near_synonym, naming their similarity."""
    import torch

    from tpo_ray.cache.encoder import CacheEncoder
    from tpo_ray.config import ModelConfig
    from tpo_ray.data.synthetic import render_scene, sample_scene
    from tpo_ray.eval.implicit import model_errors, preference_errors
    from tpo_ray.models.loading import load_start_unet
    from tpo_ray.negatives.shards import stable_seed
    from tpo_ray.train.batches import collate

    model = ModelConfig(cache_dir=str(tmp_path / "models")).model_dump(mode="json")
    image = render_scene(sample_scene(0, 0), 64)
    rows = [{"id": "a", "image": image, "caption": "a red dog on the grass", "negative": n, "principle": "attribute",
             "edits": None} for n in ("a blue dog on the grass", "a red cat on the grass", "two red dogs in a car")]
    margins = {"init_from": None, "timesteps": [300, 700], "seed": 3}
    plain = CacheEncoder(model, "triplet", 32, True, 0.0, quarantine_dir=str(tmp_path / "q0"),
                         reference_margins=margins)(pa.Table.from_pylist(rows))
    sims = plain.column("text_similarity").to_pylist()
    assert plain.schema.field("text_similarity").type == pa.float32() and len(set(sims)) == 3
    assert all(-1 <= s <= 1 for s in sims)
    # ref_margin = the mean over the timesteps of the start U-Net's m_l - m_w at the stored tensors
    shapes = {"x0": [4, 4, 4], "cond": [77, 32], "pooled": None, "emb": [32]}
    unet, scheduler = load_start_unet(ModelConfig.model_validate(model))
    batch = collate(plain.to_pylist(), "triplet", shapes)
    batch.sample_seeds = [stable_seed(3, "margin", k) for k in batch.ids]
    m_w, m_l = preference_errors(model_errors(unet.eval()), scheduler, batch, [300, 700], 1, 3)
    expected = (m_l - m_w).view(2, -1).mean(0)
    assert torch.allclose(torch.tensor(plain.column("ref_margin").to_pylist()), expected, atol=1e-5)
    # a threshold between the lowest and the highest similarity quarantines the rows above it
    threshold = sorted(sims)[0] + (sorted(sims)[1] - sorted(sims)[0]) / 2
    screened = CacheEncoder(model, "triplet", 32, True, 0.0, quarantine_dir=str(tmp_path / "q1"),
                            max_text_similarity=threshold)(pa.Table.from_pylist(rows))
    assert screened.num_rows == 1 and screened.column("text_similarity").to_pylist() == [min(sims)]
    assert "ref_margin" not in screened.column_names
    [file] = list((tmp_path / "q1").glob("*.parquet"))
    quarantined = pq.read_table(file).to_pylist()
    assert [r["reason"] for r in quarantined] == ["near_synonym", "near_synonym"]
    assert all("text_similarity 0." in json.loads(r["raw"])["error"] for r in quarantined)
