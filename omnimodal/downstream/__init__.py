"""Downstream: heads, landmark data, fine-tuning task and run, predictions, baselines, per-person forecasts."""
