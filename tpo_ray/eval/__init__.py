"""Evaluation: implicit preference, sampling, reward scorers, win rates, report."""
