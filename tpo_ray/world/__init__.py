"""The scene world: a small text-to-image task on which the real code visibly learns.

Captions state the count, size, color, shape, position, background and time of day of a rendered scene
(`scenes`), the renderer draws exactly that (`render`), and the verifier reads each attribute back from
any image (`verifier`), so what a model draws can be checked by a program, as GenEval does for real models
with an object detector. `model` builds the SD1.5-layout base model of this world and `pretrain` trains it;
its shipped weights live in `weights/`. The scorer registry and the demo use the world through thin
adapters (`tpo_ray/eval/scorers/scene.py`, `tpo_ray/demo.py`).
"""
