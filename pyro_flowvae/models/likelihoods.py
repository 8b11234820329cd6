"""Observation models p(x | z) built from the decoder's output, with the data checks each one needs."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.models.distributions import BernoulliEvent

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LIKELIHOODS",
    "build_likelihood",
]


class Likelihood(nn.Module):
    """Maps decoder outputs of shape (..., D) to a distribution with event shape (D,)."""

    #: name used in configs and error messages
    name: str = ""

    def forward(self, decoded: Tensor) -> dist.TorchDistribution:
        return self.elementwise(decoded).to_event(1)

    def elementwise(self, decoded: Tensor) -> dist.TorchDistribution:
        """The same distribution with no event dims (one factor per value), for masking single entries."""
        raise NotImplementedError

    def mean(self, decoded: Tensor) -> Tensor:
        """E[x | z], for reconstructions and sample grids."""
        return self.forward(decoded).mean


class BernoulliLikelihood(Likelihood):
    r""":math:`p(x \mid z) = \prod_d \mathrm{Bernoulli}(x_d \mid \sigma(f_\theta(z)_d))`, for binary data."""

    name = "bernoulli"

    def forward(self, decoded: Tensor) -> dist.TorchDistribution:
        # the negation after the sum over pixels: one full-size pass less per step than Bernoulli.to_event(1)
        return BernoulliEvent(decoded)

    def elementwise(self, decoded: Tensor) -> dist.TorchDistribution:
        # validate_args=False: the data are checked once when loaded (check_data); a per-step support
        # check would cost a host-device sync on CUDA every step.
        return dist.Bernoulli(logits=decoded, validate_args=False)

    def mean(self, decoded: Tensor) -> Tensor:
        return torch.sigmoid(decoded)


class ContinuousBernoulliLikelihood(Likelihood):
    r""":math:`p(x \mid z) = \prod_d \mathcal{CB}(x_d \mid \lambda_d)` for data in [0, 1] (grey images).

    The continuous Bernoulli is the properly normalised density behind "BCE on grey pixels".
    [1] Gabriel Loaiza-Ganem, John P. Cunningham. The continuous Bernoulli: fixing a pervasive error in
    variational autoencoders. NeurIPS 2019. [arXiv:1907.06845]
    """

    name = "continuous_bernoulli"

    def elementwise(self, decoded: Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=decoded, validate_args=False)


class GaussianLikelihood(Likelihood):
    r""":math:`p(x \mid z) = \mathcal{N}(x \mid f_\theta(z), \mathrm{diag}(\sigma^2))` with a learned
    per-dimension scale :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`, for real-valued data."""

    name = "gaussian"

    def __init__(self, data_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.raw_scale = nn.Parameter(torch.zeros(data_dim))
        self.min_scale = min_scale

    def elementwise(self, decoded: Tensor) -> dist.TorchDistribution:
        scale = F.softplus(self.raw_scale) + self.min_scale
        return dist.Normal(decoded, scale, validate_args=False)

    def mean(self, decoded: Tensor) -> Tensor:
        return decoded


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (BernoulliLikelihood, ContinuousBernoulliLikelihood, GaussianLikelihood)
}


def build_likelihood(name: str, data_dim: int) -> Likelihood:
    """The likelihood registered under ``name``."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown model.likelihood {name!r}; choose one of: {', '.join(LIKELIHOODS)}")
    cls = LIKELIHOODS[name]
    return cls(data_dim) if cls is GaussianLikelihood else cls()
