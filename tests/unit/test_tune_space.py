"""Search spaces, trial accounting and the sweep's start checks (no Ray)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from tpo_ray.config import ConfigError, TPOConfig, load_config
from tpo_ray.runs import sweep_identity
from tpo_ray.tune.space import Domain, parse_space, trial_config, validate_space
from tpo_ray.tune.sweep import best_trial, summary_table, trial_concurrency, trial_record, trial_settings


def base() -> dict:
    return TPOConfig().model_dump(mode="json")


def test_domains_from_yaml_forms() -> None:
    space = {"train.loss.beta": {"loguniform": [1000, 10000]}, "train.loss.tau": {"choice": [None, 1e-4]},
             "train.lr": [1e-6, 1e-5], "train.seed": {"randint": [0, 3]}}
    domains = {d.key: d for d in parse_space(space, "random")}
    assert domains["train.loss.beta"] == Domain("train.loss.beta", "loguniform", (1000, 10000))
    assert domains["train.lr"].kind == "choice"  # a plain list samples under random search
    assert domains["train.seed"].probes() == [0, 2]  # randint excludes the high end
    grid = parse_space({"train.lr": [1e-6, 1e-5]}, "grid")
    assert grid[0].kind == "grid"
    assert parse_space({"train.lr": {"grid": [1e-6]}}, "optuna")[0].kind == "choice"


@pytest.mark.parametrize(("space", "search", "message"), [
    ({}, "random", "empty"),
    ({"train.lr": {"between": [1, 2]}}, "random", "tune.search_space.train.lr: expected a list"),
    ({"train.lr": {"loguniform": [0, 1]}}, "random", "low end must be > 0"),
    ({"train.lr": {"uniform": [2, 1]}}, "random", "low < high"),
    ({"train.lr": {"uniform": [1, math.inf]}}, "random", "finite"),
    ({"train.seed": {"randint": [0.5, 3]}}, "random", "integers"),
    ({"train.lr": {"loguniform": [1e-6, 1e-5]}}, "grid", "tune.search=grid needs lists"),
    ({"output_dir": ["a", "b"]}, "random", "cannot change output_dir"),
    ({"tune.metric": ["val/model_acc"]}, "random", "cannot change tune.metric"),
])
def test_bad_spaces_name_the_key(space, search, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_space(space, search)


def test_every_value_is_validated_before_the_sweep() -> None:
    trials = validate_space(base(), parse_space({"train.loss.beta": [1000.0, 5000.0],
                                                 "train.loss.tau": [None, 1e-3]}, "grid"))
    assert sorted((t.train.loss.beta, t.train.loss.tau or 0) for t in trials) == [
        (1000.0, 0), (1000.0, 1e-3), (5000.0, 0), (5000.0, 1e-3)]
    with pytest.raises(ConfigError, match=r"tune.search_space train.loss.beta=-1.*beta"):
        validate_space(base(), parse_space({"train.loss.beta": [1000.0, -1]}, "grid"))
    with pytest.raises(ConfigError, match="train.lrr: unknown key"):
        validate_space(base(), parse_space({"train.lrr": [1e-5]}, "grid"))
    # a combination that fails although each value alone is fine: TKTO's rolled KL with one example
    one = {**base(), "train": {**base()["train"], "batch_size": 1}}
    tkto = parse_space({"train.loss.name": ["tkto"], "train.loss.kl_mode": ["batch", "rolled"]}, "grid")
    with pytest.raises(ConfigError, match="combination train.loss.name='tkto', train.loss.kl_mode='rolled'"):
        validate_space(one, tkto)
    assert len(validate_space(base(), tkto)) == 2  # a TDPO base switches to TKTO's settings (no TDPO clip left over)
    # ranges are checked at both ends, also when the space is too large for every combination
    wide = parse_space({f"train.loss.{k}": {"uniform": [1.0, 2.0]} for k in ("beta",)} |
                       {"train.seed": list(range(300))}, "random")
    assert len(validate_space(base(), wide)) == 2 + 300


def test_principle_ablation_is_a_searchable_key() -> None:
    domains = parse_space({"data.principles": {"choice": [None, ["content", "attribute", "contextual"]]},
                           "data.max_edits": [1, 2]}, "random")
    assert len(validate_space(base(), domains)) == 4
    with pytest.raises(ConfigError, match="data.principles"):
        validate_space(base(), parse_space({"data.principles": [["colour"]]}, "random"))


def test_trial_settings_and_identity() -> None:
    cfg = load_config(None, ["output_dir=/tmp/sweep-out", "train.log_every_steps=5"])
    sweep = sweep_identity(cfg)
    assert sweep.name.startswith("tune-") and sweep.sweep_dir == f"/tmp/sweep-out/tune/{sweep.name}"
    assert sweep_identity(load_config(None, ["output_dir=/tmp/sweep-out", "train.log_every_steps=5",
                                             "tune.max_concurrent_trials=3"])).name != sweep.name
    assert sweep_identity(load_config(None, ["output_dir=/tmp/other", "train.log_every_steps=5"])).name == sweep.name
    fixed = trial_settings(cfg, sweep, "abcde_00001")
    assert trial_settings(load_config(None, ["train.log_every_steps=7"]), sweep, "x")["train.eval_every_steps"] == 7
    trial = trial_config(cfg.model_dump(mode="json"), {"train.loss.beta": 2000.0}, "t", fixed=fixed)
    assert trial.train.run_name == "trial-abcde_00001" and trial.train.eval_every_steps == 5
    assert trial.train.storage_path == f"/tmp/sweep-out/tune/{sweep.name}/runs" and trial.train.loss.beta == 2000.0


def test_concurrency_fits_the_cluster_or_fails_naming_the_fields() -> None:
    cfg = load_config(None, ["train.scaling.num_workers=2", "tune.max_concurrent_trials=4"])
    assert trial_concurrency(cfg, {"CPU": 8.0}) == 4
    assert trial_concurrency(cfg, {"CPU": 5.0}) == 2
    with pytest.raises(ValueError, match=r"needs 2 CPUs .*num_workers=2.* has 1 CPU"):
        trial_concurrency(cfg, {"CPU": 1.0})
    gpu = load_config(None, ["train.scaling.num_workers=2", "train.scaling.use_gpu=true"])
    with pytest.raises(ValueError, match="2 GPUs"):
        trial_concurrency(gpu, {"CPU": 64.0, "GPU": 1.0})


def test_on_a_cluster_that_may_autoscale_the_configured_concurrency_stands(caplog) -> None:
    """KubeRay's idle cluster has 0 GPUs: the sweep starts anyway and its pending trials scale it up."""
    gpu = load_config(None, ["train.scaling.num_workers=8", "train.scaling.use_gpu=true",
                             "tune.max_concurrent_trials=2"])
    idle = {"CPU": 0.0, "memory": 8e9}  # the head alone: num-cpus 0, no GPU
    with caplog.at_level("WARNING", logger="tpo_ray.tune.sweep"):
        assert trial_concurrency(gpu, idle, joined_cluster=True) == 2
    assert "0 of tune.max_concurrent_trials=2" in caplog.text and "autoscaler" in caplog.text
    assert trial_concurrency(gpu, {"CPU": 200.0, "GPU": 16.0}, joined_cluster=True) == 2
    with pytest.raises(ValueError, match="8 GPUs"):  # a local instance cannot grow: refused as before
        trial_concurrency(gpu, idle, joined_cluster=False)


