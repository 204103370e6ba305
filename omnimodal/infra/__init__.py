"""Infrastructure: safe checkpoint reading, distributed strategies, optimizer, trainer, SLURM, Hydra options."""
