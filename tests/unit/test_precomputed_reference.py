"""Precomputed reference errors: the step and the held-out eval give the same loss, gradients and
accuracies as with the online frozen copy; stale or short stores are refused; the noise map and the
epoch plan are what the trainer reads."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tpo_ray.cache.encoder import example_key
from tpo_ray.cache.reference import (ReferenceErrors, ReferenceStoreError, epoch_file, epochs_needed,
                                     eval_noise_seeds, store_dir, train_noise_seeds, val_file, write_errors,
                                     write_manifest)
from tpo_ray.cache.reference_job import example_errors, held_out_errors
from tpo_ray.cache.store import CacheReader, ReadLanes
from tpo_ray.config import LOSS_CONFIGS, config_from_dict
from tpo_ray.eval.implicit import implicit_preference, model_errors, preference_errors
from tpo_ray.models.denoise import denoising_errors
from tpo_ray.models.reference import FrozenCopyReference, NoReference, build_reference
from tpo_ray.train.step import TrainingStep, triplet_batch
from tests.unit.test_step import encode, load

KEY = {"format": 1, "cache": "c0", "kind": "triplet", "reference": "u0", "reference_source": "/x", "seed": 0,
       "scheduler": "s0", "prediction_type": None, "share_noise": True, "precision": "no", "autocast": False,
       "eval_timesteps": [300, 700], "eval_noise_draws": 2}


def _store(tmp_path, ids_by_epoch: dict[int, tuple[list[str], np.ndarray]], val=None, key=KEY) -> str:
    directory = store_dir(str(tmp_path), key)
    rows = len(next(iter(ids_by_epoch.values()))[0])
    for epoch, (ids, errors) in ids_by_epoch.items():
        write_errors(epoch_file(directory, epoch), ids, errors)
    val_ids, val_errors = val or ([], np.zeros((0, 8), np.float32))
    write_errors(val_file(directory, key), val_ids, val_errors)
    write_manifest(directory, key, {"train": rows, "val": len(val_ids)})
    return directory


@pytest.fixture(scope="module")
def triplets(tiny_model_dirs):
    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, _ = encode(comps, n=4)
    # a policy that has moved away from the reference, so m != r and the loss has real gradients
    reference_unet = copy.deepcopy(comps.unet).requires_grad_(False).eval()
    with torch.no_grad():
        for p in comps.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return comps, reference_unet, x0, cond_w, cond_l


def _grads(unet) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["tdpo", "tkto"])
def test_loss_and_gradients_equal_those_of_the_online_frozen_copy(triplets, tmp_path, loss: str) -> None:
    comps, reference_unet, x0, cond_w, cond_l = triplets
    ids, epochs = ["a", "b", "c", "d"], [0, 1, 1, 0]  # rows of two epochs in one batch
    loss_cfg = LOSS_CONFIGS[loss](beta=500.0)
    online_ref = FrozenCopyReference(reference_unet)
    online = TrainingStep(comps.unet, online_ref, comps.noise_scheduler, loss_cfg)

    def batch():
        b = triplet_batch(x0, cond_w, cond_l)
        b.ids, b.sample_seeds = ids, train_noise_seeds(7, ids, epochs)
        return b

    # what `ReferenceErrorsActor` stores: the reference's errors at each example's noise, per epoch
    noiser = TrainingStep(reference_unet, NoReference(), comps.noise_scheduler, loss_cfg)
    stored = {}
    for epoch in (0, 1):
        b = batch()
        b.sample_seeds = train_noise_seeds(7, ids, [epoch] * 4)
        x_t, t, target = noiser.noised(b)
        with torch.no_grad():
            stored[epoch] = (ids, example_errors(denoising_errors(reference_unet, x_t, t, b.cond, target), True).numpy())
    store = ReferenceErrors(_store(tmp_path, stored), KEY, epochs=2)

    comps.unet.zero_grad()
    expected = online(batch())
    expected.loss.backward()
    expected_grads = _grads(comps.unet)

    comps.unet.zero_grad()
    pre = batch()
    pre.ref_errors = store.train(ids, epochs)
    precomputed = TrainingStep(comps.unet, build_reference("precomputed", comps.unet), comps.noise_scheduler, loss_cfg)
    got = precomputed(pre)
    got.loss.backward()
    assert float(got.loss.detach()) == pytest.approx(float(expected.loss.detach()), rel=1e-5, abs=1e-7)
    assert abs(float(expected.loss.detach()) - float(torch.log(torch.tensor(2.0)))) > 1e-4  # not the trivial start
    grads = _grads(comps.unet)
    assert grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-9)
    # the stored errors are the per-example ones: another epoch's noise gives other values
    assert not torch.allclose(store.train(ids, [1, 0, 0, 1]), pre.ref_errors)


def test_precomputed_holder_refuses_a_batch_without_stored_errors(triplets) -> None:
    comps, _, x0, cond_w, cond_l = triplets
    step = TrainingStep(comps.unet, build_reference("precomputed", comps.unet), comps.noise_scheduler,
                        LOSS_CONFIGS["tdpo"]())
    with pytest.raises(RuntimeError, match="carries no reference errors"):
        step(triplet_batch(x0, cond_w, cond_l), torch.Generator().manual_seed(0))


def test_held_out_implicit_preference_with_stored_reference_errors_is_the_same(triplets, tmp_path) -> None:
    comps, reference_unet, x0, cond_w, cond_l = triplets
    ids = ["a", "b", "c", "d"]
    b = triplet_batch(x0, cond_w, cond_l)
    b.ids, b.sample_seeds = ids, eval_noise_seeds(3, ids)
    timesteps, draws = [300, 700], 2
    online = implicit_preference(model_errors(comps.unet), model_errors(reference_unet), comps.noise_scheduler, [b],
                                 timesteps, draws, seed=3)
    r_w, r_l = preference_errors(model_errors(reference_unet), comps.noise_scheduler, b, timesteps, draws, 3)
    val = (ids, held_out_errors(r_w, r_l, len(ids)).numpy())
    store = ReferenceErrors(_store(tmp_path, {0: (ids, np.zeros((4, 2), np.float32))}, val=val), KEY, epochs=1)
    # the store is read by id: a batch in another order gets its own rows' errors
    order = [2, 0, 3, 1]
    shuffled = triplet_batch(x0[order], cond_w.map(lambda x: x[order]), cond_l.map(lambda x: x[order]))
    shuffled.ids = [ids[i] for i in order]
    shuffled.sample_seeds = eval_noise_seeds(3, shuffled.ids)
    stored = implicit_preference(model_errors(comps.unet), lambda batch: store.val(batch.ids), comps.noise_scheduler,
                                 [shuffled], timesteps, draws, seed=3, stored_reference=True)
    assert stored == pytest.approx(online, abs=1e-6)
    assert online["pref/pairs"] == 16


def test_per_example_eval_noise_does_not_depend_on_the_batch(triplets) -> None:
    comps, _, x0, cond_w, cond_l = triplets
    ids = ["a", "b", "c", "d"]
    whole = triplet_batch(x0, cond_w, cond_l)
    whole.sample_seeds = eval_noise_seeds(0, ids)
    half = triplet_batch(x0[2:], cond_w.map(lambda x: x[2:]), cond_l.map(lambda x: x[2:]))
    half.sample_seeds = eval_noise_seeds(0, ids[2:])
    m_w, _ = preference_errors(model_errors(comps.unet), comps.noise_scheduler, whole, [500], 1, 0)
    h_w, _ = preference_errors(model_errors(comps.unet), comps.noise_scheduler, half, [500], 1, 0)
    torch.testing.assert_close(h_w, m_w[2:], rtol=1e-5, atol=1e-7)


def test_a_store_for_other_settings_or_too_few_epochs_is_refused(tmp_path) -> None:
    ids = ["a", "b"]
    directory = _store(tmp_path, {0: (ids, np.ones((2, 2), np.float32))})
    with pytest.raises(ReferenceStoreError, match=r"computed for other settings: reference 'u0' \(now 'u1'\), "
                                                  r"seed 0 \(now 1\)"):
        ReferenceErrors(directory, {**KEY, "reference": "u1", "seed": 1}, epochs=1)
    with pytest.raises(ReferenceStoreError, match=r"lacks epochs \[1, 2\] of the 3"):
        ReferenceErrors(directory, KEY, epochs=3)
    store = ReferenceErrors(directory, KEY, epochs=1)
    with pytest.raises(ReferenceStoreError, match="'zz' has no stored reference error"):
        store.train(["zz"], [0])
    # the same key always lands in the same folder; the source path of the start U-Net does not count
    assert store_dir("/c", KEY) == store_dir("/c", {**KEY, "reference_source": "/elsewhere"})
    assert store_dir("/c", KEY) != store_dir("/c", {**KEY, "seed": 1})
    # another eval keeps the training epochs (same folder) but needs its own held-out file
    other_eval = {**KEY, "eval_timesteps": [500]}
    assert store_dir("/c", other_eval) == store_dir("/c", KEY) and val_file("/c", other_eval) != val_file("/c", KEY)
    with pytest.raises(ReferenceStoreError, match="no held-out errors for this run's eval.timesteps"):
        ReferenceErrors(directory, other_eval, epochs=1)


def test_an_input_row_given_twice_shares_its_errors_but_a_damaged_store_is_refused(tmp_path) -> None:
    same = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]], np.float32)
    store = ReferenceErrors(_store(tmp_path / "a", {0: (["k", "k", "j"], same)}), KEY, epochs=1)
    assert store.train(["k", "j"], [0, 0]).tolist() == [1.0, 3.0, 2.0, 4.0]
    damaged = np.array([[1.0, 2.0], [9.0, 2.0], [3.0, 4.0]], np.float32)
    with pytest.raises(ReferenceStoreError, match="one example key holds different errors"):
        ReferenceErrors(_store(tmp_path / "b", {0: (["k", "k", "j"], damaged)}), KEY, epochs=1).train(["k"], [0])


def test_example_keys_tell_two_negatives_of_one_caption_apart() -> None:
    row = {"id": "7", "caption": "a red car", "negative": "a blue car", "image": b"\x89PNG"}
    other = {**row, "negative": "a red bus"}
    assert example_key(row) == example_key(dict(row)) and example_key(row).startswith("7:")
    assert example_key(row) != example_key(other)


def test_a_store_with_another_row_count_is_refused(tmp_path) -> None:
    directory = _store(tmp_path, {0: (["a", "b"], np.ones((2, 2), np.float32))})
    write_manifest(directory, KEY, {"train": 3, "val": 0})
    with pytest.raises(ReferenceStoreError, match="holds 2 rows, the cache 3"):
        ReferenceErrors(directory, KEY, epochs=1).train(["a"], [0])


def test_train_layout_is_winners_then_losers(tmp_path) -> None:
    errors = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], np.float32)
    store = ReferenceErrors(_store(tmp_path, {0: (["a", "b", "c"], errors)}), KEY, epochs=1)
    assert store.train(["c", "a"], [0, 0]).tolist() == [3.0, 1.0, 30.0, 10.0]


@pytest.mark.parametrize("max_steps,global_batch,lanes,rows,expected", [
    (10, 4, 1, 40, 1),   # 40 positions, 40 rows: exactly one epoch
    (10, 4, 1, 39, 2),   # one position spills into a second epoch
    (5, 4, 2, 10, 2),    # lanes of 5 rows, 10 reads each
    (5, 4, 2, 11, 2),    # lanes of 5 and 6 rows: the shorter wraps first
    (1, 1, 1, 5, 1),
])
def test_epochs_needed(max_steps, global_batch, lanes, rows, expected) -> None:
    assert epochs_needed(max_steps, global_batch, lanes, rows) == expected


def test_epochs_needed_matches_the_reader(tmp_path) -> None:
    """The plan covers every epoch `CacheReader` hands out over a run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "split=train"
    folder.mkdir()
    pq.write_table(pa.table({"id": [str(i) for i in range(11)]}), folder / "a.parquet", row_group_size=3)
    for lanes, global_batch, steps in [(1, 4, 7), (2, 4, 9), (2, 2, 30)]:
        reader = CacheReader(str(tmp_path), "train", seed=0, lanes=ReadLanes(global_batch, lanes))
        seen = max(reader.epochs(0, steps * global_batch))
        assert seen + 1 == epochs_needed(steps, global_batch, lanes, 11)
        # a row never repeats within one lane's epoch
        rows = reader.rows(0, steps * global_batch)
        eps = reader.epochs(0, steps * global_batch)
        pairs = [(r["id"], e) for r, e in zip(rows, eps)]
        assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize("overrides,field", [
    ({"train": {"loss": {"name": "rpo"}}}, "rpo"),
    ({"train": {"loss": {"name": "tkto", "kl_mode": "rolled"}, "batch_size": 2}}, "kl_mode='rolled'"),
    ({"train": {"data_loader": "ray_data"}}, "train.data_loader='positional'"),
])
def test_configs_the_store_cannot_serve_fail_naming_the_field(overrides, field) -> None:
    from tpo_ray.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=field):
        config_from_dict({"model": {"reference": "precomputed"}, **overrides}, "test")
    assert config_from_dict({"model": {"reference": "precomputed"}}, "test").resolved_reference() == "precomputed"


