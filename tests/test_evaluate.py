"""Latent statistics: KL per dimension (exact for mean-field, moment-matched for flows) and active units."""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from pyro_flowvae.config import load_config
from pyro_flowvae.infer.evaluate import latent_statistics
from pyro_flowvae.vae import FlowVAE


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
