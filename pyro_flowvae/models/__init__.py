"""Generative models p(x, z) written as Pyro programs."""

from pyro_flowvae.models.gpvae import SequenceVAEModel
from pyro_flowvae.models.vae import VAEModel

__all__ = ["SequenceVAEModel", "VAEModel"]
