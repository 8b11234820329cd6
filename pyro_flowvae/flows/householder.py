"""Householder flows whose reflection vectors are read from the encoder's hidden state by one linear head."""

from __future__ import annotations

import torch
from pyro.distributions.transforms.householder import ConditionedHouseholder
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_flowvae.flows.base import INIT_SCALE, ConditionalFlow
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
    full covariance of the form :math:`U\,\mathrm{diag}(\sigma^2)\,U^T` (any U for K >= L). On the standardized
    noise :math:`\epsilon_0 \sim \mathcal{N}(0, I)` it would change nothing (:math:`U\epsilon_0` is
    :math:`\mathcal{N}(0, I)` again), so it is ``orthogonal`` and the guide applies it to
    :math:`z_0 = \mu + \sigma \odot \epsilon_0`, as [1] does, whatever ``guide.standardize`` says. All K
    reflections live in one :class:`~pyro.distributions.transforms.householder.ConditionedHouseholder`
    (``u_unnormed`` of shape ``(*batch, K, L)``, applied in the order k = 1..K), so ``forward`` returns a
    single transform. Its inverse (the reflections in reverse order) is exact.

    Initialisation: one reflection is never close to the identity, but two with the same vector are the
    identity, :math:`H H = I`. The head's bias is drawn from N(0, 1) for reflections 1, 3, 5, ... and copied to
    2, 4, 6, ... (which keeps :math:`\|\mathbf{v}_k\|` away from 0), and its weights are PyTorch's default
    scaled by ``1e-2``: for even K the flow starts near the identity, so a guide warm-started from a mean-field
    encoder starts at its ELBO. For odd K the last reflection has no partner and the flow starts at a reflection.

    [1] Jakub M. Tomczak, Max Welling. Improving Variational Auto-Encoders using Householder Flow. 2016.
    [arXiv:1611.09630]
    """

    has_inverse = True
    flow_name = "householder"
    orthogonal = True

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.head = nn.Linear(context_dim, num_flows * latent_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise the head near the identity (see the class docstring)."""
        self.head.reset_parameters()
        self.head.weight.mul_(INIT_SCALE)
        bias = self.head.bias.view(self.num_flows, self.latent_dim)
        bias.normal_()
        pairs = self.num_flows // 2 * 2
        bias[1:pairs:2] = bias[0:pairs:2]  # H_{2j} = H_{2j-1}: each pair is the identity

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        u_unnormed = self.head(context).unflatten(-1, (self.num_flows, self.latent_dim))
        return [ConditionedHouseholder(u_unnormed)]
