"""The KubeRay manifests in `cluster/` (base and every overlay, rendered) validate strictly against the
KubeRay CRDs, carry what a production cluster needs, and name entrypoints and recipes that exist; the
Dockerfile copies only files that exist."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers.kube import merge, render, validate_resource

ROOT = Path(__file__).parents[2]
CRDS = str(ROOT / "tests" / "assets" / "kuberay-crds")  # vendored KubeRay v1.7 CRDs (see SOURCES.md there)
CLUSTER = ROOT / "cluster"
FOLDERS = [CLUSTER / "base", *sorted(p for p in (CLUSTER / "overlays").glob("*") if p.is_dir())] \
    if CLUSTER.exists() else []
RAY_KINDS = ("RayCluster", "RayJob")


def ray_docs(folder: Path) -> list[dict]:
    return [d for d in render(folder) if d["kind"] in RAY_KINDS]


def cluster_specs(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]


# -------------------------------------------------------------------- the validator can fail at all
RAYCLUSTER = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
              "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                  {"name": "ray-head", "image": "tpo-ray:1"}]}}}}}


def test_a_valid_minimal_raycluster_passes_and_each_kind_of_mistake_is_caught() -> None:
    assert validate_resource(RAYCLUSTER, CRDS) == []
    unknown = merge(RAYCLUSTER, {"spec": {"headGroupSpec": {"rayStartParms": {}}}})
    assert validate_resource(unknown, CRDS) == ["spec.headGroupSpec.rayStartParms: unknown field"]
    wrong_type = merge(RAYCLUSTER, {"spec": {"headGroupSpec": {"rayStartParams": {"num-cpus": 0}}}})
    assert validate_resource(wrong_type, CRDS) == ["spec.headGroupSpec.rayStartParams.num-cpus: expected string, got int 0"]
    bad_enum = merge(RAYCLUSTER, {"spec": {"authOptions": {"mode": "password"}}})
    assert "not one of ['disabled', 'token']" in validate_resource(bad_enum, CRDS)[0]
    no_containers = copy.deepcopy(RAYCLUSTER)
    del no_containers["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert validate_resource(no_containers, CRDS) == [
        "spec.headGroupSpec.template.spec.containers: required field missing"]


def test_strategic_merge_merges_named_items_and_replaces_other_lists() -> None:
    base = {"c": [{"name": "a", "x": 1}, {"name": "b"}], "args": ["1", "2"],
            "g": [{"groupName": "w", "n": 1, "image": "i"}]}
    patch = {"c": [{"name": "a", "y": 2}, {"name": "z"}], "args": ["3"], "g": [{"groupName": "w", "n": 4}]}
    # worker groups are replaced whole, as kustomize does for custom resources (no merge on groupName)
    assert merge(base, patch) == {"c": [{"name": "a", "x": 1, "y": 2}, {"name": "b"}, {"name": "z"}], "args": ["3"],
                                  "g": [{"groupName": "w", "n": 4}]}


# ---------------------------------------------------------------------------------- the manifests
def test_the_cluster_folder_has_a_base_and_an_overlay_per_model() -> None:
    names = [f.name for f in FOLDERS]
    assert names[0] == "base" and {"sd15", "sdxl"} <= set(names[1:]), names


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_ray_resource_validates_against_the_crds(folder: Path) -> None:
    docs = render(folder)
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "ConfigMap"}
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            assert validate_resource(doc, CRDS) == [], f"{folder.name}: {doc['kind']} {doc['metadata']['name']}"
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] == "ConfigMap", doc["kind"]
            assert all(isinstance(v, str) for v in doc.get("data", {}).values())


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_production_settings_are_present(folder: Path) -> None:
    for doc in ray_docs(folder):
        spec = cluster_specs(doc)
        what = f"{folder.name} {doc['kind']} {doc['metadata']['name']}"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{what}: work lands on the head"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{what}: Ray token authentication is off"
        assert spec.get("enableInTreeAutoscaling") is True and spec["autoscalerOptions"]["version"] == "v2"
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                             for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, f"{what}: no GPU worker group"
        for g in gpu_groups:
            assert 0 <= g["minReplicas"] <= g["maxReplicas"], what
        for name, pod in pod_specs(spec):
            assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{what} {name}: runs as root"
            shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert shm, f"{what} {name}: no memory-backed volume for /dev/shm"
            for c in pod["containers"]:
                assert set(c["resources"]["requests"]) >= {"cpu", "memory"}, f"{what} {name}/{c['name']}"
                assert set(c["resources"]["limits"]) >= {"cpu", "memory"}, f"{what} {name}/{c['name']}"
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert mounts.get("/dev/shm") in {v["name"] for v in shm}, f"{what} {name}/{c['name']}: /dev/shm"
                env_text = yaml.safe_dump({"env": c.get("env", []), "envFrom": c.get("envFrom", [])})
                assert "secretKeyRef" in env_text or "secretRef" in env_text, f"{what} {name}: no S3 credentials"
                assert "MLFLOW_TRACKING_URI" in env_text or "configMapRef" in env_text, f"{what} {name}: MLflow URI"
        if doc["kind"] == "RayJob":
            job = doc["spec"]
            assert job["shutdownAfterJobFinishes"] is True and job["submissionMode"]
            assert job["submitterConfig"]["backoffLimit"] >= 0
            assert "deletionStrategy" in job or "ttlSecondsAfterFinished" in job
            assert isinstance(yaml.safe_load(job["runtimeEnvYAML"]), dict)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_entrypoint_names_a_job_file_and_a_recipe_that_exist(folder: Path) -> None:
    from tpo_ray.config import load_config

    jobs = [d for d in render(folder) if d["kind"] == "RayJob"]
    assert jobs
    for doc in jobs:
        words = shlex.split(doc["spec"]["entrypoint"])
        scripts = [w for w in words if re.fullmatch(r"(\./)?jobs/[\w/]+\.py", w)]
        assert scripts, f"{doc['metadata']['name']}: the entrypoint names no jobs/*.py: {words}"
        for script in scripts:
            assert (ROOT / script).is_file(), f"{doc['metadata']['name']}: {script} does not exist"
        for recipe in [w for w in words if re.fullmatch(r"(\./)?jobs/configs/[\w.-]+\.yaml", w)]:
            load_config(ROOT / recipe)  # exists and validates


def test_the_images_are_the_users_variable() -> None:
    for folder in FOLDERS[1:]:
        images = {c["image"] for d in ray_docs(folder) for _, pod in pod_specs(cluster_specs(d))
                  for c in pod["containers"]}
        assert len(images) == 1 and not images.pop().startswith("tpo-ray:"), f"{folder.name}: image not set"


def test_the_dockerfile_copies_files_that_exist_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith(("FROM", "ARG")) and any(ln.startswith("FROM") for ln in lines)
    copies = [shlex.split(ln)[1:] for ln in lines if ln.split()[0] in ("COPY", "ADD")]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert list(ROOT.glob(source)), f"Dockerfile copies {source}, which is not in the repository"
    user = [ln.split()[1] for ln in lines if ln.split()[0] == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"pip install[^\n]*\.\[llm\]", text), "tpo_ray with the llm extra"


def test_the_runtime_env_file_is_one_ray_accepts_and_matches_the_rayjobs() -> None:
    """`ray job submit --runtime-env jobs/runtime_env.yaml` from the repository root: Ray's own parser takes
    it, its working_dir holds the entrypoints, and the RayJobs set the same variables."""
    from ray.runtime_env import RuntimeEnv

    root = Path(__file__).parents[2]
    data = yaml.safe_load((root / "jobs" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**data)
    assert (root / env["working_dir"] / "pipeline.py").is_file()
    for name in ("rayjob-pipeline.yaml", "rayjob-tune.yaml"):
        job = yaml.safe_load((root / "cluster" / "base" / name).read_text())
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"] == data["env_vars"], name
