"""Pretraining: the objectives, the Lightning task, a run from a composed config, one-file consolidation."""
