"""Runtimes: load an artifact, run one padded batch, return a numpy array; nothing else."""
