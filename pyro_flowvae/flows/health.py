r"""Is a trained flow alive? Saturation of its units, its log-determinant and how much it moves a sample.

A planar unit :math:`\tanh(\mathbf{w}^T\mathbf{z} + b)` whose pre-activation sits far out in a tail has slope
:math:`\tanh' \approx 0`: it adds a constant :math:`\hat{\mathbf{u}}` (or its negative) to every sample of one
posterior, its log-determinant is 0 and no gradient reaches :math:`\mathbf{w}` and b. A flow whose units are
all saturated is a mean-field guide shifted by a constant, at the cost of a flow. :func:`flow_health` measures,
on posterior samples of some data:

- per layer with units (planar, radial, Sylvester), the share of saturated units, slope below
  :data:`SATURATED`, and the median slope; the slope of a radial layer is
  :math:`(\alpha / (\alpha + r))^2`, its derivative along r relative to its largest value;
- the mean log-determinant :math:`\mathbb{E}_q \log|\det \partial f / \partial \epsilon_0|` of the flow (the
  affine map to :math:`\mu + \sigma\,\cdot` excluded), in nats;
- ``spread_ratio``: the spread of :math:`\epsilon_K - \epsilon_0` within one datapoint's posterior relative to the
  spread of :math:`\epsilon_0`, averaged over datapoints: about 0 for a flow that is a constant shift.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

import torch
from pyro.distributions.transforms.radial import ConditionedRadial
from torch import Tensor
from torch.distributions import Transform
from torch.nn import functional as F

from pyro_flowvae.flows.planar import FusedPlanar
from pyro_flowvae.flows.sylvester import SylvesterTransform

__all__ = ["SATURATED", "unit_slopes", "flow_health", "format_flow_health"]

#: A unit whose slope is below this is saturated (the threshold of the planar-flow diagnosis).
SATURATED = 0.05


@singledispatch
def unit_slopes(transform: Transform, x: Tensor) -> list[Tensor]:
    """The slopes in [0, 1] of the units of each layer of ``transform`` at input x, one tensor
    ``(*sample, *batch, units)`` per layer; empty for a transform without saturating units."""
    return []


@unit_slopes.register
def _(transform: FusedPlanar, x: Tensor) -> list[Tensor]:
    _, u, w = transform._params
    u_hat = transform.u_hat(u, w)
    bias = transform.layer_bias(u_hat)
    slopes = []
    z = x
    for k in range(transform.num_layers):
        act = torch.tanh((z * w[..., k, :]).sum(-1, keepdim=True) + bias[..., k : k + 1])
        slopes.append(1.0 - act * act)
        z = z + u_hat[..., k, :] * act
    return slopes


@unit_slopes.register
def _(transform: ConditionedRadial, x: Tensor) -> list[Tensor]:
    x0, alpha_prime, _ = transform._params() if callable(transform._params) else transform._params
    alpha = F.softplus(alpha_prime)
    r = (x - x0).norm(dim=-1, keepdim=True)
    return [(alpha / (alpha + r)).pow(2)]


@unit_slopes.register
def _(transform: SylvesterTransform, x: Tensor) -> list[Tensor]:
    return [transform.slopes(x)]


def _layer_name(transform: Transform) -> str:
    return {FusedPlanar: "planar", ConditionedRadial: "radial", SylvesterTransform: "sylvester"}.get(
        type(transform), type(transform).__name__
    )


@torch.no_grad()
def flow_health(guide: Any, x: Tensor, num_samples: int = 32, seed: int = 0) -> dict[str, Any]:
    r"""The flow-health record of an :class:`~pyro_flowvae.guides.AmortizedFlowGuide` on data x.

    Draws ``num_samples`` samples of :math:`\epsilon_0` per row of x and runs them through the flow layer by
    layer. Returns ``{"flow", "layers": [{"layer", "kind", "units", "saturated", "median_slope"}], "mean_log_det",
    "spread_ratio", "num_datapoints", "num_samples", "threshold"}`` (``layers`` empty for flows without
    saturating units, everything but the counts ``None`` for mean-field).
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        context = guide.get_context(x)
        transforms = guide.get_transforms(context)
        record: dict[str, Any] = {
            "flow": guide.flow_name,
            "standardize": bool(getattr(guide, "flow_on_noise", False)),  # the flow read eps (not z0)
            "num_datapoints": int(x.shape[0]),
            "num_samples": num_samples,
            "threshold": SATURATED,
            "layers": [],
            "mean_log_det": None,
            "spread_ratio": None,
        }
        if not transforms:
            return record
        flow_input, _ = guide.get_flow_input(context)
        eps0 = flow_input.sample((num_samples,))  # (S, B, L)
        eps, log_det = eps0, torch.zeros(eps0.shape[:-1], dtype=eps0.dtype, device=eps0.device)
        index = 0
        for transform in transforms:
            for slopes in unit_slopes(transform, eps):
                index += 1
                record["layers"].append(
                    {
                        "layer": index,
                        "kind": _layer_name(transform),
                        "units": int(slopes.shape[-1]),
                        "saturated": float((slopes < SATURATED).double().mean()),
                        "median_slope": float(slopes.double().median()),
                    }
                )
            out = transform(eps)
            log_det = log_det + transform.log_abs_det_jacobian(eps, out)
            eps = out
        change_spread = (eps - eps0).std(dim=0).mean(-1)  # (B,)
        record["mean_log_det"] = float(log_det.double().mean())
        record["spread_ratio"] = float((change_spread / eps0.std(dim=0).mean(-1)).double().mean())
        return record
    finally:
        torch.random.set_rng_state(generator_state)


def format_flow_health(record: dict[str, Any], gap: float | None = None) -> str:
    """A few lines for the console: the worst and median layer's saturation, log-det, spread and the gap."""
    if record.get("mean_log_det") is None:
        return f"flow health: {record['flow']} has no flow"
    lines = [
        f"flow health ({record['flow']}, {record['num_datapoints']} datapoints x {record['num_samples']} samples): "
        f"mean log|det J| {record['mean_log_det']:.2f} nats, spread of the flow's change "
        f"{record['spread_ratio']:.2f} of the input's"
    ]
    if record["layers"]:
        shares = [layer["saturated"] for layer in record["layers"]]
        worst = max(range(len(shares)), key=shares.__getitem__)
        median = sorted(shares)[len(shares) // 2]
        lines.append(
            f"  saturated units (slope < {record['threshold']}): median layer {median:.0%}, worst layer "
            f"{record['layers'][worst]['layer']} {shares[worst]:.0%}"
        )
    if gap is not None:
        lines.append(f"  gap log p(x) - ELBO: {gap:.2f} nats")
    return "\n".join(lines)
