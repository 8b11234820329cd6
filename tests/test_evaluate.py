"""Latent statistics: KL per dimension (exact for mean-field, moment-matched for flows) and active units."""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from pyro_flowvae.config import load_config
from pyro_flowvae.evaluation.images import evaluate, latent_statistics, spread_subset
from pyro_flowvae.models.vae import FlowVAE


def vae_for(flow: str) -> FlowVAE:
    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=2", "model.latent_dim=3", "model.hidden=[8]"])
    return FlowVAE.from_config(config, 6)


def test_mean_field_kl_per_dim_is_the_analytic_kl():
    vae = vae_for("mean_field")
    x = (torch.rand(50, 6) < 0.5).float()
    stats = latent_statistics(vae, x, batch_size=20)
    base = vae.guide.get_base_dist(vae.guide.get_context(x)).base_dist
    expected = kl_divergence(Normal(base.loc, base.scale), Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(torch.tensor(stats["kl_per_dim"]), expected.detach(), atol=1e-5)
    activity = base.loc.detach().var(0)
    assert torch.allclose(torch.tensor(stats["activity_per_dim"]), activity, atol=1e-6)
    assert stats["active_units"] == int((activity > 0.01).sum())


def test_flow_kl_per_dim_uses_the_moments_of_the_flow_samples():
    vae = vae_for("iaf")
    x = (torch.rand(10, 6) < 0.5).float()
    torch.manual_seed(0)
    stats = latent_statistics(vae, x, num_samples=4000)
    z = vae.guide.get_posterior(x).sample((4000,))
    m, v = z.mean(0), z.var(0)
    expected = (0.5 * (v + m.pow(2) - 1.0 - v.log())).mean(0)
    assert torch.allclose(torch.tensor(stats["kl_per_dim"]), expected, atol=0.02)


def test_spread_subset_samples_the_whole_set_evenly():
    idx = spread_subset(10000, 500)
    assert idx.shape == (500,) and idx.unique().numel() == 500
    assert idx[0] == 0 and idx[-1] >= 9980 and (idx.diff() == 20).all()
    assert torch.equal(spread_subset(7, None), torch.arange(7)) and torch.equal(spread_subset(7, 9), torch.arange(7))
    assert spread_subset(10, 3).tolist() == [0, 3, 6]


def test_evaluate_scores_a_spread_subset_not_the_first_rows():
    """An ordered test set (empty images first, then full ones): the first rows would misstate its log p(x)."""
    config = load_config(None, ["model.latent_dim=2", "model.hidden=[8]", "eval.iw_samples=4", "eval.test_limit=10"])
    vae = FlowVAE.from_config(config, 6)
    x = torch.cat([torch.zeros(50, 6), torch.ones(50, 6)])
    figures = evaluate(vae, x, config.eval)
    assert figures["num_test"] == 10
    spread = evaluate(vae, x[spread_subset(100, 10)], config.eval.__class__(iw_samples=4))
    first = evaluate(vae, x[:10], config.eval.__class__(iw_samples=4))
    assert abs(figures["test_log_px"] - spread["test_log_px"]) < abs(figures["test_log_px"] - first["test_log_px"])
