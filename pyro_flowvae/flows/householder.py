"""Householder flows whose reflection vectors are read from the encoder's hidden state by one linear head."""

from __future__ import annotations

import torch
from pyro.distributions.transforms.householder import ConditionedHouseholder
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_flowvae.flows.base import ConditionalFlow
from pyro_flowvae.flows.registry import register_flow

__all__ = ["HouseholderFlow"]


@register_flow("householder")
class HouseholderFlow(ConditionalFlow):
    r"""K Householder reflections [1] with the reflection vectors read from h by one linear head:

        :math:`(\mathbf{v}_k)_{k=1}^K = \mathrm{Linear}(\mathbf{h})`,
        :math:`\mathbf{z}_K = H_K \cdots H_1 \mathbf{z}_0`,
        :math:`H_k = I - 2\,\mathbf{v}_k\mathbf{v}_k^T / \|\mathbf{v}_k\|^2`,
        :math:`\log|\det J| = 0`.

    The flow is volume preserving and orthogonal: with a diagonal Gaussian base it gives a Gaussian with a
    full covariance of the form :math:`U\,\mathrm{diag}(\sigma^2)\,U^T` (any U for K >= L). All K
    reflections live in one :class:`~pyro.distributions.transforms.householder.ConditionedHouseholder`
    (``u_unnormed`` of shape ``(*batch, K, L)``, applied in the order k = 1..K), so ``forward`` returns a
    single transform. Its inverse (the reflections in reverse order) is exact.

    Initialisation: a reflection is never close to the identity, so there is nothing to gain from small
    weights; the head keeps PyTorch's default weights and draws its bias from N(0, 1), which keeps
    :math:`\|\mathbf{v}_k\|` away from 0.

    [1] Jakub M. Tomczak, Max Welling. Improving Variational Auto-Encoders using Householder Flow. 2016.
    [arXiv:1611.09630]
    """

    has_inverse = True
    flow_name = "householder"

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.head = nn.Linear(context_dim, num_flows * latent_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise the head (see the class docstring)."""
        self.head.reset_parameters()
        self.head.bias.normal_()

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        u_unnormed = self.head(context).unflatten(-1, (self.num_flows, self.latent_dim))
        return [ConditionedHouseholder(u_unnormed)]
