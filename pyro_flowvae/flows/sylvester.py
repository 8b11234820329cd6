r"""Sylvester normalizing flows (van den Berg et al. 2018), amortized from the encoder's hidden state.

One layer is :math:`\mathbf{z}' = \mathbf{z} + Q R\,\tanh(\tilde R Q^T \mathbf{z} + \mathbf{b})` with
:math:`Q \in \mathbb{R}^{L \times M}` orthonormal columns and :math:`R, \tilde R` upper triangular
:math:`M \times M`. By Sylvester's determinant identity,

.. math:: \det J = \det\big(I_M + \mathrm{diag}(h'(\tilde R Q^T \mathbf{z} + \mathbf{b}))\,\tilde R R\big)
          = \prod_{m=1}^M \big(1 + h'(a_m)\,R_{mm}\tilde R_{mm}\big),

since :math:`\tilde R R` is upper triangular. With :math:`R_{mm}, \tilde R_{mm} = 0.999\tanh(\cdot) \in (-1, 1)` and
:math:`h' = \tanh' \in (0, 1]` every factor is positive: every layer is invertible. The three families differ
in Q ([1] section 3): **orthogonal**, M columns read from h and orthonormalised; **Householder**, a product
of H reflections read from h (M = L); **triangular**, Q alternating between the identity and the reversal
of the coordinates (M = L), a flow of :math:`O(L^2)` parameters per layer.

All parameters are read from h by linear heads as in [1]: a full :math:`M \times M` matrix per layer whose
strict upper triangle is :math:`R`'s and whose strict lower triangle, transposed, is :math:`\tilde R`'s,
the two diagonals through tanh, the bias b and Q's raw parameters. There is no analytic inverse: the layer
caches its last pair, so score only samples it drew itself (inside the trace, as SVI does).

[1] Rianne van den Berg, Leonard Hasenclever, Jakub M. Tomczak, Max Welling. Sylvester Normalizing Flows for
Variational Inference. UAI 2018. [arXiv:1803.05649]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows.base import INIT_SCALE, ConditionalFlow, check_size
from pyro_flowvae.flows.registry import register_flow

__all__ = [
    "SylvesterTransform",
    "SylvesterFlow",
    "OrthogonalSylvesterFlow",
    "HouseholderSylvesterFlow",
    "TriangularSylvesterFlow",
    "householder_product",
]

#: The diagonals of R and R~ are this bound times a tanh: their product stays in (-1, 1) also where tanh rounds to
#: +-1 in floating point, so every factor 1 + h' R_mm R~_mm of det J stays above 0.002.
DIAGONAL_BOUND = 1.0 - 1e-3

#: tanh of this is the initial inner diagonal :math:`\tilde R_{mm}`, so the units start at unit scale.
INNER_DIAGONAL_INIT = math.atanh(0.75)


class SylvesterTransform(Transform):
    r"""One Sylvester layer :math:`\mathbf{z}' = \mathbf{z} + B\tanh(A\mathbf{z} + \mathbf{b})` with
    :math:`B = QR` and :math:`A = \tilde R Q^T`, :math:`\log|\det J| = \sum_m \log(1 + \tanh'(a_m)\,d_m)` where
    :math:`d_m = R_{mm}\tilde R_{mm}` (see the module docstring).

    ``params = (q, r, r_tilde, b)`` of shapes ``(*batch, L, M)``, ``(*batch, M, M)``, ``(*batch, M, M)``,
    ``(*batch, M)``; z has shape ``(*sample, *batch, L)``. The caller guarantees Q's orthonormal columns, the
    triangular R's and :math:`d_m > -1`. No analytic inverse: the transform caches its last pair.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, params: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
        super().__init__(cache_size=1)
        q, r, r_tilde, b = params
        self.outer = q @ r  # (*batch, L, M)
        self.inner = r_tilde @ q.transpose(-1, -2)  # (*batch, M, L)
        self.bias = b
        self.diag = r.diagonal(dim1=-2, dim2=-1) * r_tilde.diagonal(dim1=-2, dim2=-1)  # (*batch, M), > -1
        self._cached_log_det: Tensor | None = None

    def pre_activations(self, z: Tensor) -> Tensor:
        """:math:`\\tilde R Q^T \\mathbf{z} + \\mathbf{b}`, shape ``(*sample, *batch, M)``."""
        return (self.inner @ z.unsqueeze(-1)).squeeze(-1) + self.bias

    def slopes(self, z: Tensor) -> Tensor:
        """:math:`\\tanh'` of every unit at z, in (0, 1]."""
        return 1.0 - torch.tanh(self.pre_activations(z)).pow(2)

    def _call(self, z: Tensor) -> Tensor:
        act = torch.tanh(self.pre_activations(z))
        self._cached_log_det = torch.log1p((1.0 - act * act) * self.diag).sum(-1)
        return z + (self.outer @ act.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        raise KeyError(
            "SylvesterTransform expected to find key in intermediates cache but didn't: a Sylvester flow has no "
            "analytic inverse, so score only the samples it drew itself (inside the same trace)"
        )

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        x_old, y_old = self._cached_x_y
        if x is not x_old or y is not y_old:
            self(x)
        assert self._cached_log_det is not None
        return self._cached_log_det


def householder_product(v: Tensor) -> Tensor:
    r""":math:`Q = H_1 H_2 \cdots H_H`, :math:`H_j = I - 2\mathbf{v}_j\mathbf{v}_j^T/\|\mathbf{v}_j\|^2`, for v of
    shape ``(*batch, H, L)``; returns ``(*batch, L, L)``, orthogonal for any nonzero :math:`\mathbf{v}_j`."""
    L = v.size(-1)
    q = torch.eye(L, dtype=v.dtype, device=v.device).expand(*v.shape[:-2], L, L)
    for vj in (v / v.norm(dim=-1, keepdim=True)).unbind(-2):
        q = q - 2.0 * (q @ vj.unsqueeze(-1)) * vj.unsqueeze(-2)  # Q H_j = Q - 2 (Q v) v^T
    return q


class SylvesterFlow(ConditionalFlow):
    r"""K Sylvester layers [1] amortized from h; subclasses say how Q is made (:meth:`orthogonal_matrices`).

    Heads: ``r_head`` gives K full :math:`M \times M` matrices (strict upper triangle: R; strict lower
    triangle transposed: :math:`\tilde R`), ``diag_head`` the 2 K M raw diagonals (through tanh), ``b_head`` the
    K M biases. Initialisation: every head's weights are PyTorch's default times ``1e-2``; the biases give
    :math:`R \approx 0` and :math:`\tilde R \approx \tanh(\mathrm{atanh}(0.75))\,I`, so each layer starts at the
    identity (:math:`QR \approx 0`, log-det about 0) with its units at unit scale on standardized inputs,
    where the gradient that reaches R is of order one.
    """

    has_inverse = False

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int, num_units: int) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.num_units = num_units
        K, M = num_flows, num_units
        # the strict triangles of R and R~ (none when M = 1)
        self.r_head = nn.Linear(context_dim, K * M * M) if M > 1 else None
        self.diag_head = nn.Linear(context_dim, 2 * K * M)
        self.b_head = nn.Linear(context_dim, K * M)
        self.register_buffer("upper", torch.triu(torch.ones(M, M), diagonal=1), persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise the heads at the identity (see the class docstring)."""
        for head in self.heads():
            head.reset_parameters()
            head.weight.mul_(INIT_SCALE)
            head.bias.zero_()
        self.diag_head.bias.view(self.num_flows, 2, self.num_units)[:, 1] = INNER_DIAGONAL_INIT

    def heads(self) -> list[nn.Linear]:
        return [head for head in (self.r_head, self.diag_head, self.b_head) if head is not None]

    def orthogonal_matrices(self, context: Tensor) -> list[Tensor]:
        """K matrices Q of shape ``(*batch, L, M)`` with orthonormal columns."""
        raise NotImplementedError

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        K, M = self.num_flows, self.num_units
        diag = DIAGONAL_BOUND * torch.tanh(self.diag_head(context)).unflatten(-1, (K, 2, M))
        r = torch.diag_embed(diag[..., 0, :])
        r_tilde = torch.diag_embed(diag[..., 1, :])
        if self.r_head is not None:
            full = self.r_head(context).unflatten(-1, (K, M, M))
            r = r + full * self.upper
            r_tilde = r_tilde + full.transpose(-1, -2) * self.upper
        b = self.b_head(context).unflatten(-1, (K, M))
        qs = self.orthogonal_matrices(context)
        return [SylvesterTransform((qs[k], r[..., k, :, :], r_tilde[..., k, :, :], b[..., k, :])) for k in range(K)]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_units={self.num_units}"


@register_flow("sylvester_orthogonal")
class OrthogonalSylvesterFlow(SylvesterFlow):
    r"""Orthogonal Sylvester flow (O-SNF [1]): Q has M orthonormal columns read from h.

    The head gives a raw :math:`L \times M` matrix per layer; Q is the Q factor of its reduced QR
    decomposition, orthonormal to round-off for any full-rank input. (van den Berg et al. orthonormalise by
    the iteration :math:`Q \leftarrow Q(I + (I - Q^TQ)/2)`, which converges only after a number of steps that
    grows as the input nears rank deficiency; QR has no such case and needs no convergence test.) The
    head's bias is drawn from N(0, 1), so Q starts as one random orthonormal frame for every x.

    :param num_ortho_vectors: M, between 1 and ``latent_dim`` (default: ``latent_dim``).
    """

    flow_name = "sylvester_orthogonal"

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int, *, num_ortho_vectors: int | None = None):
        check_size(latent_dim, "model.latent_dim", 1)
        units = latent_dim if num_ortho_vectors is None else num_ortho_vectors
        check_size(units, "guide.options.sylvester_orthogonal.num_ortho_vectors", 1)
        if units > latent_dim:
            raise ConfigError(
                f"guide.options.sylvester_orthogonal.num_ortho_vectors must be at most model.latent_dim "
                f"({latent_dim}), got {units}"
            )
        super().__init__(latent_dim, context_dim, num_flows, units)
        self.q_head = nn.Linear(context_dim, num_flows * latent_dim * units)
        self.reset_parameters()

    def heads(self) -> list[nn.Linear]:
        return [*super().heads(), self.q_head]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.q_head.bias.normal_()

    def orthogonal_matrices(self, context: Tensor) -> list[Tensor]:
        raw = self.q_head(context).unflatten(-1, (self.num_flows, self.latent_dim, self.num_units))
        q, _ = torch.linalg.qr(raw, mode="reduced")
        return list(q.unbind(-3))


@register_flow("sylvester_householder")
class HouseholderSylvesterFlow(SylvesterFlow):
    r"""Householder Sylvester flow (H-SNF [1]): Q = :math:`H_1 \cdots H_H`, H reflections read from h (M = L).

    :param num_householder: H >= 1 reflections per layer (default 8, as in [1]'s MNIST runs).
    """

    flow_name = "sylvester_householder"

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int, *, num_householder: int = 8):
        self.num_householder = check_size(num_householder, "guide.options.sylvester_householder.num_householder", 1)
        super().__init__(latent_dim, context_dim, num_flows, latent_dim)
        self.v_head = nn.Linear(context_dim, num_flows * num_householder * latent_dim)
        self.reset_parameters()

    def heads(self) -> list[nn.Linear]:
        return [*super().heads(), self.v_head]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.v_head.bias.normal_()  # a reflection is never near the identity: keep the vectors away from 0

    def orthogonal_matrices(self, context: Tensor) -> list[Tensor]:
        v = self.v_head(context).unflatten(-1, (self.num_flows, self.num_householder, self.latent_dim))
        return list(householder_product(v).unbind(-3))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_householder={self.num_householder}"


@register_flow("sylvester_triangular")
class TriangularSylvesterFlow(SylvesterFlow):
    r"""Triangular Sylvester flow (T-SNF [1]): Q is the identity in odd layers and the reversal of the
    coordinates in even ones (M = L), so the layers alternate between upper and lower triangular maps."""

    flow_name = "sylvester_triangular"
    permutations: Tensor

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__(latent_dim, context_dim, num_flows, latent_dim)
        eye = torch.eye(latent_dim)
        self.register_buffer(
            "permutations",
            torch.stack([eye if k % 2 == 0 else eye.flip(0) for k in range(num_flows)]),
            persistent=False,
        )
        self.reset_parameters()

    def orthogonal_matrices(self, context: Tensor) -> list[Tensor]:
        return list(self.permutations.to(context.dtype).unbind(0))