def test_bf16_stored_errors_are_the_policys_own_at_step_zero(tiny_model_dirs) -> None:
    """Under bf16 a kernel's rounding depends on the batch shape: the job computes in the trainer's
    micro-batch (its last one padded), so at step 0 the stored r is the policy's m exactly (m - r = 0)."""
    import pyarrow as pa

    from tpo_ray.cache.reference_job import ReferenceErrorsActor
    from tpo_ray.cache.tensors import pack
    from tpo_ray.data import schema
    from tpo_ray.train.batches import collate

    comps = load(tiny_model_dirs, "sd15")
    x0, cond_w, cond_l, _ = encode(comps, n=5)
    rows = [{schema.EXAMPLE: f"e{i}", "x0": pack(x0[i]), "cond_w": pack(cond_w.prompt_embeds[i]),
             "cond_l": pack(cond_l.prompt_embeds[i])} for i in range(5)]
    shapes = {"x0": list(x0.shape[1:]), "cond": list(cond_w.prompt_embeds.shape[1:]), "pooled": None}
    cfg = config_from_dict({"model": {"pretrained": str(tiny_model_dirs["sd15"]), "reference": "precomputed"},
                            "cache": {"batch_size": 4},
                            "train": {"backend": "deepspeed", "mixed_precision": "bf16", "batch_size": 2,
                                      "loss": {"name": "tdpo"}}}, "test")
    actor = ReferenceErrorsActor(cfg.model_dump(mode="json"), "triplet", shapes, epochs=[0])
    stored = actor(pa.Table.from_pylist(rows))  # one Ray Data batch of 4 rows would hold two micro-batches
    assert stored.column(schema.EXAMPLE).to_pylist() == [f"e{i}" for i in range(5)]
    r = torch.tensor(stored.column("r").to_pylist())

    # the policy at step 0: the same bf16 weights, the trainer's micro-batches of 2 (the last one full)
    policy = TrainingStep(actor.unet, NoReference(), actor.scheduler, cfg.train.loss)
    m = []
    for ids in (["e0", "e1"], ["e2", "e3"], ["e4", "e0"]):
        batch = collate([rows[int(i[1])] for i in ids], "triplet", shapes)
        batch.sample_seeds = train_noise_seeds(cfg.train.seed, batch.ids, [0] * 2)
        with torch.no_grad():
            x_t, t, target = policy.noised(batch)
            m.append(example_errors(denoising_errors(actor.unet, x_t, t, batch.cond, target).float(), True))
    m = torch.cat(m)[:5]
    assert torch.equal(m, r), (m - r).abs().max()