def _result(trial_id: str, steps: list[int], values: list[float], error: Exception | None = None, **config):
    frame = pd.DataFrame({"step": steps, "val/implicit_acc": values}) if steps else None
    last = {"step": steps[-1], "trial_id": trial_id} if steps else {}
    return SimpleNamespace(metrics=last, metrics_dataframe=frame, error=error, config=config,
                           path=f"/x/_run_trial_{trial_id}_0_lr=1")


def test_trial_records_best_and_summary() -> None:
    cfg = load_config(None, ["train.max_steps=8"])
    domains = parse_space({"train.lr": [1e-4, 1e30]}, "random")
    finished = trial_record(_result("aaaaa_00000", [2, 4, 6, 8], [0.5, 0.7, 0.6, 0.65], **{"train.lr": 1e-4}), cfg,
                            domains)
    stopped = trial_record(_result("aaaaa_00001", [2], [0.2], **{"train.lr": 3e-4}), cfg, domains)
    error = RuntimeError("Training failed\nNonFiniteLossError: step 2: loss was non-finite for 1 steps in a row")
    diverged = trial_record(_result("aaaaa_00002", [], [], error, **{"train.lr": 1e30}), cfg, domains)
    assert (finished.status, finished.best, finished.best_step) == ("finished", 0.7, 4)
    assert (stopped.status, stopped.reason) == ("stopped early", "asha at step 2")
    assert diverged.status == "diverged" and "non-finite" in diverged.reason and diverged.trial_id == "aaaaa_00002"
    assert best_trial([finished, stopped, diverged], "max") is finished
    assert best_trial([finished, stopped, diverged], "min") is stopped
    csv_text, markdown = summary_table([finished, stopped, diverged], "val/implicit_acc")
    assert csv_text.splitlines()[0] == "trial,status,reason,best val/implicit_acc,best step,last step,train.lr"
    assert "| aaaaa_00002 | diverged |" in markdown and len(markdown.splitlines()) == 5


