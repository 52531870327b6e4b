"""The KubeRay manifests in `cluster/`, rendered by the real kustomize (every kustomization: the base, each
overlay and each overlay's tune/), validate strictly against the KubeRay CRDs and pass KubeRay's own RayJob
checks, carry what a production cluster needs (deadlines, retries, bounded disk, optional static keys or a
cloud identity, the MLflow server), keep the RayJobs' clusters in step with the RayCluster, patch per model
only what differs, and name entrypoints and recipes that exist; the Dockerfile copies only files that exist."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.kube import quantity, rayjob_errors, render, validate_resource

ROOT = Path(__file__).parents[2]
CRDS = str(ROOT / "tests" / "assets" / "kuberay-crds")  # vendored KubeRay v1.7 CRDs (see SOURCES.md there)
CLUSTER = ROOT / "cluster"
RAY_KINDS = ("RayCluster", "RayJob")
STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SERVICE_ACCOUNT = "tpo-ray-workload"


def kustomizations() -> list[Path]:
    """Every folder under cluster/ that `kubectl apply -k` takes (components are rendered through them)."""
    found = [p.parent for p in CLUSTER.rglob("kustomization.yaml")
             if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization"]
    return sorted(found, key=lambda p: (p.relative_to(CLUSTER).parts[0] != "base", str(p)))


FOLDERS = kustomizations() if CLUSTER.exists() else []
OVERLAYS = sorted(p for p in (CLUSTER / "overlays").iterdir() if p.is_dir()) if CLUSTER.exists() else []


def name(folder: Path) -> str:
    return str(folder.relative_to(CLUSTER))


def ray_docs(folder: Path) -> list[dict]:
    return [d for d in render(folder) if d["kind"] in RAY_KINDS]


def cluster_specs(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]


def all_pods(doc: dict) -> list[tuple[str, dict]]:
    """The Ray pod templates of a resource, and a RayJob's submitter pod template."""
    pods = pod_specs(cluster_specs(doc))
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        pods.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    return pods


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def changed(doc: dict, path: str, value: object) -> dict:
    """A copy of `doc` with the dotted `path` set to `value`."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


# -------------------------------------------------------------------- the validator can fail at all
RAYCLUSTER = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
              "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                  {"name": "ray-head", "image": "tpo-ray:1"}]}}}}}


def test_a_valid_minimal_raycluster_passes_and_each_kind_of_mistake_is_caught() -> None:
    assert validate_resource(RAYCLUSTER, CRDS) == []
    unknown = changed(RAYCLUSTER, "spec.headGroupSpec.rayStartParms", {})
    assert validate_resource(unknown, CRDS) == ["spec.headGroupSpec.rayStartParms: unknown field"]
    wrong_type = changed(RAYCLUSTER, "spec.headGroupSpec.rayStartParams.num-cpus", 0)
    assert validate_resource(wrong_type, CRDS) == ["spec.headGroupSpec.rayStartParams.num-cpus: expected string, got int 0"]
    bad_enum = changed(RAYCLUSTER, "spec.authOptions.mode", "password")
    assert "not one of ['disabled', 'token']" in validate_resource(bad_enum, CRDS)[0]
    no_containers = copy.deepcopy(RAYCLUSTER)
    del no_containers["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert validate_resource(no_containers, CRDS) == [
        "spec.headGroupSpec.template.spec.containers: required field missing"]


# ---------------------------------------------------------------------------------- the layout
def test_the_cluster_folder_has_a_base_and_an_overlay_per_model_each_with_its_sweep() -> None:
    names = [name(f) for f in FOLDERS]
    assert names[:2] == ["base", "base/tune"], names
    assert {o.name for o in OVERLAYS} >= {"sd15", "sdxl"}
    for overlay in OVERLAYS:
        assert {name(overlay), name(overlay / "tune")} <= set(names), f"{overlay.name}: no kustomization or tune/"


@pytest.mark.parametrize("overlay", [CLUSTER / "base", *OVERLAYS], ids=name)
def test_applying_an_overlay_does_not_start_the_sweep_its_tune_folder_does(overlay: Path) -> None:
    """The sweep starts from the pipeline's SFT export: `kubectl apply -k <overlay>` must not create it
    beside the pipeline; `kubectl apply -k <overlay>/tune` creates it and nothing shared with the overlay
    (so applying or deleting it leaves the ConfigMap and the RayCluster alone)."""
    main = render(overlay)
    assert [d["metadata"]["name"] for d in main if d["kind"] == "RayJob"] == ["tpo-pipeline"]
    tune = render(overlay / "tune")
    assert [(d["kind"], d["metadata"]["name"]) for d in tune] == [("RayJob", "tpo-tune")]
    assert not tune[0]["spec"].get("suspend"), "started by applying tune/, not by a patch"
    namespaces = {d["metadata"].get("namespace") for d in main + tune}
    assert len(namespaces) == 1, f"{overlay.name}: the sweep and the overlay in different namespaces {namespaces}"


# ---------------------------------------------------------------------------------- the manifests
@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_every_ray_resource_validates_against_the_crds_and_kuberays_checks(folder: Path) -> None:
    docs = render(folder)
    expected = {"RayJob"} if folder.name == "tune" else {"RayCluster", "RayJob", "ConfigMap"}
    assert {d["kind"] for d in docs} == expected, name(folder)
    for doc in docs:
        what = f"{name(folder)}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in RAY_KINDS:
            assert validate_resource(doc, CRDS) == [], what
            if doc["kind"] == "RayJob":
                assert rayjob_errors(doc) == [], what
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] == "ConfigMap", doc["kind"]
            assert all(isinstance(v, str) for v in doc.get("data", {}).values())


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_production_settings_are_present(folder: Path) -> None:
    for doc in ray_docs(folder):
        spec = cluster_specs(doc)
        what = f"{name(folder)} {doc['kind']} {doc['metadata']['name']}"
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
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], what
        for pod_name, pod in pod_specs(spec):
            assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{what} {pod_name}: runs as root"
            shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert shm, f"{what} {pod_name}: no memory-backed volume for /dev/shm"
            for c in pod["containers"]:
                assert set(c["resources"]["requests"]) >= {"cpu", "memory"}, f"{what} {pod_name}/{c['name']}"
                assert set(c["resources"]["limits"]) >= {"cpu", "memory"}, f"{what} {pod_name}/{c['name']}"
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert mounts.get("/dev/shm") in {v["name"] for v in shm}, f"{what} {pod_name}/{c['name']}: /dev/shm"


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_rayjobs_use_deletion_rules_deadlines_and_retries(folder: Path) -> None:
    """KubeRay 1.7's deletionRules (not the deprecated onSuccess/onFailure): the job's Ray cluster goes an
    hour after success and an hour after any final failure (a deadline leaves jobStatus non-terminal, so a
    jobDeploymentStatus rule), the RayJob and its status stay; a hung job or one whose GPUs never come
    fails; a failed attempt is retried on a new cluster a couple of times (the jobs resume)."""
    for doc in (d for d in ray_docs(folder) if d["kind"] == "RayJob"):
        job, what = doc["spec"], f"{name(folder)} {doc['metadata']['name']}"
        strategy = job["deletionStrategy"]
        assert set(strategy) == {"deletionRules"}, f"{what}: deprecated onSuccess/onFailure"
        rules = {(tuple(sorted((k, v) for k, v in r["condition"].items() if k != "ttlSeconds")), r["policy"]):
                 r["condition"].get("ttlSeconds", 0) for r in strategy["deletionRules"]}
        assert rules == {((("jobStatus", "SUCCEEDED"),), "DeleteCluster"): 3600,
                         ((("jobDeploymentStatus", "Failed"),), "DeleteCluster"): 3600}, what
        assert not job.get("shutdownAfterJobFinishes") and "ttlSecondsAfterFinished" not in job, what
        assert job["submissionMode"] == "K8sJobMode" and job["submitterConfig"]["backoffLimit"] >= 0, what
        assert 1 <= job["backoffLimit"] <= 3, f"{what}: retries of the whole job"
        assert job["activeDeadlineSeconds"] >= 24 * 3600, f"{what}: a deadline under a day would cut real runs"
        assert 600 <= job["preRunningDeadlineSeconds"] <= 2 * 3600, f"{what}: waiting for GPUs"
        assert isinstance(yaml.safe_load(job["runtimeEnvYAML"]), dict)


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_every_pod_has_bounded_disk_and_ray_temp_on_an_empty_dir(folder: Path) -> None:
    """Ray's temp and spill dir (/tmp/ray) is an emptyDir with a sizeLimit in every Ray pod and the
    submitter; every container requests and limits ephemeral-storage, each pod's limit covering its disk
    emptyDirs (past it the kubelet evicts the pod before a volume fills). The head's is named as the volume
    KubeRay adds for the autoscaler (`ray-logs`), which the autoscaler sidecar then shares."""
    for doc in ray_docs(folder):
        what = f"{name(folder)} {doc['kind']} {doc['metadata']['name']}"
        autoscaler = cluster_specs(doc)["autoscalerOptions"]["resources"]
        assert "ephemeral-storage" in autoscaler["requests"] and "ephemeral-storage" in autoscaler["limits"], what
        for pod_name, pod in all_pods(doc):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            disk = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in volumes.values()
                       if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
            limits = 0
            for c in pod["containers"]:
                res = c["resources"]
                assert "ephemeral-storage" in res["requests"], f"{what} {pod_name}/{c['name']}: no request"
                assert quantity(res["requests"]["ephemeral-storage"]) <= quantity(res["limits"]["ephemeral-storage"])
                limits += quantity(res["limits"]["ephemeral-storage"])
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                tmp = volumes.get(mounts.get("/tmp/ray", ""), {}).get("emptyDir")
                assert tmp is not None and tmp.get("medium") != "Memory" and "sizeLimit" in tmp, \
                    f"{what} {pod_name}/{c['name']}: /tmp/ray is not a disk emptyDir with a sizeLimit"
                if pod_name == "head":
                    assert mounts["/tmp/ray"] == "ray-logs", f"{what}: the autoscaler would get a volume of its own"
            assert limits >= disk, f"{what} {pod_name}: ephemeral-storage limit under the emptyDirs' sizeLimits"


def test_gpu_workers_have_room_to_spill_and_sdxl_more() -> None:
    spill = {}
    for overlay in OVERLAYS:
        for doc in ray_docs(overlay) + ray_docs(overlay / "tune"):
            for _, pod in pod_specs(cluster_specs(doc))[1:]:
                size = next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "ray-logs")
                spill.setdefault(overlay.name, set()).add(quantity(size))
    assert all(len(s) == 1 for s in spill.values()), spill
    assert min(spill["sd15"]) >= quantity("200Gi") and min(spill["sdxl"]) > min(spill["sd15"]), spill


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_static_s3_keys_are_optional(folder: Path) -> None:
    """The keys come from the Secret tpo-ray-s3 if it has them: without it, or without the keys, the pods
    start and use their cloud identity (IRSA, EKS Pod Identity: cluster/components/service-account)."""
    for doc in ray_docs(folder):
        for pod_name, pod in pod_specs(cluster_specs(doc)):
            for c in pod["containers"]:
                env, what = env_of(c), f"{name(folder)} {doc['metadata']['name']} {pod_name}/{c['name']}"
                for key in STATIC_KEYS:
                    ref = env[key]["valueFrom"]["secretKeyRef"]
                    assert ref == {"name": "tpo-ray-s3", "key": key, "optional": True}, what
                refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
                refs += [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert all(r.get("optional") is True for r in refs), f"{what}: a required Secret"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=name)
def test_the_service_account_variant_drops_the_static_keys_and_changes_nothing_else(overlay: Path,
                                                                                   tmp_path: Path) -> None:
    """As cluster/README.md says: add the component to the overlay's common/ and render both folders."""
    copied = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copied)
    common = copied / "overlays" / overlay.name / "common" / "kustomization.yaml"
    spec = yaml.safe_load(common.read_text())
    spec["components"] = [*spec.get("components", []), "../../../components/service-account"]
    common.write_text(yaml.safe_dump(spec))

    def without_identity(doc: dict, drop_keys: bool) -> dict:
        doc = copy.deepcopy(doc)
        for _, pod in pod_specs(cluster_specs(doc)):
            pod.pop("serviceAccountName", None)
            for c in pod["containers"]:
                c["env"] = [e for e in c.get("env", []) if not (drop_keys and e["name"] in STATIC_KEYS)]
        return doc

    for sub in ("", "tune"):
        plain, variant = render(overlay / sub), render(copied / "overlays" / overlay.name / sub)
        accounts = [d for d in variant if d["kind"] == "ServiceAccount"]
        assert len(accounts) == 1 and accounts[0]["metadata"]["name"] == SERVICE_ACCOUNT
        assert accounts[0]["metadata"]["namespace"] == plain[0]["metadata"]["namespace"]
        assert "eks.amazonaws.com/role-arn" in accounts[0]["metadata"]["annotations"]
        ray = [d for d in variant if d["kind"] in RAY_KINDS]
        for doc in ray:
            assert validate_resource(doc, CRDS) == [] and (doc["kind"] != "RayJob" or rayjob_errors(doc) == [])
            for pod_name, pod in pod_specs(cluster_specs(doc)):
                assert pod["serviceAccountName"] == SERVICE_ACCOUNT, f"{doc['metadata']['name']} {pod_name}"
                for c in pod["containers"]:
                    assert not set(STATIC_KEYS) & set(env_of(c)), f"{doc['metadata']['name']} {pod_name}: static keys"
                    assert "AWS_ENDPOINT_URL" in env_of(c)
        assert [without_identity(d, False) for d in ray] == \
            [without_identity(d, True) for d in plain if d["kind"] in RAY_KINDS]


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
def test_the_mlflow_server_of_the_config_map_reaches_every_driver_and_worker(folder: Path) -> None:
    """Drivers run on the head (K8sJobMode submits to it), workers on the worker pods: each container reads
    the ConfigMap, nothing overrides MLFLOW_TRACKING_URI, and the recipes the jobs run name no other server."""
    from tpo_ray.config import load_config

    base = folder if folder.name != "tune" else folder.parent
    config = [d for d in render(base) if d["kind"] == "ConfigMap"]
    assert len(config) == 1 and config[0]["metadata"]["name"] == "tpo-ray-config"
    uri = config[0]["data"]["MLFLOW_TRACKING_URI"]
    assert re.fullmatch(r"https?://\S+", uri), uri
    for doc in ray_docs(folder):
        for pod_name, pod in pod_specs(cluster_specs(doc)):
            for c in pod["containers"]:
                what = f"{name(folder)} {doc['metadata']['name']} {pod_name}/{c['name']}"
                refs = [e["configMapRef"] for e in c.get("envFrom", []) if "configMapRef" in e]
                assert {"name": "tpo-ray-config"} in refs, f"{what}: does not read the ConfigMap (required)"
                assert "MLFLOW_TRACKING_URI" not in env_of(c), f"{what}: overrides the ConfigMap"
        if doc["kind"] == "RayJob":
            env_vars = yaml.safe_load(doc["spec"]["runtimeEnvYAML"]).get("env_vars", {})
            assert "MLFLOW_TRACKING_URI" not in env_vars, doc["metadata"]["name"]
            words = shlex.split(doc["spec"]["entrypoint"])
            recipe = words[words.index("--config") + 1]
            overrides = [w for w in words[words.index("--config") + 2:] if "=" in w and not w.startswith("-")]
            configured = load_config(ROOT / recipe, overrides).tracking.tracking_uri
            assert configured in (None, uri), f"{doc['metadata']['name']}: {recipe} logs to {configured}, not {uri}"


