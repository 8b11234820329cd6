"""Priors p(z) over the latent site; the GP priors over time plug in here too."""

from pyro_flowvae.priors.gp import GPPrior
from pyro_flowvae.priors.kernels import (
    KERNELS,
    build_kernel,
    evaluate_kernel,
    kernel_hyperparameters,
    parse_kernel_expr,
)
from pyro_flowvae.priors.standard_normal import StandardNormalPrior, StandardNormalSequencePrior, build_prior

#: ``model.prior``: N(0, I) (images; the frame-wise sequence VAE), or a GP over time per latent channel (sequences)
PRIORS = {"standard_normal": StandardNormalPrior, "gp": GPPrior}

__all__ = [
    "PRIORS",
    "GPPrior",
    "KERNELS",
    "StandardNormalPrior",
    "StandardNormalSequencePrior",
    "build_kernel",
    "build_prior",
    "evaluate_kernel",
    "kernel_hyperparameters",
    "parse_kernel_expr",
]
