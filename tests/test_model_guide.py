"""The model and the guides as Pyro programs: plain SVI trains them, for every flow and every ELBO."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_flowvae.config import load_config
from pyro_flowvae.flows import flow_names
from pyro_flowvae.guides import AmortizedFlowGuide, ConstantContext
from pyro_flowvae.infer.annealing import ScaleLatents, kl_weight
from pyro_flowvae.models.nets import Encoder
from pyro_flowvae.models.vae import FlowVAE


def binary_data(n: int = 64, dim: int = 10) -> torch.Tensor:
    torch.manual_seed(1)
    prototypes = (torch.rand(2, dim) < 0.5).float()
    x = prototypes[torch.randint(0, 2, (n,))]
    flips = (torch.rand(n, dim) < 0.1).float()
    return (x + flips) % 2


def small_vae(flow: str, likelihood: str = "bernoulli", dim: int = 10) -> FlowVAE:
    config = load_config(
        None,
        [
            f"guide.flow={flow}",
            "guide.num_flows=2",
            "model.latent_dim=3",
            "model.hidden=[16]",
            f"model.likelihood={likelihood}",
        ],
    )
    return FlowVAE.from_config(config, dim)


def mean_loss(svi: SVI, x: torch.Tensor, steps: int) -> list[float]:
    return [svi.step(x) / x.shape[0] for _ in range(steps)]


@pytest.mark.parametrize("flow", flow_names())
def test_plain_svi_lowers_the_loss_for_every_flow(flow):
    x = binary_data()
    vae = small_vae(flow)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = mean_loss(svi, x, 100)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.5, (flow, first, last)


@pytest.mark.parametrize("flow", flow_names())
def test_vectorized_particles_work_and_average_like_sequential_ones(flow):
    x = binary_data(16)
    vae = small_vae(flow)
    vectorized = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    sequential = Trace_ELBO(num_particles=100)
    with torch.no_grad():
        a = vectorized.loss(vae.model, vae.guide, x)
        b = sequential.loss(vae.model, vae.guide, x)
    assert a == pytest.approx(b, rel=0.03)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_each_likelihood_trains_under_trace_mean_field_elbo(likelihood):
    x = binary_data() * 0.8 + 0.1 if likelihood != "bernoulli" else binary_data()
    vae = small_vae("mean_field", likelihood)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    losses = mean_loss(svi, x, 120)
    assert sum(losses[-10:]) < sum(losses[:10])


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace. is deprecated:FutureWarning")
@pytest.mark.parametrize("flow", ["mean_field", "iaf", "planar"])
def test_jit_trace_elbo_matches_trace_elbo(flow):
    x = binary_data(8)
    vae = small_vae(flow)
    pyro.set_rng_seed(3)
    eager = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()
    jit = JitTrace_ELBO(ignore_jit_warnings=True)
    compiled = []
    for _ in range(3):  # the first call traces (drawing twice); later calls run the compiled graph
        pyro.set_rng_seed(3)
        compiled.append(jit.differentiable_loss(vae.model, vae.guide, x).item())
    assert compiled[1] == pytest.approx(eager, rel=1e-5) and compiled[2] == pytest.approx(eager, rel=1e-5)


def test_guide_samples_have_the_guide_density():
    """The TransformedDistribution the guide samples from scores its own samples like the flow says."""
    vae = small_vae("iaf")
    x = binary_data(4)
    posterior = vae.guide.get_posterior(x)
    z = posterior.rsample()
    context = vae.guide.get_context(x)
    base = vae.guide.get_base_dist(context).base_dist
    transforms = vae.guide.get_transforms(context)
    eps = (z - base.loc) / base.scale  # guide.standardize: z = mu + sigma * f(eps0)
    log_det = torch.zeros(4)
    for t in reversed(transforms):
        eps_prev = t.inv(eps)
        log_det = log_det + t.log_abs_det_jacobian(eps_prev, eps)
        eps = eps_prev
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(eps).sum(-1) - log_det - base.scale.log().sum(-1)
    assert torch.allclose(posterior.log_prob(z), expected, atol=1e-5)


@pytest.mark.parametrize("standardize", [True, False])
def test_a_householder_guide_has_the_full_covariance_of_a_rotated_gaussian(standardize):
    """A Householder flow is a rotation U: on z0 = mu + sigma * eps it gives N(U mu, U diag(sigma^2) U^T), a full
    covariance. On the standardized noise it would change nothing (U eps is N(0, I) again), so the guide applies it
    to z0 whatever guide.standardize says; the sample covariance must have U's off-diagonal terms."""

    class Context(torch.nn.Module):
        context_dim = 1

        def forward(self, x):
            return torch.ones(x.shape[0], 1)

    torch.manual_seed(0)
    guide = AmortizedFlowGuide(Context(), 2, flow="householder", num_flows=1, standardize=standardize)
    with torch.no_grad():
        guide.base_head.weight.zero_()
        guide.base_head.bias.copy_(torch.tensor([1.0, 0.0, 1.0, -3.0]))  # mu = (1, 0), sigma = softplus(1, -3)
        guide.flow.head.weight.zero_()
        guide.flow.head.bias.copy_(torch.tensor([1.0, 0.3]))  # one reflection, v = (1, 0.3)
    assert not guide.flow_on_noise
    mu = torch.tensor([1.0, 0.0])
    sigma = torch.nn.functional.softplus(torch.tensor([1.0, -3.0])) + guide.min_scale
    v = torch.tensor([1.0, 0.3])
    reflection = torch.eye(2) - 2 * torch.outer(v, v) / v.dot(v)
    z = guide.get_posterior(torch.zeros(20000, 1)).sample()
    assert torch.allclose(z.mean(0), reflection @ mu, atol=0.03)
    expected = reflection @ torch.diag(sigma**2) @ reflection.T
    assert torch.allclose(torch.cov(z.T), expected, atol=0.03), (torch.cov(z.T), expected)
    assert abs(float(expected[0, 1])) > 0.2  # far from diagonal: the test could tell


