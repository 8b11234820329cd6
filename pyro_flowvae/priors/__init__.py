"""Priors p(z) over the latent site; the GP priors over time plug in here too."""

from pyro_flowvae.priors.standard_normal import StandardNormalPrior, build_prior

__all__ = ["StandardNormalPrior", "build_prior"]
