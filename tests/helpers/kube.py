"""Kubernetes manifests without a cluster: `render` runs the real kustomize (`kubectl kustomize`, or a
standalone `kustomize build`) on a folder and parses what it prints; `validate_resource` checks a custom
resource strictly against a CRD's openAPIV3Schema; `rayjob_errors` repeats the checks KubeRay itself makes
on a RayJob (CEL rules of the CRD and the operator's spec validation), which no schema expresses.

Strict means what `kubectl apply --validate=strict` does with a structural CRD schema: a field the
schema does not name is an error (unless the schema preserves unknown fields), as is a value of the
wrong type, a missing required field or a value outside an enum.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

@cache
def crd_schemas(crd_dir: str) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of every CRD in the folder."""
    out = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def _type_ok(value: Any, kind: str) -> bool:
    return {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}[kind](value)


def validate(value: Any, schema: dict, path: str = "") -> list[str]:
    """Every violation of `schema` by `value`, each as `path: what`."""
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer or a string, got {value!r}"]
    if "anyOf" in schema and not any(not validate(value, s, path) for s in schema["anyOf"]):
        return [f"{where}: matches none of anyOf"]
    errors: list[str] = []
    kind = schema.get("type")
    if kind and not _type_ok(value, kind):
        return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        free = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if props is not None and key in props:
                errors += validate(item, props[key], sub)
            elif isinstance(extra, dict):
                errors += validate(item, extra, sub)
            elif not free:
                errors.append(f"{sub}: unknown field")
        errors += [f"{path + '.' if path else ''}{r}: required field missing"
                   for r in schema.get("required", []) if r not in value]
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


OBJECT_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}


def validate_resource(doc: dict, crd_dir: str) -> list[str]:
    """A custom resource against its CRD (metadata against the ObjectMeta fields manifests use)."""
    schemas = crd_schemas(crd_dir)
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return [f"no served CRD version for {key}; served: {sorted(schemas)}"]
    schema = copy.deepcopy(schemas[key])
    schema["properties"]["metadata"] = OBJECT_META
    return validate(doc, schema)


# ------------------------------------------------------------------------------------------ rendering
KUSTOMIZE_MAJOR = 5  # components, JSON6902 `patches` with `target`, `test` ops: what cluster/ uses
INSTALL = ("install kubectl >= 1.27 (it bundles kustomize v5: https://kubernetes.io/docs/tasks/tools/) or a "
           "standalone kustomize v5 (https://kubectl.docs.kubernetes.io/installation/kustomize/) on PATH")


class KustomizeError(RuntimeError):
    """No usable kustomize, or kustomize refused a folder (its own message included)."""


@cache
def _kustomize(path_env: str) -> tuple[str, ...]:
    """The command that renders a folder: `kubectl kustomize`, else `kustomize build` (kustomize >= v5)."""
    found = []
    for exe, args, version in (("kubectl", ("kustomize",), ("version", "--client", "-o", "json")),
                               ("kustomize", ("build",), ("version",))):
        binary = shutil.which(exe, path=path_env)
        if binary is None:
            continue
        out = subprocess.run([binary, *version], capture_output=True, text=True, timeout=60).stdout
        if exe == "kubectl":
            out = json.loads(out or "{}").get("kustomizeVersion", "")
        match = re.search(r"v(\d+)\.\d+", out)
        if match and int(match.group(1)) >= KUSTOMIZE_MAJOR:
            return (binary, *args)
        found.append(f"{binary} (kustomize {match.group(0) if match else 'version unknown'})")
    raise KustomizeError(f"rendering cluster/ needs kustomize v{KUSTOMIZE_MAJOR}+, found "
                         f"{', '.join(found) or 'neither kubectl nor kustomize'}: {INSTALL}")


