"""Planar flows with parameters read from the encoder's hidden state by one linear head, fused into one transform."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from torch.nn import functional as F

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows.base import INIT_SCALE, ConditionalFlow
from pyro_flowvae.flows.registry import register_flow

__all__ = ["PlanarFlow", "FusedPlanar", "planar_layers", "IDENTITY_DOT"]

#: :math:`\log(e - 1)`: the value of :math:`w^T u` at which the constraint gives :math:`\hat u = 0`.
IDENTITY_DOT = math.log(math.e - 1.0)


class FusedPlanar(Transform):
    r"""K planar flows [1] applied in one transform: :math:`\mathbf{z}_K = f_K \circ \dots \circ f_1(\mathbf{z}_0)`,

        :math:`\mathbf{z}_k = \mathbf{z}_{k-1} + \hat{\mathbf{u}}_k\tanh(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k)`,
        :math:`\log|\det J| = \sum_{k=1}^K \log|1 + (1 - \tanh^2(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k))\,
        \mathbf{w}_k^T\hat{\mathbf{u}}_k|`,

    with :math:`\hat{\mathbf{u}} = \mathbf{u} + (m(\mathbf{w}^T\mathbf{u}) - \mathbf{w}^T\mathbf{u})
    \mathbf{w}/\|\mathbf{w}\|^2`, :math:`m(a) = -1 + \log(1 + e^a)` ([1] Appendix A.1), so that
    :math:`\mathbf{w}_k^T\hat{\mathbf{u}}_k = m(\mathbf{w}_k^T\mathbf{u}_k) > -1` and every layer is invertible
    whatever the raw parameters are.

    It computes exactly what K of Pyro's :class:`~pyro.distributions.transforms.planar.ConditionedPlanar`
    in a row compute (layer k of this transform is ``ConditionedPlanar((b[..., k, :], u[..., k, :],
    w[..., k, :]))``), with the same caching semantics, but as one :class:`~torch.distributions.Transform`:
    :math:`\hat{\mathbf{u}}_k` and :math:`\mathbf{w}_k^T\hat{\mathbf{u}}_k` are computed for all K layers at
    once (by autograd-tracked tensor operations), and the K layers themselves run in one
    :class:`torch.autograd.Function` (:func:`planar_layers`) with a hand-written backward pass. This saves the
    per-layer Python, Transform and autograd-graph overhead, which dominates the cost of small planar layers.
    The backward pass is first-order only: asking for second derivatives through it raises an error.

    :math:`\mathbf{z}` has shape ``(*sample, *batch, L)``; the parameters ``(b, u, w)`` have shapes
    ``(*batch, K, 1)``, ``(*batch, K, L)`` and ``(*batch, K, L)``; :meth:`log_abs_det_jacobian` has shape
    ``(*sample, *batch)``. There is no analytic inverse: the transform caches its last ``(x, y)`` pair and
    the log-determinant computed with it, so a :class:`~pyro.distributions.TransformedDistribution` can score
    the samples it drew itself (and only those).

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, params: tuple[Tensor, Tensor, Tensor], centered: bool = False) -> None:
        super().__init__(cache_size=1)
        bias, u, w = params
        assert bias.shape[-1:] == (1,) and u.shape == w.shape and bias.shape[:-1] == u.shape[:-1], (
            f"FusedPlanar expects (b, u, w) of shapes (*batch, K, 1), (*batch, K, L), (*batch, K, L); got "
            f"{tuple(bias.shape)}, {tuple(u.shape)}, {tuple(w.shape)}"
        )
        self._params = params
        self.centered = centered
        self._cached_logDetJ: Tensor | None = None

    @property
    def num_layers(self) -> int:
        """The number K of planar layers."""
        return self._params[1].size(-2)

    @staticmethod
    def u_hat(u: Tensor, w: Tensor) -> Tensor:
        r""":math:`\hat{\mathbf{u}}` of [1] Appendix A.1 for every layer at once (any shape ``(..., L)``)."""
        alpha = (u * w).sum(-1, keepdim=True)
        return u + (F.softplus(alpha) - 1.0 - alpha) * w / w.pow(2).sum(-1, keepdim=True)

    def layer_bias(self, u_hat: Tensor) -> Tensor:
        r"""The bias each layer applies, shape ``(*batch, K)``: :math:`b_k`, or with ``centered``
        :math:`b_k - \mathbf{w}_k^T\mathbf{c}_{k-1}`, where :math:`\mathbf{c}_k = \mathbf{c}_{k-1} +
        \hat{\mathbf{u}}_k\tanh(b_k)`, :math:`\mathbf{c}_0 = 0`, is where the layers take the point 0 (the
        centre of standardized noise). Layer k's pre-activation is then :math:`\mathbf{w}_k^T(\mathbf{z}_{k-1} -
        \mathbf{c}_{k-1}) + b_k`: relative to where the earlier layers moved the centre, so their shifts do not
        push it into a tail of tanh. A reparametrisation of the same planar family (c depends on x, not on z)."""
        bias, _, w = self._params
        bias = bias.squeeze(-1)
        if not self.centered:
            return bias
        centre = torch.zeros_like(w[..., 0, :])
        biases = []
        for k in range(w.size(-2)):
            biases.append(bias[..., k] - (w[..., k, :] * centre).sum(-1))
            centre = centre + u_hat[..., k, :] * torch.tanh(bias[..., k : k + 1])
        return torch.stack(biases, dim=-1)

    def _call(self, x: Tensor) -> Tensor:
        _, u, w = self._params
        u_hat = self.u_hat(u, w)
        w_dot_u_hat = (w * u_hat).sum(-1)  # (*batch, K), > -1
        y, self._cached_logDetJ = planar_layers(x, self.layer_bias(u_hat), u_hat, w, w_dot_u_hat)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        raise KeyError(
            "FusedPlanar expected to find key in intermediates cache but didn't: a planar flow has no analytic "
            "inverse, so score only the samples it drew itself (inside the same trace), or use an invertible "
            "flow such as guide.flow = 'iaf'"
        )

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\sum_k \\log|\\det J_k|` at x, from the cache when ``(x, y)`` is the last pair computed."""
        x_old, y_old = self._cached_x_y
        if x is not x_old or y is not y_old:
            self(x)  # Transform.__call__ refreshes the cache and the log-determinant
        assert self._cached_logDetJ is not None
        return self._cached_logDetJ


class _PlanarLayers(torch.autograd.Function):
    """The K planar layers of :func:`planar_layers`, with the backward pass written out (see there)."""

    @staticmethod
    def forward(
        ctx: Any, z: Tensor, bias: Tensor, u_hat: Tensor, w: Tensor, w_dot_u_hat: Tensor
    ) -> tuple[Tensor, Tensor]:
        inputs = []
        activations = []
        for b_k, u_k, w_k in zip(bias.unbind(-1), u_hat.unbind(-2), w.unbind(-2)):
            inputs.append(z)
            act = torch.tanh((z * w_k).sum(-1) + b_k)
            z = torch.addcmul(z, u_k, act.unsqueeze(-1))
            activations.append(act)
        act = torch.stack(activations, dim=-1)  # (*sample, *batch, K)
        slope = 1.0 - act * act  # tanh'
        det = 1.0 + slope * w_dot_u_hat  # det(I + u_hat psi^T) = 1 + psi^T u_hat, psi = tanh' w
        ctx.save_for_backward(torch.stack(inputs, dim=-2), act, slope, det, u_hat, w, w_dot_u_hat)
        ctx.shapes = (inputs[0].shape, bias.shape, u_hat.shape, w.shape, w_dot_u_hat.shape)
        return z, torch.log(torch.abs(det)).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor, grad_log_det: Tensor) -> tuple[Tensor, ...]:
        if torch.is_grad_enabled():  # backward(create_graph=True): a graph of this pass would miss the inputs
            raise RuntimeError(
                "the fused planar flow has a first-order backward pass only: second derivatives "
                "(create_graph=True) are not supported; differentiate once, or use another guide.flow"
            )
        inputs, act, slope, det, u_hat, w, w_dot_u_hat = ctx.saved_tensors
        z_shape, bias_shape, u_shape, w_shape, dot_shape = ctx.shapes
        grad_log_det = grad_log_det.unsqueeze(-1)
        # d log|det_k| / d act_k and / d (w_k^T u_hat_k)
        grad_act_from_det = grad_log_det * (-2.0) * act * w_dot_u_hat / det
        grad_dot = grad_log_det * slope / det
        K = act.size(-1)
        grad_outputs: list[Tensor] = [grad_z] * K  # dL/dz_k for k = 1..K
        grad_pre: list[Tensor] = [grad_z] * K  # dL/da_k, a_k = w_k^T z_{k-1} + b_k
        g = grad_z
        us, ws = u_hat.unbind(-2), w.unbind(-2)
        extra, slopes = grad_act_from_det.unbind(-1), slope.unbind(-1)
        for k in range(K - 1, -1, -1):
            grad_outputs[k] = g
            grad_pre[k] = ((g * us[k]).sum(-1) + extra[k]) * slopes[k]
            g = torch.addcmul(g, grad_pre[k].unsqueeze(-1), ws[k])
        grad_a = torch.stack(grad_pre, dim=-1)  # (*sample, *batch, K)
        grad_u = torch.stack(grad_outputs, dim=-2) * act.unsqueeze(-1)
        grad_w = grad_a.unsqueeze(-1) * inputs
        return (
            g.sum_to_size(z_shape),
            grad_a.sum_to_size(bias_shape),
            grad_u.sum_to_size(u_shape),
            grad_w.sum_to_size(w_shape),
            grad_dot.sum_to_size(dot_shape),
        )


def planar_layers(z: Tensor, bias: Tensor, u_hat: Tensor, w: Tensor, w_dot_u_hat: Tensor) -> tuple[Tensor, Tensor]:
    r"""Apply K planar layers to z; return :math:`\mathbf{z}_K` and :math:`\sum_k \log|\det J_k|`.

    :math:`\mathbf{z}_k = \mathbf{z}_{k-1} + \hat{\mathbf{u}}_k \tanh(a_k)`, :math:`a_k = \mathbf{w}_k^T
    \mathbf{z}_{k-1} + b_k`, :math:`\log|\det J_k| = \log|1 + (1 - \tanh^2 a_k)\,\mathbf{w}_k^T\hat{\mathbf{u}}_k|`
    ([1] Eq. (10)-(12)), for z of shape ``(*sample, *batch, L)``, ``bias`` ``(*batch, K)``, ``u_hat`` and ``w``
    ``(*batch, K, L)`` and ``w_dot_u_hat`` ``(*batch, K)`` (its value must be :math:`\mathbf{w}_k^T
    \hat{\mathbf{u}}_k`; it is an input so that its gradient flows on to u and w).

    The backward pass runs the chain rule through the layers in reverse with :math:`\bar{\mathbf{z}}_K =
    \partial\mathcal{L}/\partial\mathbf{z}_K` and :math:`\bar\ell = \partial\mathcal{L}/\partial\log|\det J|`:

        :math:`\bar a_k = (\bar{\mathbf{z}}_k^T\hat{\mathbf{u}}_k - 2\bar\ell\tanh(a_k)\,
        \mathbf{w}_k^T\hat{\mathbf{u}}_k / \det J_k)(1 - \tanh^2 a_k)`,
        :math:`\bar{\mathbf{z}}_{k-1} = \bar{\mathbf{z}}_k + \bar a_k \mathbf{w}_k`,

    :math:`\bar b_k = \bar a_k`, :math:`\bar{\hat{\mathbf{u}}}_k = \bar{\mathbf{z}}_k \tanh a_k`,
    :math:`\bar{\mathbf{w}}_k = \bar a_k \mathbf{z}_{k-1}` and :math:`\overline{\mathbf{w}_k^T
    \hat{\mathbf{u}}_k} = \bar\ell (1 - \tanh^2 a_k) / \det J_k`, each summed over the sample dims. One
    autograd node replaces about 10 K, which is most of the cost of a planar flow with small L.
    """
    return _PlanarLayers.apply(z, bias, u_hat, w, w_dot_u_hat)


@register_flow("planar")
class PlanarFlow(ConditionalFlow):
    r"""K planar flows, [1] Eq. (10)-(12), with all parameters read from h by one linear head:

        :math:`(b_k, \mathbf{u}_k, \mathbf{w}_k)_{k=1}^K = \mathrm{Linear}(\mathbf{h})`,
        :math:`\mathbf{z}_k = \mathbf{z}_{k-1} + \hat{\mathbf{u}}_k\tanh(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k)`,
        :math:`\log|\det J_k| = \log|1 + \hat{\mathbf{u}}_k^T\psi_k|`,
        :math:`\psi_k = (1 - \tanh^2(\mathbf{w}_k^T\mathbf{z}_{k-1}+b_k))\,\mathbf{w}_k`,

    where :math:`\hat{\mathbf{u}} = \mathbf{u} + (m(\mathbf{w}^T\mathbf{u}) - \mathbf{w}^T\mathbf{u})
    \mathbf{w}/\|\mathbf{w}\|^2` with :math:`m(a) = -1 + \log(1 + e^a)` ([1] Appendix A.1) guarantees
    :math:`\mathbf{w}^T\hat{\mathbf{u}} > -1`, hence invertibility, whatever the head outputs. The head has
    ``num_flows * (2 * latent_dim + 1)`` outputs laid out as K rows of :math:`(b_k, \mathbf{u}_k,
    \mathbf{w}_k)`. This replaces :func:`~pyro.distributions.transforms.conditional_planar`, which builds a
    hypernetwork per flow. ``forward`` returns one :class:`FusedPlanar` applying all K layers (the same
    function as K of Pyro's ``ConditionedPlanar``, at a fraction of the cost). There is no analytic inverse:
    score only samples the flow drew itself (cache).

    ``centered`` (default): each layer's bias is read relative to where the earlier layers moved the point 0
    (:meth:`FusedPlanar.layer_bias`), the same family reparametrised so that shifts added by earlier layers do
    not carry later pre-activations into a tail of tanh.

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

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int, *, centered: bool = True) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        if not isinstance(centered, bool):
            raise ConfigError(f"guide.options.planar.centered must be true or false, got {centered!r}")
        self.centered = centered
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
        return [FusedPlanar((b, u, w), centered=self.centered)]
