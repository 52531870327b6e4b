"""Hyper-parameter sweeps with Ray Tune: every trial a full Ray Train run (see `sweep.py`)."""
