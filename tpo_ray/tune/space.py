"""Search spaces from YAML: dotted config keys -> domains, validated like overrides before a sweep.

    tune:
      search_space:
        train.loss.beta: {loguniform: [1000, 10000]}
        train.loss.tau: {choice: [null, 1.0e-4, 3.0e-4, 1.0e-3]}
        train.loss.name: [tdpo, tkto]              # a list: grid values (search: grid) or a choice
        data.principles: {choice: [null, [content, attribute, contextual]]}

Every value a trial can get is checked against the config schema first (each choice; each range's
ends), so a typo or an impossible value fails at start, naming `tune.search_space.<key>`, instead
of in the trial that happens to draw it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from tpo_ray.config import LOSS_CONFIGS, apply_overrides, config_from_dict

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")
# What a trial may not change: where the sweep lives and how it is named, and the sweep itself.
# The schedule is fixed too: ASHA's horizon is train.max_steps and every report must carry the metric.
FIXED_PREFIXES = ("tune.", "output_dir", "train.run_name", "train.storage_path", "tracking.", "train.max_steps",
                  "train.eval_every_steps")
MAX_COMBINATIONS_CHECKED = 256


@dataclass(frozen=True)
class Domain:
    key: str
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # the choices, or (low, high) of a range

    def probes(self) -> list[Any]:
        """Values that stand for the whole domain when validating: every choice, or a range's ends."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](
            *self.values)


def parse_space(space: dict[str, Any], search: str) -> list[Domain]:
    """`tune.search_space` -> domains; a ValueError names the key and what is wrong with it."""
    if not space:
        raise ValueError("tune.search_space is empty: name at least one dotted key to search")
    domains = []
    for key, spec in space.items():
        where = f"tune.search_space.{key}"
        if key.startswith(FIXED_PREFIXES):
            raise ValueError(f"{where}: a trial cannot change {key} (the sweep sets where and how trials run)")
        if isinstance(spec, list):
            kind, values = ("grid" if search == "grid" else "choice"), spec
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS:
            kind, values = next(iter(spec.items()))
        else:
            raise ValueError(f"{where}: expected a list of values or one of {{{': [...]}, {'.join(KINDS)}: [...]}}, "
                             f"got {spec!r}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        if kind in RANGES:
            _check_range(where, kind, values)
        if search == "grid" and kind in RANGES + ("choice",):
            raise ValueError(f"{where}: tune.search=grid needs lists of values, not {kind}; use search: random "
                             "or optuna to sample ranges")
        if search == "optuna" and kind == "grid":
            kind = "choice"  # TPE samples categorical values; it does not enumerate grids
        domains.append(Domain(key, kind, tuple(values)))
    return domains


def _check_range(where: str, kind: str, values: list[Any]) -> None:
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}.{kind}: expected [low, high] numbers, got {values!r}")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where}.{kind}: expected finite low < high, got {values!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}.loguniform: the low end must be > 0, got {low}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ValueError(f"{where}.randint: expected integers [low, high) , got {values!r}")


def validate_space(base: dict[str, Any], domains: list[Domain]) -> list:
    """The trial configs that stand for the space, each validated against the schema.

    Every combination of the domains' probes (each choice, each range's ends) when there are at most
    MAX_COMBINATIONS_CHECKED; otherwise each probe with the other keys at their first probe. Values
    are checked together because some only make sense together (`train.loss.kl_mode` needs tkto).
    The caller checks what a sweep needs of each of them (`tune.sweep.check_sweep`).
    """
    probes = [d.probes() for d in domains]
    keys = [d.key for d in domains]
    if math.prod(len(p) for p in probes) <= MAX_COMBINATIONS_CHECKED:
        combos = list(itertools.product(*probes))
    else:
        firsts = [p[0] for p in probes]
        combos = [tuple(v if j == i else firsts[j] for j in range(len(keys))) for i, p in enumerate(probes) for v in p]
    configs = []
    for values in combos:
        params = dict(zip(keys, values))
        configs.append(trial_config(base, params, describe(params)))
    return configs


def describe(params: dict[str, Any]) -> str:
    """How errors name a trial's values: `tune.search_space combination a=1, b=2`."""
    what = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"tune.search_space {'combination ' if len(params) > 1 else ''}{what}"


def trial_config(base: dict[str, Any], params: dict[str, Any], source: str, fixed: dict[str, Any] | None = None):
    """The validated config of one trial: the base config with the trial's values (and the sweep's
    `fixed` settings) applied as dotted overrides."""
    return config_from_dict(apply_overrides(_with_loss(base, params.get("train.loss.name")),
                                            {**params, **(fixed or {})}), source)


def _with_loss(base: dict[str, Any], name: Any) -> dict[str, Any]:
    """The base config with its loss section switched to `name`: the settings the two losses share
    (beta, ...) are kept, the old loss's own (TDPO's clip, ...) dropped, so sweeping
    `train.loss.name: [tdpo, tkto]` works from a TDPO base config."""
    loss = base["train"]["loss"]
    if name is None or name == loss.get("name") or name not in LOSS_CONFIGS:
        return base
    fields = LOSS_CONFIGS[name].model_fields
    return apply_overrides(base, {"train.loss": {**{k: v for k, v in loss.items() if k in fields}, "name": name}})


def param_space(domains: list[Domain]) -> dict[str, Any]:
    return {d.key: d.to_tune() for d in domains}
