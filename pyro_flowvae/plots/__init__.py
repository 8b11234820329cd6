"""Plots of a run: learning curves and image grids (images.py), imputation strips and forecasts (sequences.py)."""
