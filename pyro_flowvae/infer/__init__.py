"""Inference: SVI training, KL warm-up, checkpoints, importance-sampled log-likelihood, evaluation."""
