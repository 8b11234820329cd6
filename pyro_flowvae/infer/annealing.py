"""KL warm-up: scale the latent sites' log-densities (the "temperature" of the flow literature)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyro.poutine.messenger import Messenger

__all__ = ["ScaleLatents", "kl_weight"]


class ScaleLatents(Messenger):
    r"""Multiply the log-density of the latent (unobserved) sample sites by ``scale``.

    Applied to both model and guide, the ELBO becomes

    .. math:: \mathbb{E}_q[\log p(x \mid z)] + \beta\, \mathbb{E}_q[\log p(z) - \log q(z \mid x)],

    the warm-up of Bowman et al. (2016) and Sønderby et al. (2016), and the inverse temperature of
    Rezende & Mohamed (2015, section 6). Observed sites are untouched, unlike ``poutine.scale``.
    ``sites`` restricts it to named sites (default: every latent site).
    """

    def __init__(self, scale: float, sites: Iterable[str] | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.sites = None if sites is None else frozenset(sites)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the KL weight must be > 0 (Pyro's scales are positive), got {value}")
        self._scale = value

    def _process_message(self, msg: dict[str, Any]) -> None:
        latent = msg["type"] == "sample" and not msg["is_observed"]
        if latent and (self.sites is None or msg["name"] in self.sites):
            msg["scale"] = self.scale * msg["scale"]


def kl_weight(step: int, warmup_steps: int, start: float, final: float = 1.0) -> float:
    """Linear warm-up from ``start * final`` at step 0 to ``final`` at ``warmup_steps`` (``final`` throughout when
    ``warmup_steps`` is 0). ``final`` is ``train.beta``: 1 for the ELBO, another value for a beta-weighted one."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return final * (start + (1.0 - start) * step / warmup_steps)
