"""Experiments beyond VAEs: flows as guides for the 2-D energies of Rezende & Mohamed (2015) (energy.py)."""
