"""Generative models p(x, z) written as Pyro programs, and the modules that hold a model with its guide: the image
VAE with a flow guide (:class:`FlowVAE`) and the sequence VAE with a GP prior (:class:`GPVAE`)."""

from pyro_flowvae.models.gpvae import GPVAE, Imputation, SequenceVAEModel
from pyro_flowvae.models.vae import FlowVAE, VAEModel

__all__ = ["SequenceVAEModel", "VAEModel", "FlowVAE", "GPVAE", "Imputation"]