@cache
def _rendered(folder: str, path_env: str) -> str:
    command = [*_kustomize(path_env), folder]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise KustomizeError(f"`{' '.join(command)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def render(folder: str | Path) -> list[dict]:
    """The resources `kubectl kustomize FOLDER` (or `kustomize build FOLDER`) produces, as dicts."""
    text = _rendered(str(Path(folder).resolve()), os.environ.get("PATH", ""))
    return [doc for doc in yaml.safe_load_all(text) if doc]


# ------------------------------------------------------------------------------------ KubeRay's rules
DELETION_ORDER = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")  # TTLs must not decrease along it


def rayjob_errors(doc: dict) -> list[str]:
    """What KubeRay v1.7 refuses in a RayJob beyond its schema: the CRD's CEL rules on deletionStrategy
    and the operator's ValidateRayJobSpec (ray-operator/controllers/ray/utils/validation.go), the parts
    about deletion, suspension, deadlines and retries; a refused RayJob ends as ValidationFailed."""
    spec, errors = doc["spec"], []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
    autoscaling = spec.get("rayClusterSpec", {}).get("enableInTreeAutoscaling", False)
    if spec.get("suspend") and not shutdown:
        errors.append("suspend needs shutdownAfterJobFinishes: true")
    if ttl and not shutdown:
        errors.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    strategy = spec.get("deletionStrategy")
    if strategy is not None:
        legacy = [k for k in ("onSuccess", "onFailure") if k in strategy]
        rules = strategy.get("deletionRules", [])
        if legacy and rules:
            errors.append("onSuccess/onFailure and deletionRules cannot be used together")
        if not rules and len(legacy) != 2:
            errors.append("deletionStrategy needs both onSuccess and onFailure, or deletionRules")
        if rules and shutdown:
            errors.append("shutdownAfterJobFinishes and deletionRules are mutually exclusive")
        ttls: dict[tuple[str, str], int] = {}
        for i, rule in enumerate(rules):
            cond = rule.get("condition", {})
            if ("jobStatus" in cond) == ("jobDeploymentStatus" in cond):
                errors.append(f"deletionRules[{i}]: exactly one of jobStatus and jobDeploymentStatus")
            if autoscaling and rule.get("policy") == "DeleteWorkers":
                errors.append(f"deletionRules[{i}]: DeleteWorkers is refused with autoscaling")
            key = (cond.get("jobStatus", ""), rule.get("policy"))
            if key in ttls:
                errors.append(f"deletionRules[{i}]: duplicate rule for {key}")
            ttls[key] = cond.get("ttlSeconds", 0)
        for status in {s for s, _ in ttls}:
            order = [ttls[(status, p)] for p in DELETION_ORDER if (status, p) in ttls]
            if order != sorted(order):
                errors.append(f"deletionRules for {status or 'jobDeploymentStatus'}: TTLs must follow {DELETION_ORDER}")
        for name in legacy:
            policy = strategy[name].get("policy")
            if shutdown and policy == "DeleteNone":
                errors.append(f"{name}: DeleteNone with shutdownAfterJobFinishes")
            if autoscaling and policy == "DeleteWorkers":
                errors.append(f"{name}: DeleteWorkers is refused with autoscaling")
    for name in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if name in spec and spec[name] <= 0:
            errors.append(f"{name} must be positive, got {spec[name]}")
    if spec.get("backoffLimit", 0) < 0:
        errors.append(f"backoffLimit must not be negative, got {spec['backoffLimit']}")
    if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("backoffLimit is incompatible with InteractiveMode")
    if spec.get("submissionMode") == "SidecarMode" and ("submitterConfig" in spec or "submitterPodTemplate" in spec):
        errors.append("SidecarMode refuses submitterConfig and submitterPodTemplate")
    return errors


# ----------------------------------------------------------------------------------------- quantities
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> int:
    """A Kubernetes quantity of bytes (`600Gi`, `1G`, `512`) as an integer."""
    match = re.fullmatch(r"(\d+)([kMGT]i?|Ki)?", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a quantity this helper reads (digits and one of {sorted(UNITS)})")
    return int(match.group(1)) * UNITS[match.group(2) or ""]
