"""tests/helpers/kube.py: `render` is the real kustomize (its errors surface, a missing kustomize fails the
test with what to install), `rayjob_errors` refuses what KubeRay v1.7 refuses, `quantity` reads sizes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.helpers.kube import KustomizeError, quantity, rayjob_errors, render

VALID_JOB = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"}, "spec": {
    "entrypoint": "python jobs/pipeline.py", "submissionMode": "K8sJobMode", "backoffLimit": 2,
    "activeDeadlineSeconds": 3600, "preRunningDeadlineSeconds": 600,
    "deletionStrategy": {"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 60}},
        {"policy": "DeleteCluster", "condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 60}}]},
    "rayClusterSpec": {"enableInTreeAutoscaling": True}}}


def write_kustomization(folder: Path, patch_ops: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cm.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}))
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["cm.yaml"], "namespace": "ns", "namePrefix": "p-",
        "patches": [{"target": {"kind": "ConfigMap"}, "patch": yaml.safe_dump(patch_ops)}]}))
    return folder


def test_render_runs_kustomize_and_returns_what_it_prints(tmp_path: Path) -> None:
    folder = write_kustomization(tmp_path / "ok", [{"op": "replace", "path": "/data/k", "value": "w"}])
    # namePrefix and JSON6902 patches: features of kustomize itself, not of a hand-written subset
    assert render(folder) == [{"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "w"},
                               "metadata": {"name": "p-c", "namespace": "ns"}}]


def test_a_kustomize_error_fails_with_kustomizes_message(tmp_path: Path) -> None:
    folder = write_kustomization(tmp_path / "bad", [{"op": "test", "path": "/data/k", "value": "other"}])
    with pytest.raises(KustomizeError, match="test failed"):
        render(folder)


def test_without_kustomize_rendering_fails_naming_what_to_install(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_kustomization(tmp_path / "k", [])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KustomizeError, match=r"neither kubectl nor kustomize: install kubectl >= 1\.27"):
        render(folder)


@pytest.mark.parametrize(("change", "message"), [
    ({"suspend": True}, "suspend needs shutdownAfterJobFinishes"),
    ({"shutdownAfterJobFinishes": True}, "mutually exclusive"),
    ({"ttlSecondsAfterFinished": 3600}, "ttlSecondsAfterFinished needs shutdownAfterJobFinishes"),
    ({"deletionStrategy": {"onSuccess": {"policy": "DeleteCluster"}}}, "needs both onSuccess and onFailure"),
    ({"deletionStrategy": {"onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteCluster"},
                           "deletionRules": [{"policy": "DeleteSelf", "condition": {"jobStatus": "FAILED"}}]}},
     "cannot be used together"),
    ({"deletionStrategy": {"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}}]}},
     "exactly one of jobStatus and jobDeploymentStatus"),
    ({"deletionStrategy": {"deletionRules": [{"policy": "DeleteWorkers", "condition": {"jobStatus": "FAILED"}}]}},
     "DeleteWorkers is refused with autoscaling"),
    ({"deletionStrategy": {"deletionRules": [
        {"policy": "DeleteSelf", "condition": {"jobStatus": "FAILED", "ttlSeconds": 10}},
        {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED", "ttlSeconds": 20}}]}}, "TTLs must follow"),
    ({"deletionStrategy": {"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED"}},
        {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED", "ttlSeconds": 5}}]}}, "duplicate rule"),
    ({"activeDeadlineSeconds": 0}, "activeDeadlineSeconds must be positive"),
    ({"backoffLimit": -1}, "backoffLimit must not be negative"),
    ({"submissionMode": "InteractiveMode"}, "incompatible with InteractiveMode"),
])
def test_kuberays_rayjob_rules_refuse_each_mistake(change: dict, message: str) -> None:
    assert rayjob_errors(VALID_JOB) == []
    job = copy.deepcopy(VALID_JOB)
    job["spec"].update(change)
    errors = rayjob_errors(job)
    assert any(message in e for e in errors), errors


def test_the_legacy_form_is_accepted_as_kuberay_does() -> None:
    job = copy.deepcopy(VALID_JOB)
    job["spec"].update(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=60, deletionStrategy={
        "onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteCluster"}})
    assert rayjob_errors(job) == []


def test_quantities() -> None:
    assert quantity("600Gi") == 600 * 2**30 and quantity("1G") == 10**9 and quantity(512) == 512
    with pytest.raises(ValueError, match="1.5Gi"):
        quantity("1.5Gi")
