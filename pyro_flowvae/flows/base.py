"""The conditional-flow interface, size checks, the mean-field family and the autoregressive plumbing."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms import Permute
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn
from torch.distributions import Transform

from pyro_flowvae.errors import ConfigError

__all__ = ["ConditionalFlow", "MeanField", "AutoregressiveFlow", "check_size", "default_hidden_dims"]

#: Output layers of the autoregressive networks start at this fraction of PyTorch's default initialisation,
#: so that the flow's parameters are at first nearly independent of z and h.
INIT_SCALE = 1e-2


def check_size(value: object, key: str, minimum: int, hint: str = "") -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else raise a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum} (got {value!r}){hint}")
    return value


class ConditionalFlow(nn.Module):
    r"""Builds, within its forward pass, the flow transforms of :math:`q(z \mid x)` conditioned on h.

    ``flow(h)`` returns transforms :math:`f_1, \dots, f_K` (each with event dim 1) to apply in order to a base
    sample :math:`z_0` of shape ``(*sample, *batch, latent_dim)`` where ``h`` has shape
    ``(*batch, context_dim)``; each ``log_abs_det_jacobian`` has shape ``(*sample, *batch)``. Use them as
    ``TransformedDistribution(base, flow(h))``.

    :param latent_dim: dimension L of z (config key ``model.latent_dim``).
    :param context_dim: dimension H of the context h, the encoder's hidden state.
    :param num_flows: number K of flow layers (config key ``guide.num_flows``).
    """

    #: Whether the composed transform can invert an arbitrary y (not only a y it produced itself).
    has_inverse: ClassVar[bool] = False
    #: Registry name, used in error messages.
    flow_name: ClassVar[str] = "?"
    #: The smallest valid ``num_flows``.
    min_flows: ClassVar[int] = 1
    #: Whether the flow is a linear orthogonal map. Such a map leaves :math:`\mathcal{N}(0, I)` as it is, so the
    #: guide applies it to :math:`z_0 = \mu + \sigma \odot \epsilon_0`, never to the standardized noise.
    orthogonal: ClassVar[bool] = False

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__()
        self.latent_dim = check_size(latent_dim, "model.latent_dim", 1)
        self.context_dim = check_size(context_dim, "context_dim (the encoder's hidden size)", 1)
        hint = f" for flow {self.flow_name!r}; use guide.flow = 'mean_field' for no flow" if self.min_flows else ""
        self.num_flows = check_size(num_flows, "guide.num_flows", self.min_flows, hint)

    def check_context(self, context: Tensor) -> None:
        """Raise a ValueError unless ``context`` has shape ``(*batch, context_dim)``."""
        if context.dim() < 1 or context.size(-1) != self.context_dim:
            raise ValueError(
                f"{type(self).__name__} expects a context of shape (*batch, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )

    def forward(self, context: Tensor) -> list[Transform]:
        """The transforms :math:`f_1, \\dots, f_K` of :math:`q(z \\mid x)` for context ``h``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, context_dim={self.context_dim}, num_flows={self.num_flows}"


class MeanField(ConditionalFlow):
    r"""No flow: :math:`q(z \mid x)` is the diagonal Gaussian base itself, :math:`z = z_0`.

    Accepts any ``num_flows >= 0`` (the config's default applies to the flow families) and stores 0.
    """

    has_inverse = True
    flow_name = "mean_field"
    min_flows = 0

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int = 0) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.num_flows = 0

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        return []


def default_hidden_dims(latent_dim: int) -> tuple[int, int]:
    """Two hidden layers of width ``max(2 * latent_dim, 64)``: the default of the autoregressive networks."""
    width = max(2 * latent_dim, 64)
    return (width, width)


class AutoregressiveFlow(ConditionalFlow):
    r"""K conditional autoregressive blocks with the reversal :math:`z \mapsto (z_L, \dots, z_1)` between.

    Each block owns a :class:`~pyro.nn.ConditionalAutoRegressiveNN` (MADE, [1]) reading :math:`(z, h)` with
    the identity variable order, so block k's Jacobian is lower triangular; reversing the variables between
    blocks lets every coordinate depend on every other one. For even K a last reversal restores the order of
    :math:`z_0`, so a flow whose blocks are near the identity is near the identity. The reversal is a
    non-persistent buffer, so ``.to(device)`` moves it and ``forward`` creates no tensor of its own.
    Subclasses implement :meth:`make_block`.

    [1] Mathieu Germain, Karol Gregor, Iain Murray, Hugo Larochelle. MADE: Masked Autoencoder for
    Distribution Estimation. ICML 2015. [arXiv:1502.03509]
    """

    has_inverse = True
    reverse: Tensor

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        param_dims: Sequence[int],
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__(latent_dim, context_dim, num_flows)
        self.hidden_dims = self._check_hidden_dims(hidden_dims)
        blocks = []
        for _ in range(num_flows):
            with warnings.catch_warnings():
                # Pyro warns for input_dim == 1; conditioned on h, a 1-D block is still a useful
                # context-dependent elementwise bijection.
                warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1")
                arn = ConditionalAutoRegressiveNN(
                    latent_dim,
                    context_dim,
                    list(self.hidden_dims),
                    param_dims=list(param_dims),
                    permutation=torch.arange(latent_dim),
                )
            blocks.append(self.make_block(arn))
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1), persistent=False)

    def _check_hidden_dims(self, hidden_dims: Sequence[int] | None) -> tuple[int, ...]:
        if hidden_dims is None:
            return default_hidden_dims(self.latent_dim)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence) or not hidden_dims:
            raise ConfigError(
                f"guide.options.{self.flow_name}.hidden_dims must be a non-empty list of integers, e.g. "
                f"[{4 * self.latent_dim}, {4 * self.latent_dim}], got {hidden_dims!r}"
            )
        for width in hidden_dims:
            check_size(
                width,
                f"each of guide.options.{self.flow_name}.hidden_dims",
                self.latent_dim,
                " (a MADE layer must be at least as wide as model.latent_dim)",
            )
        return tuple(hidden_dims)

    def make_block(self, arn: ConditionalAutoRegressiveNN) -> ConditionalTransformModule:
        """One conditional autoregressive transform on top of ``arn``."""
        raise NotImplementedError

    def forward(self, context: Tensor) -> list[Transform]:
        self.check_context(context)
        transforms: list[Transform] = []
        for k, block in enumerate(self.blocks):
            if k > 0:
                transforms.append(Permute(self.reverse))
            transforms.append(block.condition(context))
        if self.num_flows % 2 == 0:
            transforms.append(Permute(self.reverse))  # undo the odd number of reversals between blocks
        return transforms

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dims={list(self.hidden_dims)}"
