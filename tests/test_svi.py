"""The SVI pieces: the device-side Trace_ELBO equals Pyro's, value and gradient; the step stays on device."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_flowvae.config import TrainConfig, load_config
from pyro_flowvae.infer.svi import DeviceSVI, DeviceTrace_ELBO, build_elbo, build_optimizer
from pyro_flowvae.vae import FlowVAE


def loss_and_grads(elbo, model, guide, params, *args):
    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(model, guide, *args)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), grads


@pytest.mark.parametrize("flow", ["mean_field", "planar", "iaf"])
@pytest.mark.parametrize("particles", [1, 3])
def test_device_trace_elbo_equals_pyros_trace_elbo(flow, particles):
    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=2", "model.latent_dim=3", "model.hidden=[8]"])
    vae = FlowVAE.from_config(config, 6)
    x = (torch.rand(5, 6) < 0.5).float()
    params = list(vae.parameters())
    kwargs = {"num_particles": particles, "vectorize_particles": particles > 1, "max_plate_nesting": 1}
    ours = loss_and_grads(DeviceTrace_ELBO(**kwargs), vae.model, vae.guide, params, x)
    pyros = loss_and_grads(Trace_ELBO(**kwargs), vae.model, vae.guide, params, x)
    assert ours[0] == pytest.approx(pyros[0], rel=1e-6)
    for a, b in zip(ours[1], pyros[1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_device_trace_elbo_keeps_score_function_terms():
    """A discrete latent (not reparameterizable): the surrogate's gradient must match Pyro's REINFORCE term."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(2.0 * c, 1.0), obs=x)

    def guide(x):
        logit = pyro.param("logit", torch.zeros(x.shape[0]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=logit))

    x = torch.tensor([0.1, 1.9, 2.2])
    guide(x)
    params = [pyro.param("logit").unconstrained()]
    ours = loss_and_grads(DeviceTrace_ELBO(), model, guide, params, x)
    pyros = loss_and_grads(Trace_ELBO(), model, guide, params, x)
    assert ours[0] == pytest.approx(pyros[0])
    assert torch.allclose(ours[1][0], pyros[1][0]) and ours[1][0].abs().sum() > 0


def test_device_svi_step_returns_a_tensor_and_updates_parameters():
    config = load_config(None, ["model.latent_dim=2", "model.hidden=[8]"])
    vae = FlowVAE.from_config(config, 6)
    before = [p.detach().clone() for p in vae.parameters()]
    svi = DeviceSVI(vae.model, vae.guide, build_optimizer(config.train), build_elbo(config.train))
    loss = svi.step((torch.rand(4, 6) < 0.5).float())
    assert isinstance(loss, torch.Tensor) and not loss.requires_grad
    assert all(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert all(p.grad is None for p in vae.parameters())  # grads released after the step


@pytest.mark.parametrize("flow", ["mean_field", "iaf"])
def test_device_svi_steps_match_pyro_svi_bitwise(flow):
    """Releasing the grads (p.grad = None) instead of Pyro's zero_grads changes no value: 0 + g = g exactly."""
    from pyro.infer import SVI

    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=1", "model.latent_dim=2", "model.hidden=[8]"])
    x = (torch.rand(5, 4, 6) < 0.5).float()
    finals = []
    for cls in (DeviceSVI, SVI):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        vae = FlowVAE.from_config(config, 6)
        svi = cls(vae.model, vae.guide, build_optimizer(config.train), build_elbo(config.train))
        for batch in x:
            svi.step(batch)
        finals.append([p.detach().clone() for p in vae.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


@pytest.mark.parametrize(("name", "cls"), [("trace", "DeviceTrace_ELBO"), ("mean_field", "TraceMeanField_ELBO")])
def test_build_elbo_follows_the_config(name, cls):
    elbo = build_elbo(TrainConfig(elbo=name, num_particles=4))
    assert type(elbo).__name__ == cls and elbo.num_particles == 4 and elbo.vectorize_particles


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flow", ["mean_field", "planar", "iaf"])
def test_training_steps_never_synchronise_with_the_host_on_cuda(flow):
    from pyro_flowvae.data import iterate_minibatches

    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=2", "model.latent_dim=4", "model.hidden=[32]"])
    vae = FlowVAE.from_config(config, 20).cuda()
    x = torch.rand(256, 20, device="cuda")
    svi = DeviceSVI(vae.model, vae.guide, build_optimizer(config.train), build_elbo(config.train))
    generator = torch.Generator(device="cuda").manual_seed(0)
    with pyro.validation_enabled(False):
        svi.step(torch.bernoulli(x[:32]))  # first step: optimizer state is created
        losses = []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in iterate_minibatches(x, 32, generator=generator, dynamic_binarize=True):
                losses.append(svi.step(batch))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


def _fixed_noise_loss(vae: FlowVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-ELBO per datapoint for given base noise eps: z_0 = loc + scale * eps pushed through the guide's flow,
    log q(z_K) = log q_0(z_0) - sum_k log|det J_k|, scored by the model conditioned on z_K."""
    from pyro import poutine

    posterior = vae.guide.get_posterior(x)
    base = getattr(posterior, "base_dist", posterior)  # mean-field: the Gaussian itself
    z = base.mean + base.stddev * eps
    log_q = base.log_prob(z)
    log_q = log_q.sum(-1) if log_q.dim() > 1 else log_q
    for transform in getattr(posterior, "transforms", []):
        y = transform(z)
        log_det = transform.log_abs_det_jacobian(z, y)
        log_q = log_q - (log_det.sum(-1) if log_det.dim() > 1 else log_det)
        z = y
    trace = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x)
    trace.compute_log_prob()
    log_p = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
    return log_q - log_p


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
@pytest.mark.parametrize("flow", ["mean_field", "planar", "radial", "householder", "iaf", "spline"])
def test_loss_on_the_device_equals_the_cpu_loss_for_the_same_weights_and_noise(flow, device):
    """The whole per-datapoint loss (encoder, flow, log-dets, decoder, likelihood) on the device matches the CPU
    float64 loss for fixed weights, batch and base noise (TF32 off: float32 matmuls on both)."""
    import copy

    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=2", "model.latent_dim=4", "model.hidden=[32]"])
    torch.manual_seed(0)
    vae = FlowVAE.from_config(config, 20).eval()
    x = (torch.rand(16, 20) < 0.4).float()
    eps = torch.randn(16, 4)
    with torch.no_grad(), pyro.validation_enabled(False):
        reference = _fixed_noise_loss(copy.deepcopy(vae).double(), x.double(), eps.double())
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            moved = copy.deepcopy(vae).to(device)
            loss = _fixed_noise_loss(moved, x.to(device), eps.to(device))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    assert loss.device.type == device and loss.shape == (16,)
    assert torch.allclose(loss.double().cpu(), reference, rtol=1e-4, atol=1e-3), (loss, reference)
