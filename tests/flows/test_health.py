"""The flow-health record: saturation per layer, the flow's log-determinant and how much it moves a sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_flowvae.flows.health import SATURATED, flow_health, format_flow_health, unit_slopes
from pyro_flowvae.guides import AmortizedFlowGuide

L, H = 3, 5


class Identity(nn.Module):
    context_dim = H

    def forward(self, x):
        return x


def guide(flow: str, num_flows: int = 4) -> AmortizedFlowGuide:
    torch.manual_seed(0)
    return AmortizedFlowGuide(Identity(), L, flow=flow, num_flows=num_flows)


def test_fresh_planar_is_alive_and_moves_nothing():
    record = flow_health(guide("planar"), torch.randn(20, H), num_samples=16)
    assert [layer["layer"] for layer in record["layers"]] == [1, 2, 3, 4]
    # a = w^T eps with a unit w: |a| > 2.18 (slope < 0.05) for 3% of N(0, 1)
    assert all(layer["saturated"] < 0.06 and layer["median_slope"] > 0.5 for layer in record["layers"])
    assert abs(record["mean_log_det"]) < 0.05 and record["spread_ratio"] < 0.05


def test_planar_pushed_into_its_tail_is_reported_saturated_and_a_constant_shift():
    """|w^T eps + b| >> 1 for every sample: slope ~ 0 in every unit, and the layer adds the same u_hat to every
    sample of one posterior (spread ratio ~ 0) while the shift itself is large."""
    g = guide("planar", num_flows=2)
    with torch.no_grad():
        bias = g.flow.head.bias.view(2, 2 * L + 1)
        bias[:, 0] = 20.0  # b_k
        bias[:, 1 : 1 + L] = 3.0  # u: u_hat is large
    x = torch.randn(30, H)
    record = flow_health(g, x, num_samples=16)
    assert all(layer["saturated"] == 1.0 for layer in record["layers"])
    assert record["spread_ratio"] < 1e-3 and abs(record["mean_log_det"]) < 1e-3
    eps0 = torch.randn(16, 30, L)
    (transform,) = g.get_transforms(g.get_context(x))
    assert (transform(eps0) - eps0).abs().mean() > 1.0


def test_planar_slopes_are_the_derivative_of_each_layer_along_w():
    """The slope of layer k is d tanh(a)/da at a = w_k^T z_{k-1} + b_k, recomputed here from the layers' inputs."""
    g = guide("planar", num_flows=3)
    with torch.no_grad():
        for p in g.flow.parameters():
            p.normal_()
    (transform,) = g.get_transforms(torch.randn(4, H))
    z = torch.randn(6, 4, L)
    _, u, w = transform._params
    u_hat = transform.u_hat(u, w)
    b = transform.layer_bias(u_hat).unsqueeze(-1)
    for k, slopes in enumerate(unit_slopes(transform, z)):
        a = (z * w[:, k]).sum(-1, keepdim=True) + b[:, k]
        assert torch.allclose(slopes, 1 - torch.tanh(a) ** 2, atol=1e-6)
        z = z + u_hat[:, k] * torch.tanh(a)


def test_fresh_radial_is_not_saturated_on_standardized_noise_at_full_size():
    """On eps ~ N(0, I) in L = 40 dimensions r is about sqrt(40) = 6.3; with [1]'s alpha = softplus(0) = 0.69 the
    radial slope (alpha / (alpha + r))^2 is about 0.01, every unit saturated from the start. The flow scales alpha
    by sqrt(L): slope about 0.17."""
    torch.manual_seed(0)
    g = AmortizedFlowGuide(nn.Identity(), 40, flow="radial", num_flows=4, context_dim=300)
    record = flow_health(g, torch.relu(torch.randn(50, 300)), num_samples=16)
    assert all(layer["saturated"] == 0.0 and 0.12 < layer["median_slope"] < 0.25 for layer in record["layers"])


def test_radial_slope_is_its_relative_radial_derivative():
    g = guide("radial", num_flows=1)
    with torch.no_grad():
        g.flow.head.bias.view(1, L + 2)[:, :L] = 50.0  # the centre z0 far from every sample: r >> alpha
    record = flow_health(g, torch.randn(10, H), num_samples=8)
    assert record["layers"][0]["saturated"] == 1.0
    (transform,) = g.get_transforms(torch.randn(2, H))
    x = torch.zeros(2, L) + 50.0  # at the centre (up to the head's small weights), r ~ 0: slope ~ 1
    assert torch.allclose(unit_slopes(transform, x)[0], torch.ones(2, 1), atol=0.05)


@pytest.mark.parametrize("name", ["sylvester_orthogonal", "sylvester_triangular"])
def test_sylvester_layers_report_one_slope_per_unit(name):
    record = flow_health(guide(name, num_flows=2), torch.randn(10, H), num_samples=8)
    assert [layer["units"] for layer in record["layers"]] == [L, L]
    assert all(layer["saturated"] < 0.05 for layer in record["layers"])


def test_flows_without_units_report_log_det_only_and_mean_field_nothing():
    record = flow_health(guide("iaf", num_flows=2), torch.randn(10, H), num_samples=8)
    assert record["layers"] == [] and record["mean_log_det"] is not None
    mean_field = flow_health(guide("mean_field", num_flows=0), torch.randn(10, H))
    assert mean_field["mean_log_det"] is None
    assert "has no flow" in format_flow_health(mean_field)


def test_health_leaves_the_global_rng_alone_and_is_seeded():
    g = guide("planar")
    x = torch.randn(10, H)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = flow_health(g, x, seed=4)
    assert torch.equal(torch.rand(3), expected)
    assert flow_health(g, x, seed=4) == first


def test_format_names_the_worst_layer_and_the_gap():
    g = guide("planar", num_flows=2)
    with torch.no_grad():
        g.flow.head.bias.view(2, 2 * L + 1)[1, 0] = 30.0  # only layer 2 saturated
    text = format_flow_health(flow_health(g, torch.randn(10, H)), gap=3.25)
    assert "worst layer 2 100%" in text and "gap log p(x) - ELBO: 3.25 nats" in text
    assert f"slope < {SATURATED}" in text