def test_sweep_config_checks() -> None:
    from tpo_ray.tune.sweep import check_sweep

    def check(*overrides: str) -> None:
        cfg = load_config(None, list(overrides))
        check_sweep(cfg, validate_space(cfg.model_dump(mode="json"), parse_space(cfg.tune.search_space,
                                                                                 cfg.tune.search)))

    check("train.checkpoint_every_steps=10", "train.log_every_steps=5", "train.max_steps=20")
    with pytest.raises(ValueError, match="multiple of train.log_every_steps"):
        check("train.checkpoint_every_steps=7", "train.log_every_steps=5")
    with pytest.raises(ValueError, match="single examples"):
        check("train.loss.name=sft", "train.checkpoint_every_steps=10", "tune.search_space={train.lr: [1e-5, 1e-4]}")
    with pytest.raises(ValueError, match="use tune.metric=val/model_acc"):
        check("train.loss.name=mapo", "cache.input=/tmp/pairs.parquet", "train.checkpoint_every_steps=10",
              "tune.search_space={train.lr: [1e-5, 1e-4]}")
    with pytest.raises(ValueError, match=r"another cache than the base config \(data.resolution\)"):
        check("train.checkpoint_every_steps=10", "tune.search_space={data.resolution: [32, 64]}")
    with pytest.raises(ValueError, match=r"another cache .*\(cache.max_text_similarity / cache.reference_margins\)"):
        check("train.checkpoint_every_steps=10", "tune.search_space={cache.max_text_similarity: [0.9, 0.95]}")
    # per trial, not only the base: a DPO base sweeping into MaPO (no reference) could not report
    # val/implicit_acc, and Tune would then stop the whole sweep
    with pytest.raises(ValueError, match="trial with .*train.loss.name='mapo'.*use tune.metric=val/model_acc"):
        check("train.loss.name=dpo", "cache.input=/tmp/pairs.parquet", "train.checkpoint_every_steps=10",
              "tune.search_space={train.loss.name: [dpo, mapo]}")
    with pytest.raises(ValueError, match="trial with train.log_every_steps=3.*multiple"):
        check("train.checkpoint_every_steps=10", "train.log_every_steps=5",
              "tune.search_space={train.log_every_steps: [5, 3]}")
    with pytest.raises(ValueError, match="cannot change train.max_steps"):
        parse_space({"train.max_steps": [10, 20]}, "grid")
    with pytest.raises(ValueError, match="cannot change train.eval_every_steps"):
        parse_space({"train.eval_every_steps": [10, 20]}, "grid")
    with pytest.raises(ConfigError, match="held-out metric"):
        load_config(None, ["tune.metric=train/loss"])


def test_optuna_takes_every_domain_kind() -> None:
    """search: optuna converts the same YAML domains (None among the choices, log ranges, ints)."""
    from ray.tune.search.optuna import OptunaSearch

    from tpo_ray.tune.space import param_space
    from tpo_ray.tune.sweep import _search_alg

    domains = parse_space({"train.loss.beta": {"loguniform": [1000, 10000]}, "train.loss.tau": [None, 1e-4],
                           "train.seed": {"randint": [0, 4]}, "train.lr": {"uniform": [1e-6, 1e-5]}}, "optuna")
    converted = OptunaSearch.convert_search_space(param_space(domains))
    assert set(converted) == {"train.loss.beta", "train.loss.tau", "train.seed", "train.lr"}
    searcher = _search_alg(load_config(None, ["tune.search=optuna"]), concurrency=2)
    assert isinstance(searcher.searcher, OptunaSearch) and searcher.max_concurrent == 2
    searcher.set_search_properties("val/implicit_acc", "max", param_space(domains))
    drawn = searcher.suggest("t1")
    assert 1000 <= drawn["train.loss.beta"] <= 10000 and drawn["train.loss.tau"] in (None, 1e-4)
    assert trial_config(base(), drawn, "optuna draw").train.loss.beta == drawn["train.loss.beta"]


def test_random_and_grid_search_keep_the_concurrency_limit() -> None:
    """Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator instance: the limit
    must be inside it, or two 2-worker trials start on a 2-CPU cluster and wait on each other."""
    from tpo_ray.tune.sweep import _search_alg

    generator = _search_alg(load_config(None, ["tune.search=random"]), concurrency=1)
    assert generator.max_concurrent == 1


def test_tune_sees_only_reports_with_its_metric_and_the_final_checkpoint_rides_on_the_final_eval(monkeypatch) -> None:
    """The final checkpoint is reported before the final eval, without metrics: Tune would stop the
    whole sweep on a report lacking tune.metric, so it is held and attached to the eval's report."""
    import ray.tune.integration.ray_train as integration

    from tpo_ray.tune.sweep import metric_reports

    queue: list[dict] = []
    session = type("Session", (), {"_get_or_create_inter_actor_queue": lambda self: type(
        "Q", (), {"put": lambda self, item: queue.append(item)})()})()
    monkeypatch.setattr(integration, "_in_tune_session", lambda: True)
    monkeypatch.setattr(integration, "get_session", lambda: session)
    ckpt = lambda step: type("Checkpoint", (), {"path": f"/runs/checkpoint_{step}"})()  # noqa: E731
    callback = metric_reports("val/implicit_acc")
    callback.after_report(None, [{"step": 2, "val/implicit_acc": 0.5}], ckpt(2))
    callback.after_report(None, [{"step": 4, "train/loss": 0.1}], ckpt(4))  # final checkpoint, eval pending
    callback.after_report(None, [{"step": 4, "val/implicit_acc": 0.7}], None)  # the final eval
    assert [(r["step"], r["val/implicit_acc"], r[integration.CHECKPOINT_PATH_KEY]) for r in queue] == [
        (2, 0.5, "/runs/checkpoint_2"), (4, 0.7, "/runs/checkpoint_4")]