def test_a_planar_layer_on_standardized_noise_is_a_planar_layer_on_z():
    """The identity the guide's docstring states: (u, w, b) on eps is (sigma u, w / sigma, b - (w / sigma)^T mu) on z,
    with the same w^T u_hat, so both orders define one family of planar flows."""
    from pyro_flowvae.flows.planar import FusedPlanar

    torch.manual_seed(0)
    L = 3
    mu, sigma = torch.randn(L), torch.rand(L) + 0.5
    b, u, w = torch.randn(1, 1), torch.randn(1, L), torch.randn(1, L)
    eps = torch.randn(10, L)
    on_eps = mu + sigma * FusedPlanar((b, u, w))(eps)
    u_hat = FusedPlanar.u_hat(u, w)
    u_z, w_z = sigma * u_hat, w / sigma
    b_z = b - (w_z * mu).sum(-1, keepdim=True)
    z0 = mu + sigma * eps
    on_z = z0 + u_z * torch.tanh(z0 @ w_z.T + b_z)
    assert torch.allclose(on_eps, on_z, atol=1e-6)
    assert torch.allclose((w_z * u_z).sum(), (w * u_hat).sum())


def test_scale_latents_scales_only_latent_sites():
    x = binary_data(8)
    vae = small_vae("iaf")  # replaying a planar guide would re-score z outside its trace: it has no inverse
    beta = 0.3
    guide_trace = pyro.poutine.trace(ScaleLatents(beta)(vae.guide)).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(ScaleLatents(beta)(vae.model), guide_trace)).get_trace(x)
    plain_guide = pyro.poutine.trace(pyro.poutine.replay(vae.guide, guide_trace)).get_trace(x)
    plain_model = pyro.poutine.trace(pyro.poutine.replay(vae.model, guide_trace)).get_trace(x)

    def log_prob(trace, site):
        trace.compute_log_prob()
        return trace.nodes[site]["log_prob_sum"].item()

    with torch.no_grad():
        assert log_prob(model_trace, "x") == pytest.approx(log_prob(plain_model, "x"))
        assert log_prob(model_trace, "z") == pytest.approx(beta * log_prob(plain_model, "z"))
        assert log_prob(guide_trace, "z") == pytest.approx(beta * log_prob(plain_guide, "z"))
    assert kl_weight(0, 10, 0.01) == 0.01 and kl_weight(5, 10, 0.0) == 0.5 and kl_weight(10, 10, 0.01) == 1.0
    with pytest.raises(ValueError, match="KL weight must be > 0"):
        ScaleLatents(0.0)


def test_flow_guide_on_a_users_own_model():
    """A user's model with a differently named latent site and plate, and extra arguments."""
    torch.manual_seed(0)
    weights = torch.randn(3, 6)
    x = torch.randn(200, 3) @ weights + 0.1 * torch.randn(200, 6)

    def my_model(data, noise=0.1):
        w = pyro.param("w", torch.randn(3, 6) * 0.1)
        with pyro.plate("obs", data.shape[0]):
            code = pyro.sample("code", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("y", dist.Normal(code @ w, noise).to_event(1), obs=data)

    guide = AmortizedFlowGuide(
        Encoder(6, [32]), latent_dim=3, flow="iaf", num_flows=2, latent_site="code", data_plate="obs"
    )
    svi = SVI(my_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, 0.1) for _ in range(300)]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert "code" in pyro.poutine.trace(guide).get_trace(x).nodes


def test_flow_guide_for_a_global_latent_with_a_constant_context():
    """No data plate: fit a banana-shaped 2-D density given by pyro.factor (as in Rezende & Mohamed fig. 3)."""

    def banana():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        log_density = -0.5 * (z[..., 0] ** 2 / 4 + (z[..., 1] - 0.5 * z[..., 0] ** 2) ** 2 / 0.25)
        pyro.factor("energy", log_density)

    results = {}
    for flow in ("mean_field", "spline"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AmortizedFlowGuide(ConstantContext(8), latent_dim=2, flow=flow, num_flows=3, data_plate=None)
        svi = SVI(banana, guide, Adam({"lr": 5e-3}), Trace_ELBO(num_particles=32, vectorize_particles=True))
        for _ in range(500):
            svi.step()
        elbo = Trace_ELBO(num_particles=4000, vectorize_particles=True)
        with torch.no_grad():
            results[flow] = elbo.loss(banana, guide)
    assert results["spline"] < results["mean_field"] - 0.1, results  # a flow fits a curved density better
