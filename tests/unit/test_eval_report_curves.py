"""Training curves read from MLflow page by page: no run beyond the first page is dropped silently."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow.tracking

from tpo_ray.config import config_from_dict
from tpo_ray.eval import report_curves


class Page(list):
    token: str | None = None


class PagedClient:
    """search_runs as MLflow pages it: `max_results` runs and a token while more remain."""

    def __init__(self, runs: int) -> None:
        self.runs = [SimpleNamespace(info=SimpleNamespace(run_id=str(i)),
                                     data=SimpleNamespace(tags={"tpo_ray.run_name": f"run-{i}", "tpo_ray.stage": "sft"},
                                                          params={}))
                     for i in range(runs)]
        self.histories = 0

    def __call__(self, uri: str) -> PagedClient:
        return self

    def get_experiment_by_name(self, name: str):
        return SimpleNamespace(experiment_id="1")

    def search_runs(self, ids, max_results: int, page_token: str | None = None) -> Page:
        start = int(page_token or 0)
        page = Page(self.runs[start:start + max_results])
        page.token = str(start + max_results) if start + max_results < len(self.runs) else None
        return page

    def get_metric_history(self, run_id: str, metric: str):
        self.histories += 1
        return [SimpleNamespace(step=1, value=0.5)] if metric == "train/loss" else []


def test_every_run_is_listed_and_those_not_drawn_are_counted(monkeypatch, tmp_path) -> None:
    client = PagedClient(450)
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", client)
    monkeypatch.setattr(report_curves, "PAGE", 100)
    cfg = config_from_dict({"output_dir": str(tmp_path)}, "test")
    curves = report_curves.training_curves(cfg)
    assert curves.runs == 450 and curves.left_out == 450 - report_curves.MAX_RUNS
    assert sum(len(lines) for lines in curves.panels.values()) == report_curves.MAX_RUNS
    assert list(curves.panels) == ["SFT"]
