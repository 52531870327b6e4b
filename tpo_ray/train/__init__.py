"""Training: the step, the loop, optimisation, checkpoints, and the Ray Train glue."""
