"""The standard-normal prior p(z) = N(0, I)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.models.distributions import StandardNormalEvent

__all__ = ["StandardNormalPrior", "StandardNormalSequencePrior", "build_prior"]


class StandardNormalPrior(nn.Module):
    r""":math:`p(z) = \mathcal{N}(0, I_L)`, returned with event shape (L,).

    A prior is a module whose ``forward(batch_shape)`` returns a distribution with that batch shape, so a
    learned or structured prior (GP over time) can take its place. Its tensors are buffers, so moving the
    model with ``.to(device)`` moves them.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_shape: torch.Size | tuple[int, ...]) -> dist.TorchDistribution:
        return StandardNormalEvent(self.loc, self.scale, tuple(batch_shape))


def build_prior(name: str, latent_dim: int) -> nn.Module:
    """The prior registered under ``name``."""
    if name != "standard_normal":
        raise ConfigError(f"unknown model.prior {name!r}; choose one of: standard_normal")
    return StandardNormalPrior(latent_dim)


class StandardNormalSequencePrior(nn.Module):
    r""":math:`p(z) = \prod_{l,t} \mathcal{N}(z_{lt} \mid 0, 1)` over a latent trajectory z in
    :math:`\mathbb{R}^{L \times T}`: the frame-wise VAE's prior, which ignores time (the GP-VAE's baseline).

    ``forward(times)`` takes time stamps of shape (B, T) (or (T,)) and returns a distribution with batch
    shape (B,) and event shape (L, T), the same interface as :class:`~pyro_flowvae.priors.GPPrior`.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, times: torch.Tensor) -> dist.TorchDistribution:
        shape = (*times.shape[:-1], self.latent_dim, times.shape[-1])
        return dist.Normal(self.loc, self.scale).expand(shape).to_event(2)
