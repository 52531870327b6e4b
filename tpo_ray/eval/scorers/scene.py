"""`scene`: the world's verifier as a scorer, for prompts of the scene grammar (`eval.prompts: scenes`).

The score of an image is the share of its prompt's seven attributes (background, time, color, position,
count, shape, size) the verifier reads back from it, so win rates compare how much of each prompt two
models draw right; `scene_accuracy` gives the per-attribute and all-correct accuracies behind it. A
program, not a network: no weights, deterministic, fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from tpo_ray.eval.scorers.registry import register_scorer


@register_scorer("scene")
class SceneScore:
    published = "tpo_ray/world/verifier.py (a program: no weights)"
    expects = "nothing"
    needs_weights = False

    def __init__(self, folder: Path | None = None, device: str | None = None) -> None:
        from tpo_ray.world.verifier import verify

        self._verify = verify

    @staticmethod
    def identity() -> str:
        """What a score depends on besides the image and prompt: the verifier's, renderer's and grammar's
        code. Stored as the score's `weights`, so a changed verifier scores every image again."""
        import hashlib

        import tpo_ray.world.render as render
        import tpo_ray.world.scenes as scenes
        import tpo_ray.world.verifier as verifier

        digest = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (verifier, render, scenes)))
        return f"program:scene-verifier:{digest.hexdigest()[:16]}"

    def verdicts(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        from tpo_ray.world.scenes import parse_caption

        outside = [p for p in prompts if parse_caption(p) is None]
        if outside:
            raise ValueError(f"scorer 'scene' reads prompts of the scene grammar (eval.prompts: scenes), not "
                             f"{outside[0]!r}")
        return [self._verify(image, prompt) for image, prompt in zip(images, prompts)]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return [v.accuracy for v in self.verdicts(images, prompts)]


def scene_verdicts(index: list[dict[str, Any]], load_image) -> dict[tuple[str, str, int], Any]:
    """The verdict of every sampled image of `index` (rows with model, prompt_id, k, prompt, path);
    `load_image(path, row)` reads one (its errors name the row)."""
    scorer = SceneScore()
    return {(r["model"], r["prompt_id"], r["k"]): scorer.verdicts([load_image(r["path"], r)], [r["prompt"]])[0]
            for r in index}


def scene_accuracy(verdicts: dict[tuple[str, str, int], Any]) -> dict[str, dict]:
    """Per model: accuracy by attribute, by principle and all correct, with 95% intervals."""
    from tpo_ray.world.accuracy import accuracy_table

    by_model: dict[str, list] = {}
    for (model, _, _), verdict in sorted(verdicts.items()):
        by_model.setdefault(model, []).append(verdict)
    return {model: accuracy_table(vs) for model, vs in by_model.items()}
