"""Kubernetes manifests without a cluster: strict validation against a CRD's openAPIV3Schema, and the
subset of kustomize the `cluster/` overlays use.

Strict means what `kubectl apply --validate=strict` does with a structural CRD schema: a field the
schema does not name is an error (unless the schema preserves unknown fields), as is a value of the
wrong type, a missing required field or a value outside an enum. kustomize itself is not installable
from the package registries, so `render` implements exactly the features the overlays may use:
`resources` (files, or folders holding a kustomization.yaml), `images` (newName/newTag for a
container image by name) and `patches` given by `path`, merged by strategic merge (mappings merge,
lists of mappings merge item by item on `name` or `groupName`, other lists are replaced). Anything else
in a kustomization is refused, so an overlay cannot silently rely on a feature this renderer skips.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

MERGE_KEYS = ("name",)  # as kustomize merges custom resources: by name only (not groupName)
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images", "patches", "namespace"}


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
def merge(base: Any, patch: Any) -> Any:
    """Strategic merge of `patch` into `base` (see the module docstring)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and patch and all(isinstance(x, dict) for x in base + patch):
        key = next((k for k in MERGE_KEYS if all(k in x for x in base + patch)), None)
        if key is not None:
            out = [copy.deepcopy(x) for x in base]
            for item in patch:
                at = next((i for i, x in enumerate(out) if x[key] == item[key]), None)
                if at is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[at] = merge(out[at], item)
            return out
    return copy.deepcopy(patch)


def _containers(doc: Any):
    """Every container mapping in a resource (anything under a `containers` or `initContainers` list)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _containers(item)


def image_name(image: str) -> str:
    """`registry/name:tag` -> `registry/name` (a registry port is not a tag)."""
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0].split("@", 1)[0]


def render(folder: str | Path) -> list[dict]:
    """The resources a kustomization folder produces."""
    folder = Path(folder)
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which this renderer does not support")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        target = folder / entry
        docs += render(target) if target.is_dir() else [d for d in yaml.safe_load_all(target.read_text()) if d]
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{folder}: patches must be given by path only, got {patch_entry}")
        patch = yaml.safe_load((folder / patch_entry["path"]).read_text())
        ident = (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
        hits = [i for i, d in enumerate(docs) if (d["apiVersion"], d["kind"], d["metadata"]["name"]) == ident]
        if len(hits) != 1:
            raise ValueError(f"{folder}: patch {patch_entry['path']} targets {ident}, found {len(hits)} resources")
        docs[hits[0]] = merge(docs[hits[0]], patch)
    for image in spec.get("images", []):
        for container in (c for d in docs for c in _containers(d)):
            if image_name(container.get("image", "")) == image["name"]:
                tag = image.get("newTag") or (container["image"].rsplit(":", 1)[1]
                                               if ":" in container["image"].rsplit("/", 1)[-1] else "latest")
                container["image"] = f"{image.get('newName', image['name'])}:{tag}"
    if spec.get("namespace"):
        for d in docs:
            d["metadata"]["namespace"] = spec["namespace"]
    return docs
