"""Verifier accuracy of a model: per attribute and "all correct", each with its 95% Wilson interval.

Pure functions over verdicts, plus `sample_and_verify`, which samples held-out prompts from a pipeline in
this process (pretraining's own check; the demo and the benchmark sample through `tpo-ray eval sample`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tpo_ray.world.scenes import ATTRIBUTES, PRINCIPLE_OF, held_out_scenes

ALL = "all"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sensible at 0 and n, where the normal one collapses."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(right: float, n: int) -> dict:
    """{"accuracy", "interval" (95% Wilson), "right", "n"} of `right` successes in `n` trials."""
    return {"accuracy": right / n if n else float("nan"), "interval": list(wilson_interval(right, n)), "right": right,
            "n": n}


def accuracy_table(verdicts: Sequence) -> dict:
    """Over verdicts (`verifier.Verdict`): {"n": N, "attributes": {attribute | "all": cell}, "principles":
    {principle: cell}}, a cell {"accuracy", "interval" (95% Wilson), "right"}. A principle is right when
    every attribute it edits is (contextual: background and time; attribute: color and size; ...)."""
    n = len(verdicts)
    attributes = {name: proportion(sum(v.right[name] for v in verdicts), n) for name in ATTRIBUTES}
    attributes[ALL] = proportion(sum(v.all_correct for v in verdicts), n)
    principles = {}
    for principle in dict.fromkeys(PRINCIPLE_OF.values()):
        names = [a for a, p in PRINCIPLE_OF.items() if p == principle]
        principles[principle] = proportion(sum(all(v.right[a] for a in names) for v in verdicts), n)
    return {"n": n, "attributes": attributes, "principles": principles}


@torch.no_grad()
def sample_and_verify(pipe, num_prompts: int, guidance_scale: float, steps: int, seed: int = 0,
                      batch_size: int = 16) -> dict:
    """Sample `num_prompts` held-out prompts (one image each, seeded per prompt) and verify them."""
    from tpo_ray.world.verifier import verify

    scenes = held_out_scenes(num_prompts, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    verdicts = []
    for i in range(0, len(scenes), batch_size):
        chunk = scenes[i:i + batch_size]
        generators = [torch.Generator().manual_seed(seed * 100_003 + i + k) for k in range(len(chunk))]
        images = pipe([s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generators, output_type="pil").images
        verdicts += [verify(image, scene) for image, scene in zip(images, chunk)]
    return accuracy_table(verdicts)
