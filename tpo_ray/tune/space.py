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

from tpo_ray.config import apply_overrides, config_from_dict

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")
# What a trial may not change: where the sweep lives and how it is named, and the sweep itself.
FIXED_PREFIXES = ("tune.", "output_dir", "train.run_name", "train.storage_path", "tracking.")
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


def validate_space(base: dict[str, Any], domains: list[Domain]) -> int:
    """Check every value of every domain against the schema (and every combination when the space is
    discrete and small); returns how many trial configs were checked."""
    checked = 0
    for domain in domains:
        for value in domain.probes():
            trial_config(base, {domain.key: value}, f"tune.search_space.{domain.key}={value!r}")
            checked += 1
    if all(d.kind in ("choice", "grid") for d in domains):
        combos = math.prod(len(d.values) for d in domains)
        if 1 < len(domains) and combos <= MAX_COMBINATIONS_CHECKED:
            for values in itertools.product(*(d.values for d in domains)):
                params = dict(zip((d.key for d in domains), values))
                trial_config(base, params, "tune.search_space combination " +
                             ", ".join(f"{k}={v!r}" for k, v in params.items()))
                checked += 1
    return checked


def trial_config(base: dict[str, Any], params: dict[str, Any], source: str, fixed: dict[str, Any] | None = None):
    """The validated config of one trial: the base config with the trial's values (and the sweep's
    `fixed` settings) applied as dotted overrides."""
    return config_from_dict(apply_overrides(base, {**params, **(fixed or {})}), source)


def param_space(domains: list[Domain]) -> dict[str, Any]:
    return {d.key: d.to_tune() for d in domains}
