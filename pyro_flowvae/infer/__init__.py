"""Inference: the training loop (trainer.py), the ELBO as a module (svi.py), optimizers and schedules (optim.py),
KL warm-up (annealing.py), checkpoints, and data parallelism under torchrun (distributed.py)."""
