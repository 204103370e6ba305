"""Infrastructure: reading checkpoints safely (more to come: strategies, SLURM)."""
