"""The sequence model: masked likelihood, shapes, and errors on bad inputs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_flowvae.errors import DataError
from pyro_flowvae.models.gpvae import SequenceVAEModel
from pyro_flowvae.models.likelihoods import build_likelihood
from pyro_flowvae.models.nets import Decoder
from pyro_flowvae.priors.standard_normal import StandardNormalSequencePrior

B, T, D, L = 3, 5, 4, 2


def make_model(likelihood="gaussian"):
    return SequenceVAEModel(Decoder(L, [8], D), build_likelihood(likelihood, D), StandardNormalSequencePrior(L))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    mask = (torch.rand(B, T, D, generator=g) > 0.4).float()
    times = torch.arange(T, dtype=torch.float).expand(B, T)
    return x, mask, times


def test_log_likelihood_counts_only_observed_entries():
    model = make_model()
    x, mask, times = batch()
    trace = poutine.trace(model).get_trace(x, mask, times)
    z = trace.nodes["z"]["value"]
    assert z.shape == (B, L, T)
    decoded = model.decode(z)
    expected = (dist.Normal(decoded, model.likelihood.elementwise(decoded).scale).log_prob(x) * mask).sum((-1, -2))
    trace.compute_log_prob()
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected, atol=1e-5)


def test_masked_entries_get_zero_gradient():
    """Neither the values at missing entries nor the decoder outputs there influence the loss."""
    model = make_model("bernoulli")
    x, mask, times = batch()
    x = (x > 0).float().requires_grad_(True)
    z = torch.randn(B, L, T)
    conditioned = poutine.condition(model, data={"z": z})
    trace = poutine.trace(conditioned).get_trace(x, mask, times)
    logp = trace.log_prob_sum()
    (grad_x,) = torch.autograd.grad(logp, x, retain_graph=True)
    assert torch.all(grad_x[mask == 0] == 0)
    assert torch.any(grad_x[mask == 1] != 0)
    # changing the missing values changes nothing
    x2 = torch.where(mask.bool(), x.detach(), 1 - x.detach())
    logp2 = poutine.trace(conditioned).get_trace(x2, mask, times).log_prob_sum()
    assert torch.allclose(logp.detach(), logp2)
    # a decoder output at a missing entry has zero gradient: perturb it through a hook
    decoded = model.decode(z).detach().requires_grad_(True)
    lp = model.likelihood.elementwise(decoded).mask(mask.bool()).to_event(2).log_prob(x.detach()).sum()
    (grad_d,) = torch.autograd.grad(lp, decoded)
    assert torch.all(grad_d[mask == 0] == 0) and torch.any(grad_d[mask == 1] != 0)


def test_model_vectorizes_over_particles():
    model = make_model()
    x, mask, times = batch()

    def vectorized():
        with pyro.plate("particles", 7, dim=-2):
            return model(x, mask, times)

    z = vectorized()
    assert z.shape == (7, B, L, T)


@pytest.mark.parametrize(
    "change, match",
    [
        ("mask", "mask has shape"),
        ("times", "one time stamp per step"),
        ("x", r"x must have shape \(B, T, D\)"),
    ],
)
def test_bad_shapes_are_named(change, match):
    model = make_model()
    x, mask, times = batch()
    if change == "mask":
        mask = mask[:, :-1]
    elif change == "times":
        times = times[:, :-1]
    else:
        x, mask = x[0], mask[0]
    with pytest.raises(DataError, match=match):
        model(x, mask, times)
