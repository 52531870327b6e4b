"""Reward models that score (image, prompt) pairs, behind one registry (`registry.SCORERS`).

Importing this package registers every scorer module; a new scorer is one file with a
`@register_scorer` class, imported here.
"""

from tpo_ray.eval.scorers import aesthetic, clip, hpsv2, imagereward, scene  # noqa: F401  (registration)
from tpo_ray.eval.scorers.registry import (SCORERS, Scorer, ScorerLoadError, ScorerWeightsError, build_scorer,
                                           register_scorer)

__all__ = ["SCORERS", "Scorer", "ScorerLoadError", "ScorerWeightsError", "build_scorer", "register_scorer"]
