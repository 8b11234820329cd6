"""Evaluation: importance-sampled log-likelihood (importance.py), the test metrics of images (images.py) and of
sequences (sequences.py: imputation and forecasts), their metrics (metrics.py) and the baselines they are set
against (baselines.py)."""
