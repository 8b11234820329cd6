"""Planar flows whose parameters are read from the encoder's hidden state by one linear head."""

from __future__ import annotations

import math

import torch
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_flowvae.flows.base import INIT_SCALE, ConditionalFlow
from pyro_flowvae.flows.registry import register_flow

__all__ = ["PlanarFlow", "IDENTITY_DOT"]

#: :math:`\log(e - 1)`: the value of :math:`w^T u` at which Pyro's constraint gives :math:`\hat u = 0`.
IDENTITY_DOT = math.log(math.e - 1.0)


@register_flow("planar")
class PlanarFlow(ConditionalFlow):
    r"""K planar flows, [1] Eq. (10)-(12), with all parameters read from h by one linear head:

        :math:`(b_k, \mathbf{u}_k, \mathbf{w}_k)_{k=1}^K = \mathrm{Linear}(\mathbf{h})`,
        :math:`\mathbf{z}_k = \mathbf{z}_{k-1} + \hat{\mathbf{u}}_k\tanh(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k)`,
        :math:`\log|\det J_k| = \log|1 + \hat{\mathbf{u}}_k^T\psi_k|`,
        :math:`\psi_k = (1 - \tanh^2(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k))\,\mathbf{w}_k`,

    where :math:`\hat{\mathbf{u}} = \mathbf{u} + (m(\mathbf{w}^T\mathbf{u}) - \mathbf{w}^T\mathbf{u})
    \mathbf{w}/\|\mathbf{w}\|^2` with :math:`m(a) = -1 + \log(1 + e^a)` ([1] Appendix A.1, applied by Pyro's
    :class:`~pyro.distributions.transforms.planar.ConditionedPlanar`) guarantees
    :math:`\mathbf{w}^T\hat{\mathbf{u}} > -1`, hence invertibility, whatever the head outputs. The head has
    ``num_flows * (2 * latent_dim + 1)`` outputs laid out as K rows of :math:`(b_k, \mathbf{u}_k,
    \mathbf{w}_k)`. This replaces :func:`~pyro.distributions.transforms.conditional_planar`, which builds a
    hypernetwork per flow. There is no analytic inverse: score only samples the flow drew itself (cache).

    Initialisation: small raw u does *not* give the identity here, since :math:`\hat{\mathbf{u}}` pulls u
    towards :math:`-0.31\,\mathbf{w}/\|\mathbf{w}\|^2`. The head's bias therefore sets, per flow, a random
    unit :math:`\mathbf{w}_k`, :math:`\mathbf{u}_k = \log(e-1)\,\mathbf{w}_k` (so
    :math:`\mathbf{w}^T\mathbf{u} = \log(e-1)` and :math:`\hat{\mathbf{u}} = 0`) and :math:`b_k = 0`, and its
    weights are PyTorch's default scaled by ``1e-2``: the flow starts near the identity.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """

    has_inverse = False
    flow_name = "planar"

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.head = nn.Linear(context_dim, num_flows * (2 * latent_dim + 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise the head near the identity flow (see the class docstring)."""
        self.head.reset_parameters()
        self.head.weight.mul_(INIT_SCALE)
        bias = self.head.bias.view(self.num_flows, 2 * self.latent_dim + 1)
        w = torch.randn(self.num_flows, self.latent_dim, dtype=bias.dtype, device=bias.device)
        w = w / w.norm(dim=-1, keepdim=True)
        bias[:, 0] = 0.0
        bias[:, 1 : 1 + self.latent_dim] = IDENTITY_DOT * w
        bias[:, 1 + self.latent_dim :] = w

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        L = self.latent_dim
        params = self.head(context).unflatten(-1, (self.num_flows, 2 * L + 1))
        b, u, w = params.split([1, L, L], dim=-1)  # (*batch, K, 1), (*batch, K, L), (*batch, K, L)
        return [ConditionedPlanar(params=(b[..., k, :], u[..., k, :], w[..., k, :])) for k in range(self.num_flows)]
