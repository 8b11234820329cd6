"""The GP-VAE's guide q(z | x) over sequences: frame-wise or banded-precision Gaussians, optionally with a flow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Transform
from torch.distributions.transforms import ReshapeTransform
from torch.nn import functional as F

from pyro_flowvae.data.sequences import check_sequence_batch
from pyro_flowvae.errors import ConfigError, DataError
from pyro_flowvae.flows import ConditionalFlow, build_flow, check_flow_options
from pyro_flowvae.flows.base import INIT_SCALE, check_size
from pyro_flowvae.guides.banded import BandedPrecisionNormal
from pyro_flowvae.models.nets import ACTIVATIONS, mlp

__all__ = ["COVARIANCES", "SequenceEncoder", "GPVAEGuide", "check_sequence_batch"]

#: The posterior covariance structures over time that :class:`GPVAEGuide` offers.
COVARIANCES = ("diagonal", "banded")
#: How :class:`SequenceEncoder` reads a frame: its pixels and mask directly, or through convolutions first.
FRAME_ENCODERS = ("mlp", "conv")


class ConvFramePreprocessor(nn.Module):
    r"""Fortuin et al.'s image preprocessor for frames of shape (C, H, W): the observed pixels and the mask as
    2C channels, a 3x3 convolution to ``channels`` channels, ReLU, a 3x3 convolution back to C channels
    (padding keeps H x W). Input x, mask (B, T, D) with D = C H W; output (B, T, D), read by the frame MLP
    together with the mask.

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Raetsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155] (``ImagePreprocessor`` of their code)
    """

    def __init__(self, frame_shape: Sequence[int], channels: int = 256, kernel_size: int = 3) -> None:
        super().__init__()
        if len(frame_shape) != 3:
            raise ConfigError(f"the conv frame encoder needs frames of shape (C, H, W), got {tuple(frame_shape)}")
        self.frame_shape = tuple(int(s) for s in frame_shape)
        c = self.frame_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(2 * c, channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.Conv2d(channels, c, kernel_size, padding=kernel_size // 2),
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        frames = torch.cat([x, mask], dim=-1).reshape(b * t, 2 * self.frame_shape[0], *self.frame_shape[1:])
        return self.net(frames).reshape(b, t, d)


class SequenceEncoder(nn.Module):
    r"""Per-step features of a partly observed sequence: an MLP per frame, then a 1-D convolution over time.

    .. math::
        u_t = \mathrm{MLP}([x_t \odot m_t,\, m_t]), \qquad
        h_t = a\Big(\sum_{k} W_k\, u_{t + k - \lfloor K/2 \rfloor} + c\Big),

    with mask :math:`m_t \in \{0, 1\}^D` (1 = observed), activation a and a temporal kernel of K steps
    (``kernel_size``, zero padding, output length T: PyTorch's ``padding="same"``), as the CNN encoder of [1].
    Unobserved entries are set to 0 before the MLP (``masked_fill``, so NaN placeholders are fine), hence never
    change h; the mask itself is an input, so "missing" and "observed 0" differ. The convolution treats steps as
    equally spaced; irregular time stamps matter only to the prior.

    Input x, mask (B, T, D); output h (B, T, H) with H = ``hidden[-1]`` (:attr:`context_dim`).

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Raetsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    """

    def __init__(
        self,
        data_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        kernel_size: int = 3,
        frame_encoder: str = "mlp",
        frame_shape: Sequence[int] | None = None,
        conv_channels: int = 256,
    ) -> None:
        super().__init__()
        check_size(data_dim, "data_dim", 1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
            raise ConfigError(
                f"the sequence encoder's hidden sizes must be a non-empty list of integers, got {hidden!r}"
            )
        check_size(kernel_size, "kernel_size (of the encoder's temporal convolution)", 1)
        self.data_dim = data_dim
        self.context_dim = hidden[-1]
        if frame_encoder not in FRAME_ENCODERS:
            raise ConfigError(f"model.frame_encoder = {frame_encoder!r}; choose one of: {', '.join(FRAME_ENCODERS)}")
        self.preprocessor: ConvFramePreprocessor | None = None
        if frame_encoder == "conv":
            if frame_shape is None or math.prod(frame_shape) != data_dim:
                raise ConfigError(
                    f"model.frame_encoder = 'conv' needs frames that are images (C, H, W) with C*H*W = {data_dim}, "
                    f"got frame shape {frame_shape}; use model.frame_encoder = 'mlp' for other data"
                )
            check_size(conv_channels, "model.conv_channels", 1)
            self.preprocessor = ConvFramePreprocessor(frame_shape, conv_channels)
        self.frame_net = mlp([2 * data_dim, *hidden], activation, final_activation=True)
        self.conv = nn.Conv1d(self.context_dim, self.context_dim, kernel_size, padding="same")
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        observed = mask if mask.dtype == torch.bool else mask != 0
        x = x.masked_fill(~observed, 0.0)
        if self.preprocessor is not None:
            x = self.preprocessor(x, observed.to(x.dtype))
        inputs = torch.cat([x, observed.to(x.dtype)], dim=-1)
        u = self.frame_net(inputs)  # (B, T, H)
        return self.activation(self.conv(u.transpose(-1, -2))).transpose(-1, -2)


class GPVAEGuide(nn.Module):
    r"""The GP-VAE guide :math:`q_\phi(z \mid x)` over L latent channels and T steps, as a Pyro program.

    With per-step features :math:`h_t` of :class:`SequenceEncoder` and a linear head per step reading
    :math:`\mu_{lt}`, :math:`\sigma_{lt} = \mathrm{softplus}(\cdot) + \sigma_{\min}` (and, for ``"banded"``,
    :math:`\phi_{lt} = \tanh(\cdot)`), the base :math:`q_0` is, independently per channel l,

    * ``covariance="diagonal"`` (frame-wise mean field): :math:`z_{lt} \sim \mathcal{N}(\mu_{lt}, \sigma_{lt}^2)`;
    * ``covariance="banded"`` ([1] sec. 3.2): :math:`z_{l,\cdot} \sim \mathcal{N}(\mu_{l,\cdot}, (B_l^\top
      B_l)^{-1})`, a :class:`~pyro_flowvae.guides.banded.BandedPrecisionNormal` with :math:`d_{lt} = 1 /
      \sigma_{lt}` and :math:`s_{lt} = -\phi_{lt} / \sigma_{lt}`, i.e. the backward chain
      :math:`z_{lt} - \mu_{lt} = \phi_{lt}(z_{l,t+1} - \mu_{l,t+1}) + \sigma_{lt}\varepsilon_{lt}`.
      :math:`\phi_{lt}` (read from step t, t < T) couples steps t and t+1; :math:`\phi = 0` gives back the
      diagonal guide, and :math:`\mathrm{Var}\,z_{lt} = \sigma_{lt}^2 + \phi_{lt}^2\,\mathrm{Var}\,z_{l,t+1}
      \ge \sigma_{\min}^2`. The tanh bound :math:`|\phi_{lt}| < 1` keeps the chain stable: :math:`\mathrm{Var}\,z_{lt}
      \le \max_t \sigma_{lt}^2 / (1 - \max_t \phi_{lt}^2)` instead of growing like :math:`\phi^{2(T-t)}`, and a
      step of the head can no longer send one coupling, and the ELBO with it, far out (unbounded, the ELBO of a
      stiff GP prior at lr 1e-2 spiked to -2e6 and settled in a poor optimum). The :math:`\phi` rows of the head
      start at 1e-2 times PyTorch's default weights
      with zero bias, so training starts near the diagonal guide. (The reference implementation of [1] instead
      uses :math:`d = 1 + \mathrm{softplus}`, :math:`s = \mathrm{softplus}` and a dense O(T^2) solve.)

    With ``flow`` a name in the flow registry, K flow layers act on the flattened :math:`z \in
    \mathbb{R}^{LT}`, conditioned on the time-mean of the features :math:`\bar h = \frac1T\sum_t h_t`::

        TransformedDistribution(q0, [Reshape((L, T) -> (L*T,)), *flow(h_bar), Reshape((L*T,) -> (L, T))])

    so :math:`\log q(z) = \log q_0(z_0) - \sum_k \log|\det J_k|`; the flow's size L*T needs ``time_length``
    (T) at construction. Calling the guide as ``guide(x, mask, times)`` (x, mask (B, T, D), times (B, T)) runs::

        with pyro.plate(data_plate, B, dim=-1):
            pyro.sample(latent_site, q)      # batch (B,), event (L, T): value (..., B, L, T)

    The steps :meth:`get_context`, :meth:`get_base_dist`, :meth:`get_transforms`, :meth:`get_posterior` are
    overridable, as in :class:`~pyro_flowvae.guides.amortized.AmortizedFlowGuide`. A flow without an inverse
    (planar, radial) scores only the samples it drew itself (the reshapes cache them too).

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Raetsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    [2] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        covariance: str = "diagonal",
        flow: str = "mean_field",
        num_flows: int = 0,
        flow_options: dict[str, Any] | None = None,
        time_length: int | None = None,
        activation: str = "relu",
        min_scale: float = 1e-4,
        kernel_size: int = 3,
        frame_encoder: str = "mlp",
        frame_shape: Sequence[int] | None = None,
        conv_channels: int = 256,
        latent_site: str = "z",
        data_plate: str = "data",
        name: str = "guide",
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise ConfigError(f"unknown guide covariance {covariance!r}; choose one of: {', '.join(COVARIANCES)}")
        check_size(latent_dim, "latent_dim", 1)
        if not isinstance(min_scale, (int, float)) or isinstance(min_scale, bool) or min_scale < 0:
            raise ConfigError(f"min_scale must be a number >= 0 (a floor on the guide's scales), got {min_scale!r}")
        flow_options = dict(flow_options or {})
        check_flow_options(flow, flow_options)  # an unknown flow name raises the registry's error first
        if time_length is not None:
            check_size(time_length, "time_length", 1)
        elif flow != "mean_field":
            raise ConfigError(
                f"flow {flow!r} on the GP-VAE guide acts on the flattened z of size latent_dim * T, so it needs "
                f"the sequence length: pass time_length=T, or use flow='mean_field'"
            )
        self.encoder = SequenceEncoder(
            data_dim, hidden, activation, kernel_size, frame_encoder, frame_shape, conv_channels
        )
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.context_dim = self.encoder.context_dim
        self.covariance = covariance
        self.time_length = time_length
        self.flow_name = flow
        self.min_scale = float(min_scale)
        self.latent_site = latent_site
        self.data_plate = data_plate
        self.name = name
        self.num_params = 3 if covariance == "banded" else 2
        self.head = nn.Linear(self.context_dim, self.num_params * latent_dim)
        if covariance == "banded":
            with torch.no_grad():
                self.head.weight[2 * latent_dim :].mul_(INIT_SCALE)
                self.head.bias[2 * latent_dim :].zero_()
        flow_dim = latent_dim * time_length if time_length is not None else latent_dim
        self.flow: ConditionalFlow = build_flow(flow, flow_dim, self.context_dim, num_flows, **flow_options)

    # -- the steps, each overridable -------------------------------------------------------------------
    def get_context(self, x: Tensor, mask: Tensor, times: Tensor) -> Tensor:
        """Check the batch, then the per-step features h = encoder(x, mask), shape (B, T, H)."""
        check_sequence_batch(x, mask, times, self.data_dim)
        if self.time_length is not None and self.flow.num_flows > 0 and x.shape[1] != self.time_length:
            raise DataError(
                f"the guide's flow {self.flow_name!r} was built for time_length={self.time_length}, got sequences "
                f"of {x.shape[1]} steps (x shape {tuple(x.shape)}); build the guide with time_length={x.shape[1]}"
            )
        return self.encoder(x, mask)

    def get_base_dist(self, context: Tensor) -> dist.TorchDistribution:
        """:math:`q_0(z_0 \\mid x)`: batch shape (B,), event shape (L, T) (see the class docstring)."""
        params = self.head(context).unflatten(-1, (self.num_params, self.latent_dim))  # (B, T, k, L)
        params = params.permute(2, 0, 3, 1)  # (k, B, L, T)
        loc, scale = params[0], F.softplus(params[1]) + self.min_scale
        if self.covariance == "diagonal":
            return dist.Normal(loc, scale).to_event(2)
        diag = scale.reciprocal()
        phi = torch.tanh(params[2][..., :-1])  # |phi_t| < 1: the backward chain is stable (see the class docstring)
        offdiag = -phi * diag[..., :-1]  # s_t = -phi_t / sigma_t
        return BandedPrecisionNormal(loc, diag, offdiag).to_event(1)

    def get_transforms(self, context: Tensor) -> list[Transform]:
        """The flow layers on the flattened z, between two reshapes; none for mean-field."""
        transforms = self.flow(context.mean(dim=-2))
        if not transforms:
            return []
        shape = (self.latent_dim, context.shape[-2])
        flat = (shape[0] * shape[1],)
        return [ReshapeTransform(shape, flat, cache_size=1), *transforms, ReshapeTransform(flat, shape, cache_size=1)]

    def get_posterior(self, x: Tensor, mask: Tensor, times: Tensor) -> dist.TorchDistribution:
        """The distribution q(z | x) the guide samples from: batch shape (B,), event shape (L, T)."""
        context = self.get_context(x, mask, times)
        base = self.get_base_dist(context)
        transforms = self.get_transforms(context)
        if not transforms:
            return base
        return dist.TransformedDistribution(base, transforms)

    def posterior_mean(self, x: Tensor, mask: Tensor, times: Tensor, num_samples: int = 32) -> Tensor:
        """:math:`E_q[z]`, shape (B, L, T): the base's exact mean without a flow, the mean of ``num_samples``
        draws with one. Call it under ``torch.no_grad()`` for evaluation."""
        posterior = self.get_posterior(x, mask, times)
        if not isinstance(posterior, dist.TransformedDistribution):
            return posterior.mean
        check_size(num_samples, "num_samples", 1)
        return posterior.rsample((num_samples,)).mean(0)

    # -- the Pyro program ------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor, times: Tensor) -> Tensor:
        pyro.module(self.name, self)
        posterior = self.get_posterior(x, mask, times)
        expected = (self.latent_dim, x.shape[1])
        assert posterior.event_shape == expected, (
            f"the GP-VAE guide's q(z|x) has event shape {tuple(posterior.event_shape)}, expected (L, T) = {expected}"
        )
        with pyro.plate(self.data_plate, x.shape[0], dim=-1):
            return pyro.sample(self.latent_site, posterior)
