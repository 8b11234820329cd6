"""A plain-PyTorch reference of pyro_flowvae's VAE and flow guides, for the speed benchmark: no Pyro anywhere.

The same networks as :class:`pyro_flowvae.models.vae.FlowVAE` built from a config (encoder MLP, base head, flow, decoder
MLP, Bernoulli likelihood, standard-normal prior) and the same single-sample ELBO written by hand,

.. math::
    z_0 = \\mu(h) + \\sigma(h) \\odot \\varepsilon, \\quad z_K = f_K \\circ \\dots \\circ f_1(z_0), \\quad
    -\\mathcal{L} = -\\sum_{b} \\Big[\\log p(x_b \\mid z_{K,b}) + \\log p(z_{K,b}) - \\log q_0(z_{0,b})
    + \\sum_k \\log\\left|\\det \\tfrac{\\partial f_k}{\\partial z_{k-1}}\\right|\\Big],

summed over the batch as Pyro's ``Trace_ELBO`` does, with every flow family written in torch only: planar and
radial layers [1] and Householder reflections [2] with parameters from one linear head; IAF [3] and
rational-linear spline [4, 5] blocks on conditional MADE networks [6] with the variables reversed between blocks.
Masks, layouts and parameter constraints follow Pyro's so that :meth:`TorchVAE.load_flowvae` can copy a FlowVAE's
weights and both compute the same loss for the same noise (the speed benchmark checks that before timing).

[1] Rezende, Mohamed. Variational Inference with Normalizing Flows. ICML 2015. [arXiv:1505.05770]
[2] Tomczak, Welling. Improving Variational Auto-Encoders using Householder Flow. 2016. [arXiv:1611.09630]
[3] Kingma et al. Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS 2016. [arXiv:1606.04934]
[4] Durkan et al. Neural Spline Flows. NeurIPS 2019. [arXiv:1906.04032]
[5] Dolatabadi, Erfani, Leckie. Invertible Generative Modeling using Linear Rational Splines. AISTATS 2020.
[arXiv:2001.05168]
[6] Germain, Gregor, Murray, Larochelle. MADE: Masked Autoencoder for Distribution Estimation. ICML 2015.
[arXiv:1502.03509]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "TorchVAE",
    "TorchFlow",
    "MeanFieldFlow",
    "PlanarFlow",
    "RadialFlow",
    "HouseholderFlow",
    "IAFFlow",
    "SplineFlow",
    "MaskedLinear",
    "made_masks",
    "FLOWS",
    "clip_grad_norms_",
]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class TorchFlow(nn.Module):
    """``forward(z0, h) -> (z_K, sum_k log|det J_k|)`` for z0 of shape (B, L) and context h of shape (B, H)."""

    #: a rotation: applied to mu + sigma * eps, since on eps ~ N(0, I) it would change nothing
    orthogonal = False

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class MeanFieldFlow(TorchFlow):
    """No flow."""

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int = 0) -> None:
        super().__init__()

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[:-1])


class PlanarFlow(TorchFlow):
    r"""K planar layers :math:`z \mapsto z + \hat u \tanh(w^T z + b)`, :math:`\hat u` as in [1] Appendix A.1,
    all parameters from one linear head laid out as K rows of :math:`(b, u, w)`; ``centered`` reads layer k's bias
    relative to :math:`c_{k-1}`, where the earlier layers take the point 0 (``c_k = c_{k-1} + u_k tanh(b_k)``)."""

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int, centered: bool = True) -> None:
        super().__init__()
        self.latent_dim, self.num_flows, self.centered = latent_dim, num_flows, centered
        self.head = nn.Linear(context_dim, num_flows * (2 * latent_dim + 1))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        L = self.latent_dim
        b, u, w = self.head(h).unflatten(-1, (self.num_flows, 2 * L + 1)).split([1, L, L], dim=-1)
        wu = (w * u).sum(-1, keepdim=True)
        u = u + (F.softplus(wu) - 1.0 - wu) * w / (w * w).sum(-1, keepdim=True)  # now w^T u > -1
        w_dot_u = (w * u).sum(-1)  # (B, K)
        log_det = z.new_zeros(z.shape[:-1])
        centre = torch.zeros_like(z)
        for k in range(self.num_flows):
            bias = b[:, k, 0] - (w[:, k] * centre).sum(-1) if self.centered else b[:, k, 0]
            centre = centre + u[:, k] * torch.tanh(b[:, k])
            act = torch.tanh((z * w[:, k]).sum(-1) + bias)
            z = z + u[:, k] * act.unsqueeze(-1)
            log_det = log_det + torch.log(torch.abs(1.0 + (1.0 - act * act) * w_dot_u[:, k]))
        return z, log_det


class RadialFlow(TorchFlow):
    r"""K radial layers :math:`z \mapsto z + \beta (z - z_0) / (\alpha + r)`, :math:`r = \|z - z_0\|`, with
    :math:`\alpha = c\,\mathrm{softplus}(\alpha')`, :math:`\beta = c\,(\mathrm{softplus}(\beta') -
    \mathrm{softplus}(\alpha'))` ([1] A.2, scaled by :math:`c = \sqrt{L}`, the radius of standardized noise);
    the head's K rows are :math:`(z_0, \alpha', \beta')`."""

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__()
        self.latent_dim, self.num_flows = latent_dim, num_flows
        self.head = nn.Linear(context_dim, num_flows * (latent_dim + 2))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        L = self.latent_dim
        centre, alpha, beta = self.head(h).unflatten(-1, (self.num_flows, L + 2)).split([L, 1, 1], dim=-1)
        alpha = math.sqrt(L) * F.softplus(alpha)
        beta = math.sqrt(L) * F.softplus(beta) - alpha
        log_det = z.new_zeros(z.shape[:-1])
        for k in range(self.num_flows):
            diff = z - centre[:, k]
            r = diff.norm(dim=-1, keepdim=True)
            inv = 1.0 / (alpha[:, k] + r)
            beta_h = beta[:, k] * inv
            # det J = (1 + beta h)^(L-1) (1 + beta h + beta h' r), h' = -h^2
            layer_log_det = (L - 1) * torch.log1p(beta_h) + torch.log1p(beta_h - beta_h * inv * r)
            log_det = log_det + layer_log_det.squeeze(-1)
            z = z + beta_h * diff
        return z, log_det


