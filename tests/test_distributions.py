"""The fused event distributions score exactly what Pyro's composition scores, and behave like it in plates."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_flowvae.models.distributions import BernoulliEvent, StandardNormalEvent


def test_bernoulli_event_equals_bernoulli_to_event_bitwise():
    logits = torch.randn(5, 7) * 3
    x = (torch.rand(5, 7) < 0.5).float()
    ours, pyros = BernoulliEvent(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert torch.equal(ours.log_prob(x), pyros.log_prob(x))
    assert ours.event_shape == pyros.event_shape and ours.batch_shape == pyros.batch_shape
    assert torch.equal(ours.mean, pyros.mean)
    # broadcasting over leading sample dimensions, as vectorized particles do
    x3 = (torch.rand(3, 5, 7) < 0.5).float()
    assert torch.equal(ours.log_prob(x3), pyros.log_prob(x3))
    wide = ours.expand((3, 5))
    assert isinstance(wide, BernoulliEvent) and wide.batch_shape == (3, 5)
    assert torch.equal(wide.log_prob(x3), pyros.expand((3, 5)).log_prob(x3))


def test_standard_normal_event_equals_the_expanded_normal():
    loc, scale = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    ours = StandardNormalEvent(loc, scale, (6,))
    pyros = dist.Normal(loc, scale).expand((6, 4)).to_event(1)
    z = torch.randn(2, 6, 4, dtype=torch.float64) * 2
    torch.testing.assert_close(ours.log_prob(z), pyros.log_prob(z), rtol=1e-14, atol=1e-12)
    assert ours.batch_shape == (6,) and ours.event_shape == (4,)
    assert ours.rsample((3,)).shape == (3, 6, 4) and ours.has_rsample
    wide = ours.expand((2, 6))
    assert isinstance(wide, StandardNormalEvent) and wide.batch_shape == (2, 6)
    torch.testing.assert_close(wide.log_prob(z), pyros.expand((2, 6)).log_prob(z), rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("particles", [1, 3])
def test_they_score_the_same_elbo_in_a_plate_with_vectorized_particles(particles):
    x = (torch.rand(5, 7) < 0.5).float()
    w = torch.randn(4, 7)

    def model(fused):
        with pyro.plate("data", 5):
            prior = (
                StandardNormalEvent(torch.zeros(4), torch.ones(4))
                if fused
                else dist.Normal(0.0, 1.0).expand([4]).to_event(1)
            )
            z = pyro.sample("z", prior)
            logits = z @ w
            lik = BernoulliEvent(logits) if fused else dist.Bernoulli(logits=logits).to_event(1)
            pyro.sample("x", lik, obs=x)

    def guide(fused):
        with pyro.plate("data", 5):
            pyro.sample("z", dist.Normal(torch.full((5, 4), 0.3), 0.5).to_event(1))

    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    values = []
    for fused in (True, False):
        pyro.set_rng_seed(0)
        values.append(elbo.loss(model, guide, fused))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