@pytest.mark.parametrize("overlay", [CLUSTER / "base", *OVERLAYS], ids=name)
def test_the_rayjobs_clusters_are_in_step_with_the_raycluster(overlay: Path) -> None:
    """Three copies of one cluster shape (RayCluster, pipeline, sweep): only the worker counts differ."""

    def shape(spec: dict) -> dict:
        spec = copy.deepcopy(spec)
        for g in spec["workerGroupSpecs"]:
            for key in ("replicas", "minReplicas", "maxReplicas"):
                g.pop(key, None)
        return spec

    docs = ray_docs(overlay) + ray_docs(overlay / "tune")
    reference = shape(next(d["spec"] for d in docs if d["kind"] == "RayCluster"))
    for doc in docs:
        assert shape(cluster_specs(doc)) == reference, f"{overlay.name}: {doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=name)
def test_overlays_patch_only_what_differs_per_model(overlay: Path) -> None:
    """JSON6902 patches with `test` guards, no copy of a worker group or pod template; the RayCluster's
    and the RayJobs' GPU patches are the same operations."""
    for path in overlay.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"^\s*(workerGroupSpecs|containers|template):", text, re.M), \
            f"{path.relative_to(CLUSTER)} repeats a worker group or pod template"
    for kustomization in overlay.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kustomization.read_text()).get("patches", []):
            assert "target" in patch, f"{kustomization.relative_to(CLUSTER)}: a patch without a target"
            ops = yaml.safe_load(patch.get("patch") or (kustomization.parent / patch["path"]).read_text())
            assert isinstance(ops, list) and all("op" in op for op in ops), "JSON6902 operations"
            index_paths = [op["path"] for op in ops if re.search(r"/\d+/", op["path"]) and op["op"] != "test"]
            assert not index_paths or any(op["op"] == "test" for op in ops), f"{patch}: indexes without a test op"
    common = overlay / "common"
    raycluster = yaml.safe_load((common / "gpu-nodes-raycluster.yaml").read_text())
    rayjob = yaml.safe_load((common / "gpu-nodes-rayjob.yaml").read_text())
    assert [{**op, "path": op["path"].replace("/spec/", "/spec/rayClusterSpec/", 1)} for op in raycluster] == rayjob


