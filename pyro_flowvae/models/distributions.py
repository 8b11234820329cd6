"""Distributions whose log-density over an event costs fewer full-size passes than Pyro's generic composition.

A VAE scores every pixel of every image at every step, so one elementwise pass over the (B, D) likelihood
terms is a visible share of a step. These classes are the same distributions as Pyro's
``Bernoulli(logits).to_event(1)`` and ``Normal(0, 1).expand(shape).to_event(1)``, value for value, with the
negation and the constant moved after the sum over the event.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BernoulliEvent", "StandardNormalEvent"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class BernoulliEvent(dist.Independent):
    r""":math:`\prod_{d=1}^{D} \mathrm{Bernoulli}(x_d \mid \sigma(\ell_d))` with event shape (D,):

    .. math:: \log p(x) = -\sum_d \mathrm{BCE}(\ell_d, x_d),

    ``Bernoulli(logits=l).to_event(1)`` with the minus sign applied to the (B,) sums instead of the (B, D) terms
    (the same value: negation is exact)."""

    def __init__(self, logits: Tensor, validate_args: bool | None = False) -> None:
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: object = None) -> BernoulliEvent:
        logits = self.base_dist.logits
        return BernoulliEvent(logits.expand(*batch_shape, logits.shape[-1]), validate_args=self._validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        logits = self.base_dist.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class StandardNormalEvent(dist.Independent):
    r""":math:`\mathcal{N}(0, I_L)` with batch shape ``batch_shape`` and event shape (L,):

    .. math:: \log p(z) = -\tfrac12 \sum_l z_l^2 - \tfrac{L}{2} \log 2\pi,

    ``Normal(0, 1).expand((*batch_shape, L)).to_event(1)`` without the per-entry scale, division and constant."""

    def __init__(self, loc: Tensor, scale: Tensor, batch_shape: tuple[int, ...] = ()) -> None:
        """``loc`` and ``scale`` are the (L,) zeros and ones (buffers of the prior, so they follow its device)."""
        shape = (*batch_shape, loc.shape[-1])
        self._unit = (loc, scale)
        base = dist.Normal(loc.expand(shape), scale.expand(shape), validate_args=False)
        super().__init__(base, 1, validate_args=False)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: object = None) -> StandardNormalEvent:
        return StandardNormalEvent(*self._unit, tuple(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return -0.5 * value.pow(2).sum(-1) - value.shape[-1] * HALF_LOG_2PI
