"""The amortized flow guide: a Gaussian read from an encoder, pushed through a flow conditioned on x."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Transform
from torch.nn import functional as F

from pyro_flowvae.flows import ConditionalFlow, build_flow

__all__ = ["AmortizedFlowGuide", "ConstantContext"]


class ConstantContext(nn.Module):
    """A learned context vector h that ignores its inputs: turns the amortized guide into a plain one
    for a model whose latent site is global (no data plate), e.g. a ``pyro.factor`` energy model."""

    def __init__(self, context_dim: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.h = nn.Parameter(torch.randn(context_dim) * 0.1)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.h


class AmortizedFlowGuide(nn.Module):
    r"""The guide :math:`q_\phi(z \mid x)` as a Pyro program.

    With :math:`h = \mathrm{encoder}(x)`,

    .. math::
        z_0 \sim \mathcal{N}(\mu(h), \mathrm{diag}\,\sigma(h)^2), \qquad
        z = z_K = f_K \circ \dots \circ f_1(z_0), \qquad
        \log q(z_K \mid x) = \log q_0(z_0) - \sum_{k=1}^K \log \left|\det \frac{\partial f_k}{\partial z_{k-1}}\right|,

    where every :math:`f_k` is conditioned on h (planar/radial/Householder parameters read from h by one
    linear head, IAF/spline autoregressive networks that take h as context). ``flow="mean_field"`` uses no
    :math:`f_k`. Calling the guide runs::

        with pyro.plate("data", B):
            pyro.sample("z", TransformedDistribution(base, transforms))

    It fits any model whose latent site (``latent_site``) lives in the plate ``data_plate`` and whose first
    argument is the data the encoder reads. Override :meth:`get_context` for other signatures, pass
    ``data_plate=None`` and a :class:`ConstantContext` encoder for a global latent. The log-density of a
    flow without an inverse (planar, radial) is computed from the transforms' cache, so score z inside the
    trace that drew it (SVI and :func:`~pyro_flowvae.evaluation.importance.estimate_log_likelihood` do).

    The split into :meth:`get_context`, :meth:`get_base_dist`, :meth:`get_transforms` and
    :meth:`get_posterior` follows Pyro's autoguides: override the step you need.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    [2] Diederik P. Kingma et al. Improved Variational Inference with Inverse Autoregressive Flow.
    NeurIPS 2016. [arXiv:1606.04934]
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        flow: str = "mean_field",
        num_flows: int = 0,
        flow_options: dict[str, Any] | None = None,
        context_dim: int | None = None,
        latent_site: str = "z",
        data_plate: str | None = "data",
        min_scale: float = 1e-4,
        name: str = "guide",
    ) -> None:
        super().__init__()
        context_dim = context_dim if context_dim is not None else encoder.context_dim
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.latent_site = latent_site
        self.data_plate = data_plate
        self.min_scale = min_scale
        self.name = name
        self.flow_name = flow
        self.base_head = nn.Linear(context_dim, 2 * latent_dim)
        self.flow: ConditionalFlow = build_flow(flow, latent_dim, context_dim, num_flows, **(flow_options or {}))

    # -- the steps, each overridable -------------------------------------------------------------------
    def get_context(self, *args: Any, **kwargs: Any) -> Tensor:
        """h = encoder(x), x being the first argument the model is called with."""
        return self.encoder(args[0]) if args else self.encoder(**kwargs)

    def get_base_dist(self, context: Tensor) -> dist.TorchDistribution:
        """:math:`q_0(z_0 \\mid x) = \\mathcal{N}(\\mu(h), \\mathrm{diag}\\,\\sigma(h)^2)`, event shape (L,)."""
        loc, raw_scale = self.base_head(context).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        return dist.Normal(loc, scale).to_event(1)

    def get_transforms(self, context: Tensor) -> list[Transform]:
        """The flow layers :math:`f_1, \\dots, f_K` conditioned on h (none for mean-field)."""
        return self.flow(context)

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TorchDistribution:
        """The distribution q(z | x) the guide samples from."""
        context = self.get_context(*args, **kwargs)
        base = self.get_base_dist(context)
        transforms = self.get_transforms(context)
        if not transforms:
            return base
        return dist.TransformedDistribution(base, transforms)

    # -- the Pyro program ------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        pyro.module(self.name, self)
        posterior = self.get_posterior(*args, **kwargs)
        assert posterior.event_shape == (self.latent_dim,), (
            f"guide's q(z|x) has event shape {tuple(posterior.event_shape)}, expected ({self.latent_dim},)"
        )
        if self.data_plate is None:
            return pyro.sample(self.latent_site, posterior)
        with pyro.plate(self.data_plate, posterior.batch_shape[-1], dim=-1):
            return pyro.sample(self.latent_site, posterior)