class HouseholderFlow(TorchFlow):
    """K reflections :math:`z \\mapsto z - 2 v (v^T z)` with :math:`v = v' / \\|v'\\|` from one linear head."""

    orthogonal = True

    def __init__(self, latent_dim: int, context_dim: int, num_flows: int) -> None:
        super().__init__()
        self.latent_dim, self.num_flows = latent_dim, num_flows
        self.head = nn.Linear(context_dim, num_flows * latent_dim)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v = self.head(h).unflatten(-1, (self.num_flows, self.latent_dim))
        v = v / v.norm(dim=-1, keepdim=True)
        for k in range(self.num_flows):
            z = z - 2.0 * (v[:, k] * z).sum(-1, keepdim=True) * v[:, k]
        return z, z.new_zeros(z.shape[:-1])


def made_masks(latent_dim: int, context_dim: int, hidden_dims: Sequence[int], outputs_per_dim: int) -> list[Tensor]:
    """MADE masks [6] for inputs (h, z) with z in its natural order: output i sees h and z_{<i} only.

    Degrees: context inputs 0, z_i has degree i (1-based), hidden unit j of a layer of width n has degree
    ``round(1 + (L - 1) j / (n - 1)) - 1`` (evenly spread, as Pyro's ``sample_mask_indices``); a hidden unit sees
    inputs of degree <= its own, an output of degree i sees hidden units of degree < i.
    """
    degree_in = torch.cat([torch.zeros(context_dim), torch.arange(1, latent_dim + 1, dtype=torch.float32)])
    degree_hidden = [torch.round(torch.linspace(1, latent_dim, steps=n)) - 1 for n in hidden_dims]
    degree_out = torch.arange(1, latent_dim + 1, dtype=torch.float32).repeat(outputs_per_dim)
    masks = [(degree_hidden[0][:, None] >= degree_in[None]).float()]
    for prev, cur in zip(degree_hidden[:-1], degree_hidden[1:]):
        masks.append((cur[:, None] >= prev[None]).float())
    masks.append((degree_out[:, None] > degree_hidden[-1][None]).float())
    return masks


class MaskedLinear(nn.Linear):
    """``F.linear(x, weight * mask, bias)``."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.size(1), mask.size(0))
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Conditional MADE on ``cat([h, z])``; ReLU between layers; output reshaped to (..., outputs_per_dim, L)."""

    def __init__(self, latent_dim: int, context_dim: int, hidden_dims: Sequence[int], outputs_per_dim: int) -> None:
        super().__init__()
        self.latent_dim, self.outputs_per_dim = latent_dim, outputs_per_dim
        masks = made_masks(latent_dim, context_dim, hidden_dims, outputs_per_dim)
        self.layers = nn.ModuleList(MaskedLinear(m) for m in masks)

    def forward(self, z: Tensor, h: Tensor) -> Tensor:
        out = torch.cat([h, z], dim=-1)
        for layer in self.layers[:-1]:
            out = F.relu(layer(out))
        return self.layers[-1](out).unflatten(-1, (self.outputs_per_dim, self.latent_dim))


