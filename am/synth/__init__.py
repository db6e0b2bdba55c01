"""Synthetic post-MALDI microscopy with exact masks and mark ids (training data, demos, tests)."""