def test_the_store_key_names_the_micro_batch_device_torch_and_noise_code(tiny_model_dirs, monkeypatch) -> None:
    """Stored errors are exact only for the batch shape, device, torch build and noise code they were
    computed with: each of these names another store."""
    from tpo_ray.cache import reference

    def key(**train):
        cfg = config_from_dict({"model": {"pretrained": str(tiny_model_dirs["sd15"]), "reference": "precomputed"},
                                "train": {"loss": {"name": "tdpo"}, **train}}, "test")
        return reference.reference_key(cfg, {"fingerprint": "c0", "kind": "triplet"})

    base = key()
    assert base["micro_batch"] == 4 and base["device"] == "cpu" and base["torch"] == torch.__version__
    assert len(base["noise_code"]) == 16
    assert store_dir("/c", key(batch_size=2)) != store_dir("/c", base)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert store_dir("/c", key()) != store_dir("/c", base)
    monkeypatch.setattr(reference, "noise_code", lambda: "0" * 16)
    assert key()["noise_code"] != base["noise_code"]
    with pytest.raises(Exception, match=r"cache.use_gpu=False.*train.scaling.use_gpu=True"):
        config_from_dict({"model": {"pretrained": "x", "reference": "precomputed"},
                          "train": {"loss": {"name": "tdpo"}, "scaling": {"use_gpu": True}}}, "test")
