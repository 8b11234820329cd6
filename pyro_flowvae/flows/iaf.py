"""Inverse autoregressive flows conditioned on the encoder's hidden state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows.base import INIT_SCALE, AutoregressiveFlow
from pyro_flowvae.flows.registry import register_flow

__all__ = ["IAFFlow"]


@register_flow("iaf")
class IAFFlow(AutoregressiveFlow):
    r"""K inverse autoregressive flow blocks [1] conditioned on h, with z reversed between blocks.

    Block k computes :math:`(\mathbf{m}, \mathbf{s}) = \mathrm{MADE}_k(\mathbf{z}_{k-1}, \mathbf{h})`, where
    :math:`m_i, s_i` depend on :math:`z_{<i}` and h only, and with ``stable=True`` ([1] Eq. (14), Pyro's
    :class:`~pyro.distributions.transforms.AffineAutoregressive` with ``stable=True``)

        :math:`\boldsymbol\sigma = \mathrm{sigmoid}(\mathbf{s} + 2)`,
        :math:`\mathbf{z}_k = \boldsymbol\sigma\odot\mathbf{z}_{k-1} + (1-\boldsymbol\sigma)\odot\mathbf{m}`,
        :math:`\log|\det J_k| = \sum_i \log\sigma_i`,

    or with ``stable=False`` (the default, [1] Eq. (10)) :math:`\mathbf{z}_k = \exp(\mathbf{s})\odot\mathbf{z}_{k-1} +
    \mathbf{m}`, :math:`\log|\det J_k| = \sum_i s_i`, with s clamped to [-5, 3]. The inverse exists for any
    y and costs L network passes per block. The reversals are those of :class:`AutoregressiveFlow`.

    :param hidden_dims: widths of the MADE hidden layers, each >= ``latent_dim``; default two layers of
        ``max(2 * latent_dim, 64)``.
    :param stable: the gated update of [1] Eq. (14) or the affine one of Eq. (10) (default).

    Initialisation: the MADE output layers start at 1e-2 times PyTorch's default weights with zero bias, so
    :math:`\mathbf{m} \approx 0`, :math:`\mathbf{s} \approx 0`: each block starts near the identity
    (``stable=False``) or near :math:`\mathbf{z}_k = \mathrm{sigmoid}(2)\,\mathbf{z}_{k-1} \approx
    0.88\,\mathbf{z}_{k-1}`, [1]'s forget-gate bias of +2 (``stable=True``). The gated start costs
    :math:`\log 0.88 = -0.13` nats per dimension and block (-10.2 nats for two blocks on 40 dimensions, an
    ELBO 4.2 nats below mean-field at step 0), which is why the affine update is the default.

    [1] Diederik P. Kingma, Tim Salimans, Rafal Jozefowicz, Xi Chen, Ilya Sutskever, Max Welling. Improved
    Variational Inference with Inverse Autoregressive Flow. NeurIPS 2016. [arXiv:1606.04934]
    """

    flow_name = "iaf"

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        *,
        hidden_dims: Sequence[int] | None = None,
        stable: bool = False,
    ) -> None:
        if not isinstance(stable, bool):
            raise ConfigError(f"guide.options.iaf.stable must be true or false, got {stable!r}")
        self.stable = stable
        super().__init__(latent_dim, context_dim, num_flows, param_dims=[1, 1], hidden_dims=hidden_dims)

    def make_block(self, arn: ConditionalAutoRegressiveNN) -> ConditionalAffineAutoregressive:
        with torch.no_grad():
            arn.layers[-1].weight.mul_(INIT_SCALE)
            arn.layers[-1].bias.zero_()
        return ConditionalAffineAutoregressive(arn, stable=self.stable)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stable={self.stable}"
