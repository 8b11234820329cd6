"""Neural spline autoregressive flows conditioned on the encoder's hidden state."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.distributions.transforms import ConditionalSplineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows.base import INIT_SCALE, AutoregressiveFlow, check_size
from pyro_flowvae.flows.registry import register_flow

__all__ = ["SplineFlow", "SPLINE_ORDERS"]

SPLINE_ORDERS = ("linear", "quadratic")
_MIN_DERIVATIVE = 1e-3  # Pyro's floor on the knot derivatives (pyro.distributions.transforms.spline)


@register_flow("spline")
class SplineFlow(AutoregressiveFlow):
    r"""K neural spline autoregressive blocks [1, 2] conditioned on h, with z reversed between blocks.

    Block k transforms each coordinate by its own monotonic rational spline,

        :math:`z_{k,i} = g_{\theta_i}(z_{k-1,i})`,
        :math:`\theta_i = \mathrm{MADE}_k(\mathbf{z}_{k-1,<i}, \mathbf{h})`,
        :math:`\log|\det J_k| = \sum_i \log g'_{\theta_i}(z_{k-1,i})`,

    where :math:`g_\theta` is piecewise rational-linear ([2], ``order='linear'``) or rational-quadratic ([1],
    ``order='quadratic'``) with ``count_bins`` bins on :math:`[-B, B]` and the identity outside (Pyro's
    :class:`~pyro.distributions.transforms.SplineAutoregressive`). The MADE outputs, per coordinate,
    ``count_bins`` widths, ``count_bins`` heights, ``count_bins - 1`` interior knot derivatives and (linear
    only) ``count_bins`` knot weights :math:`\lambda`. The inverse exists for any y and costs L network
    passes per block. The reversals are those of :class:`AutoregressiveFlow`.

    :param count_bins: number of spline segments K_bins >= 2 (default 8).
    :param bound: half-width B > 0 of the box on which the spline acts (default 5.0).
    :param order: ``'linear'`` (default) or ``'quadratic'``.
    :param hidden_dims: widths of the MADE hidden layers, each >= ``latent_dim``; default two layers of
        ``max(2 * latent_dim, 64)``.

    Initialisation: the MADE output layers start at 1e-2 times PyTorch's default weights with zero bias
    except for the derivative outputs, set to :math:`\mathrm{softplus}^{-1}(1 - 10^{-3})` so that every knot
    derivative is 1: equal bins and unit slopes make each block start near the identity.

    [1] Conor Durkan, Artur Bekasov, Iain Murray, George Papamakarios. Neural Spline Flows. NeurIPS 2019.
    [arXiv:1906.04032]
    [2] Hadi M. Dolatabadi, Sarah Erfani, Christopher Leckie. Invertible Generative Modeling using Linear
    Rational Splines. AISTATS 2020. [arXiv:2001.05168]
    """

    flow_name = "spline"

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        *,
        count_bins: int = 8,
        bound: float = 5.0,
        order: str = "linear",
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        self.count_bins = check_size(count_bins, "guide.options.spline.count_bins", 2)
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < math.inf:
            raise ConfigError(f"guide.options.spline.bound must be a number > 0, got {bound!r}")
        if order not in SPLINE_ORDERS:
            raise ConfigError(f"guide.options.spline.order must be one of {', '.join(SPLINE_ORDERS)}, got {order!r}")
        self.bound = float(bound)
        self.order = order
        # Pyro's conditional_spline_autoregressive always asks for the linear spline's 4 outputs, which
        # breaks order='quadratic' (3 expected); size them here.
        param_dims = [count_bins, count_bins, count_bins - 1] + ([count_bins] if order == "linear" else [])
        super().__init__(latent_dim, context_dim, num_flows, param_dims=param_dims, hidden_dims=hidden_dims)

    def make_block(self, arn: ConditionalAutoRegressiveNN) -> ConditionalSplineAutoregressive:
        # MADE's output layer is laid out (sum(param_dims), L): parameter p of coordinate i is row p * L + i.
        L, C = self.latent_dim, self.count_bins
        with torch.no_grad():
            arn.layers[-1].weight.mul_(INIT_SCALE)
            arn.layers[-1].bias.zero_()
            arn.layers[-1].bias[2 * C * L : (3 * C - 1) * L] = math.log(math.expm1(1.0 - _MIN_DERIVATIVE))
        return ConditionalSplineAutoregressive(self.latent_dim, arn, count_bins=C, bound=self.bound, order=self.order)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, count_bins={self.count_bins}, bound={self.bound}, order={self.order!r}"