@pytest.mark.parametrize("folder", FOLDERS, ids=name)
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
    for folder in (f for f in FOLDERS if f.parts[len(CLUSTER.parts)] == "overlays"):
        images = {c["image"] for d in ray_docs(folder) for _, pod in all_pods(d) for c in pod["containers"]}
        assert len(images) == 1 and not images.pop().startswith("tpo-ray:"), f"{name(folder)}: image not set"


def test_the_readme_deploys_what_the_manifests_define() -> None:
    """Every `kubectl apply/delete -k` in cluster/README.md names a kustomization; the README explains the
    sweep's separate apply, the deadlines and retries, both credential modes and the disk, and no longer
    pins the GPU group's minReplicas before a sweep (its pending trials scale the group up)."""
    text = (CLUSTER / "README.md").read_text()
    applied = re.findall(r"kubectl (?:-n \S+ )?(?:apply|delete) -k (cluster/[\w./-]+)", text)
    assert applied
    for folder in applied:
        assert (ROOT / folder / "kustomization.yaml").is_file(), folder
    for overlay in OVERLAYS:
        assert f"cluster/overlays/{overlay.name}/tune" in text or "cluster/overlays/<model>/tune" in text
    for term in ("activeDeadlineSeconds", "preRunningDeadlineSeconds", "backoffLimit", "deletionRules",
                 "components/service-account", "ephemeral-storage", "/tmp/ray", "MLFLOW_TRACKING_URI"):
        assert term in text, term
    assert "minReplicas\", \"value\"" not in text and "/minReplicas" not in text


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
    # the llm extra's packages come from the hashed lock (tests/unit/test_image_lock.py checks it holds them)
    assert re.search(r"pip install --require-hashes[^\n]*-r image/requirements\.lock", text)


def test_the_runtime_env_file_is_one_ray_accepts_and_matches_the_rayjobs() -> None:
    """`ray job submit --runtime-env jobs/runtime_env.yaml` from the repository root: Ray's own parser takes
    it, its working_dir holds the entrypoints, and the RayJobs set the same variables."""
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**data)
    assert (ROOT / env["working_dir"] / "pipeline.py").is_file()
    for folder in (CLUSTER / "base", CLUSTER / "base" / "tune"):
        for job in (d for d in render(folder) if d["kind"] == "RayJob"):
            env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
            assert env_vars == data["env_vars"], job["metadata"]["name"]