class _Autoregressive(TorchFlow):
    """K MADE blocks with z reversed between blocks, and once more at the end when K is even."""

    outputs_per_dim = 2

    def __init__(
        self, latent_dim: int, context_dim: int, num_flows: int, hidden_dims: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        width = max(2 * latent_dim, 64)
        hidden = list(hidden_dims) if hidden_dims is not None else [width, width]
        self.blocks = nn.ModuleList(
            MADE(latent_dim, context_dim, hidden, self.outputs_per_dim) for _ in range(num_flows)
        )

    def block(self, params: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        for k, made in enumerate(self.blocks):
            if k > 0:
                z = z.flip(-1)
            z, block_log_det = self.block(made(z, h), z)
            log_det = log_det + block_log_det
        if len(self.blocks) % 2 == 0:
            z = z.flip(-1)
        return z, log_det


class IAFFlow(_Autoregressive):
    r"""IAF blocks with the affine update of [3] Eq. (10) (the default): :math:`z \mapsto e^s z + m`, s clamped to
    [-5, 3] with the gradient passed through (Pyro's ``clamp_preserve_gradients``), :math:`\log|\det J| = \sum_i s_i`;
    or, with ``stable``, the gated update of Eq. (14): :math:`\sigma = \mathrm{sigmoid}(s + 2)`,
    :math:`z \mapsto \sigma z + (1 - \sigma) m`, :math:`\log|\det J| = \sum_i \log \sigma_i`."""

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        hidden_dims: Sequence[int] | None = None,
        stable: bool = False,
    ) -> None:
        self.stable = stable
        super().__init__(latent_dim, context_dim, num_flows, hidden_dims)

    def block(self, params: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, logit = params.unbind(-2)
        if not self.stable:
            log_scale = logit + (logit.clamp(-5.0, 3.0) - logit).detach()
            return torch.exp(log_scale) * z + mean, log_scale.sum(-1)
        logit = logit + 2.0
        gate = torch.sigmoid(logit)
        return gate * z + (1.0 - gate) * mean, F.logsigmoid(logit).sum(-1)


class SplineFlow(_Autoregressive):
    r"""Rational-linear spline blocks [5] on [-B, B] (identity outside) with Pyro's parametrisation: bin widths
    and heights by softmax with a floor of 1e-3, knot derivatives ``softplus + 1e-3`` (1 at the ends), knot
    weights :math:`\lambda` by sigmoid squeezed into [0.025, 0.975]."""

    MIN_BIN = 1e-3
    MIN_DERIVATIVE = 1e-3
    MIN_LAMBDA = 0.025
    EPS = 1e-6

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        num_flows: int,
        count_bins: int = 8,
        bound: float = 5.0,
        order: str = "linear",
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        if order != "linear":
            raise ValueError("the reference spline implements order='linear' (the default) only")
        self.count_bins, self.bound = count_bins, float(bound)
        self.outputs_per_dim = 4 * count_bins - 1
        super().__init__(latent_dim, context_dim, num_flows, hidden_dims)

    def knots(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Bin sizes and knot positions on [-B, B] from unnormalised sizes (..., C)."""
        C, B = self.count_bins, self.bound
        sizes = self.MIN_BIN + (1.0 - self.MIN_BIN * C) * torch.softmax(raw, dim=-1)
        inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2 * B) - B
        edge = inner.new_full(inner.shape[:-1] + (1,), B)
        knots = torch.cat([-edge, inner, edge], dim=-1)  # the end knots exactly at -B and B
        return knots[..., 1:] - knots[..., :-1], knots

    def block(self, params: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        C = self.count_bins
        # MADE output rows: C widths, C heights, C - 1 derivatives, C lambdas, each for every coordinate
        raw_w, raw_h, raw_d, raw_l = params.transpose(-1, -2).split([C, C, C - 1, C], dim=-1)  # (B, L, .)
        widths, xs = self.knots(raw_w)
        heights, ys = self.knots(raw_h)
        end = 1.0 - self.MIN_DERIVATIVE
        derivs = F.pad(F.softplus(raw_d) + self.MIN_DERIVATIVE, (1, 1), value=end)
        lambdas = (1 - 2 * self.MIN_LAMBDA) * torch.sigmoid(raw_l) + self.MIN_LAMBDA
        idx = ((z.unsqueeze(-1) >= xs + self.EPS).sum(-1, keepdim=True) - 1).clamp(0, C - 1)

        def pick(t: Tensor) -> Tensor:
            return t.gather(-1, idx).squeeze(-1)

        w_k, x_k, y_k, h_k = pick(widths), pick(xs), pick(ys), pick(heights)
        d_k, d_k1, lam = pick(derivs[..., :-1]), pick(derivs[..., 1:]), pick(lambdas)
        delta = h_k / w_k
        wb = torch.sqrt(d_k / d_k1)  # weights (w_a, w_b, w_c) with w_a = 1
        wc = (lam * d_k + (1.0 - lam) * wb * d_k1) / delta
        ya, yb = y_k, y_k + h_k
        yc = ((1.0 - lam) * ya + lam * wb * yb) / ((1.0 - lam) + lam * wb)
        theta = (z - x_k) / w_k
        left = theta <= lam
        num = torch.where(left, ya * (lam - theta) + wc * yc * theta, wc * yc * (1 - theta) + wb * yb * (theta - lam))
        den = torch.where(left, (lam - theta) + wc * theta, wc * (1 - theta) + wb * (theta - lam))
        slope_num = torch.where(left, wc * lam * (yc - ya), wb * wc * (1 - lam) * (yb - yc)) / w_k
        log_slope = torch.log(slope_num) - 2 * torch.log(torch.abs(den))
        inside = (z >= -self.bound) & (z <= self.bound)
        y = torch.where(inside, num / den, z)
        return y, torch.where(inside, log_slope, torch.zeros_like(log_slope)).sum(-1)


FLOWS: dict[str, type[TorchFlow]] = {
    "mean_field": MeanFieldFlow,
    "planar": PlanarFlow,
    "radial": RadialFlow,
    "householder": HouseholderFlow,
    "iaf": IAFFlow,
    "spline": SplineFlow,
}


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TorchVAE(nn.Module):
    """Encoder x -> h (MLP with a final ReLU), base head h -> (mu, softplus^-1 sigma), flow, decoder z -> logits."""

    def __init__(
        self,
        data_dim: int,
        hidden: Sequence[int],
        latent_dim: int,
        flow: str = "mean_field",
        num_flows: int = 0,
        min_scale: float = 1e-4,
        **flow_options: object,
    ) -> None:
        super().__init__()
        self.latent_dim, self.min_scale = latent_dim, min_scale
        self.encoder = nn.Sequential(*mlp([data_dim, *hidden]), nn.ReLU())
        self.base_head = nn.Linear(hidden[-1], 2 * latent_dim)
        self.flow = FLOWS[flow](latent_dim, hidden[-1], num_flows, **flow_options)
        self.decoder = mlp([latent_dim, *reversed(hidden), data_dim])

    def loss(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """Minus the single-sample ELBO summed over the batch; ``eps`` ~ N(0, I) of shape (B, L) if not given."""
        h = self.encoder(x)
        loc, raw_scale = self.base_head(h).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        if eps is None:
            eps = torch.randn_like(loc)
        if self.flow.orthogonal:  # a rotation acts on z0 = mu + sigma * eps
            z, log_det = self.flow(loc + scale * eps, h)
        else:  # the flow acts on the standardized noise (guide.standardize)
            eps_k, log_det = self.flow(eps, h)
            z = loc + scale * eps_k
        log_q0 = (-0.5 * eps * eps - torch.log(scale) - HALF_LOG_2PI).sum(-1)
        log_prior = (-0.5 * z * z - HALF_LOG_2PI).sum(-1)
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        return -(log_lik + log_prior - log_q0 + log_det).sum()

    @staticmethod
    def flowvae_key(key: str) -> str:
        """The name in a :class:`pyro_flowvae.models.vae.FlowVAE` state dict of this module's ``key``."""
        if key.startswith("decoder."):
            return "model.decoder.net." + key.removeprefix("decoder.")
        if key.startswith("encoder."):
            return "guide.encoder.net." + key.removeprefix("encoder.")
        if key.startswith("flow.blocks."):
            block, rest = key.removeprefix("flow.blocks.").split(".", 1)
            return f"guide.flow.blocks.{block}.nn.{rest}"
        return "guide." + key

    @torch.no_grad()
    def load_flowvae(self, state: dict[str, Tensor]) -> TorchVAE:
        """Copy the weights of a FlowVAE's ``state_dict()``; raise if its MADE masks differ from this one's."""
        for key, value in self.state_dict().items():
            theirs = state[self.flowvae_key(key)]
            if key.endswith(".mask"):
                if not torch.equal(theirs.to(value), value):
                    raise ValueError(f"MADE mask {key} differs from the FlowVAE's {self.flowvae_key(key)}")
            else:
                value.copy_(theirs)
        return self


@torch.no_grad()
def clip_grad_norms_(params: Sequence[Tensor], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= ``max_norm`` separately (what ``pyro.optim`` clip_args do)."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)
