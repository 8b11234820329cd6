"""The SVI pieces: the device-side Trace_ELBO equals Pyro's; the training step is a plain torch step on device."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_flowvae.config import TrainConfig, load_config
from pyro_flowvae.errors import ConfigError
from pyro_flowvae.infer.optim import build_optimizer
from pyro_flowvae.infer.svi import IWAE_ELBO, AnnealedELBO, DeviceTrace_ELBO, build_elbo
from pyro_flowvae.infer.trainer import training_step
from pyro_flowvae.models.vae import FlowVAE


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


def _vae(flow: str = "mean_field", seed: int = 1) -> FlowVAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    config = load_config(None, [f"guide.flow={flow}", "guide.num_flows=1", "model.latent_dim=2", "model.hidden=[8]"])
    return FlowVAE.from_config(config, 6)


@pytest.mark.parametrize("flow", ["mean_field", "iaf"])
def test_training_step_equals_a_hand_written_torch_loop_bitwise(flow):
    """AnnealedELBO + training_step is Pyro's differentiable loss, backward, clip_grad_norm_ and Adam: nothing else."""
    x = (torch.rand(5, 4, 6) < 0.5).float()
    train = TrainConfig(clip_norm=0.5)  # small: the clipping is active
    ours = _vae(flow)
    params = list(ours.parameters())
    loss, optimizer = AnnealedELBO(ours.model, ours.guide, build_elbo(train)), build_optimizer(params, train)
    theirs = _vae(flow)
    their_params = list(theirs.parameters())
    their_optimizer = torch.optim.Adam(their_params, lr=train.lr)
    for step, batch in enumerate(x):
        pyro.set_rng_seed(step)
        value = training_step(loss, optimizer, params, (batch,), train.clip_norm)
        assert isinstance(value, torch.Tensor) and not value.requires_grad
        assert all(p.grad is None for p in params)  # gradients released
        pyro.set_rng_seed(step)
        their_value = DeviceTrace_ELBO().differentiable_loss(theirs.model, theirs.guide, batch)
        their_value.backward()
        torch.nn.utils.clip_grad_norm_(their_params, train.clip_norm)
        their_optimizer.step()
        their_optimizer.zero_grad()
        assert torch.equal(value, their_value.detach())
    assert all(torch.equal(a, b) for a, b in zip(params, their_params))


def test_pyro_optim_in_a_plain_svi_loop_takes_the_same_steps_as_the_trainer_step():
    """Users who write their own svi.step loop with pyro.optim.Adam train the same parameters the same way
    (no clipping: pyro.optim clips per parameter, the trainer globally)."""
    from pyro.infer import SVI, Trace_ELBO

    x = (torch.rand(5, 4, 6) < 0.5).float()
    ours = _vae("iaf")
    params = list(ours.parameters())
    train = TrainConfig(clip_norm=None)
    loss, optimizer = AnnealedELBO(ours.model, ours.guide, build_elbo(train)), build_optimizer(params, train)
    for step, batch in enumerate(x):
        pyro.set_rng_seed(step)
        training_step(loss, optimizer, params, (batch,), None)
    theirs = _vae("iaf")
    svi = SVI(theirs.model, theirs.guide, pyro.optim.Adam({"lr": train.lr}), Trace_ELBO())
    for step, batch in enumerate(x):
        pyro.set_rng_seed(step)
        svi.step(batch)
    assert all(torch.equal(a, b) for a, b in zip(params, theirs.parameters()))


def test_training_step_clips_the_global_gradient_norm():
    """With SGD at lr 1 the update is minus the clipped gradient: its global norm is clip_norm and its direction
    that of the raw gradient (clipping each parameter separately would give every parameter the norm clip_norm)."""
    vae = _vae("planar")
    params = list(vae.parameters())
    loss = AnnealedELBO(vae.model, vae.guide, build_elbo(TrainConfig()))
    x = (torch.rand(8, 6) < 0.5).float()
    pyro.set_rng_seed(3)
    raw = torch.autograd.grad(loss(x), params)
    before = [p.detach().clone() for p in params]
    pyro.set_rng_seed(3)
    training_step(loss, torch.optim.SGD(params, lr=1.0), params, (x,), clip_norm=0.1)
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])
    flat_raw = torch.cat([g.flatten() for g in raw])
    assert flat_raw.norm() > 1.0  # so the clipping acts
    assert update.norm() == pytest.approx(0.1, rel=1e-4)
    assert torch.allclose(update / update.norm(), flat_raw / flat_raw.norm(), atol=1e-5)


def test_annealed_elbo_weights_only_the_latent_terms():
    """-L_beta = -(log p(x|z) + beta [log p(z) - log q(z|x)]) is linear in beta at fixed noise, and the warm-up ELBO
    scores the steps with beta < 1."""
    vae = _vae("iaf")
    x = (torch.rand(8, 6) < 0.5).float()
    loss = AnnealedELBO(vae.model, vae.guide, build_elbo(TrainConfig()))
    values = {}
    for beta in (0.25, 0.5, 1.0):
        loss.kl_weight = beta
        pyro.set_rng_seed(5)
        values[beta] = float(loss(x).detach())
    assert values[0.5] - values[0.25] == pytest.approx((values[1.0] - values[0.5]) / 2, rel=1e-5)
    assert values[1.0] != pytest.approx(values[0.5])
    calls = []

    class Recording(DeviceTrace_ELBO):
        def differentiable_loss(self, *args, **kwargs):
            calls.append(self)
            return super().differentiable_loss(*args, **kwargs)

    warm, main = Recording(), Recording()
    switching = AnnealedELBO(vae.model, vae.guide, main, warmup_elbo=warm)
    switching.kl_weight = 0.5
    switching(x)
    switching.kl_weight = 1.0
    switching(x)
    assert calls == [warm, main]


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
    params = list(vae.parameters())
    loss = AnnealedELBO(vae.model, vae.guide, build_elbo(config.train))
    optimizer = build_optimizer(params, config.train)

    def step(batch):
        return training_step(loss, optimizer, params, (batch,), config.train.clip_norm)

    generator = torch.Generator(device="cuda").manual_seed(0)
    with pyro.validation_enabled(False):
        step(torch.bernoulli(x[:32]))  # first step: optimizer state is created
        losses = []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in iterate_minibatches(x, 32, generator=generator, dynamic_binarize=True):
                losses.append(step(batch))
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


def _gpvae_step_parts():
    from tests.test_gpvae import gp_config, synthetic_gp_splits

    data = synthetic_gp_splits(n=32)
    config = gp_config()
    vae = config.task.build_model(config, config.task.meta(data))
    return vae, data.train, AnnealedELBO(vae.model, vae.guide, build_elbo(config.train))


def test_a_gpvae_loss_and_its_gradient_read_no_tensor_value_on_the_host():
    """The CPU stand-in for CUDA's sync check: after the first step (which validates the regular times and
    factorises the GP covariance), the loss and its backward pass never read a value on the host."""
    from tests.priors.test_gp_prior import _HostReads

    vae, train, loss = _gpvae_step_parts()
    assert train.regular_times
    with pyro.validation_enabled(False):
        loss(*train[:8].args()).backward()  # first step: validation and the Cholesky factor
        batch = train.index_select(0, torch.tensor([3, 9, 1, 30, 7, 12, 0, 5]))
        with _HostReads():
            value = loss(*batch.args())
            value.backward()
    assert torch.isfinite(value.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpvae_training_steps_never_synchronise_with_the_host_on_cuda():
    vae, train, loss = _gpvae_step_parts()
    vae, train = vae.cuda(), train.to("cuda")
    params = list(vae.parameters())
    optimizer = build_optimizer(params, TrainConfig())
    with pyro.validation_enabled(False):
        training_step(loss, optimizer, params, train[:8].args(), 10.0)  # validation, factor, optimizer state
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = [
                training_step(loss, optimizer, params, train.index_select(0, idx).args(), 10.0)
                for idx in torch.randperm(32, device="cuda").split(8)
            ]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


def _conjugate(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
    """z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(x; 0, 2), p(z | x) = N(x / 2, 1 / 2); the guide N(loc, scale^2)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale))

    log_px = dist.Normal(0.0, 2.0**0.5).log_prob(x).sum()
    return model, guide, log_px


def test_iwae_is_exact_with_the_true_posterior_and_tightens_with_k_otherwise():
    x = torch.tensor([0.3, -1.2, 2.0, 0.7])
    model, exact, log_px = _conjugate(x, x / 2, torch.full_like(x, 0.5**0.5))
    for k in (2, 7):
        assert float(-IWAE_ELBO(k).differentiable_loss(model, exact, x)) == pytest.approx(float(log_px), abs=1e-5)
    model, poor, log_px = _conjugate(x, torch.zeros_like(x), torch.ones_like(x))
    bounds = []
    for k in (1, 10, 200):
        pyro.set_rng_seed(0)
        bounds.append(sum(float(-IWAE_ELBO(k).differentiable_loss(model, poor, x)) for _ in range(50)) / 50)
    assert bounds[0] < bounds[1] < bounds[2] < float(log_px)
    assert float(log_px) - bounds[2] < 0.1 * (float(log_px) - bounds[0])


def test_iwae_loss_gives_the_guide_a_gradient_and_refuses_non_reparameterized_sites():
    x = torch.tensor([0.3, -1.2])
    loc = torch.zeros(2, requires_grad=True)
    model, guide, _ = _conjugate(x, loc, torch.ones(2))
    IWAE_ELBO(5).differentiable_loss(model, guide, x).backward()
    assert loc.grad is not None and loc.grad.abs().sum() > 0

    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(NotImplementedError, match="reparameterized"):
        IWAE_ELBO(3).differentiable_loss(discrete_model, discrete_guide, x)


def test_temperature_annealing_weights_log_p_x_z_and_keeps_the_entropy():
    """-L_beta = -(beta log p(x, z) - log q(z | x)): at fixed noise the slope in beta is -log p(x, z) and the value
    at beta -> 0 is log q, both computed here from the traces themselves."""
    vae = _vae("planar")
    x = (torch.rand(8, 6) < 0.5).float()
    loss = AnnealedELBO(vae.model, vae.guide, build_elbo(TrainConfig()), annealing="temperature")
    pyro.set_rng_seed(5)
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    log_p, log_q = float(model_trace.log_prob_sum().detach()), float(guide_trace.log_prob_sum().detach())
    for beta in (0.2, 0.6):
        loss.kl_weight = beta
        pyro.set_rng_seed(5)
        assert float(loss(x).detach()) == pytest.approx(-(beta * log_p - log_q), rel=1e-5)


def test_iwae_and_temperature_configs_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="train.num_particles >= 2"):
        load_config(None, ["train.elbo=iwae"])
    with pytest.raises(ConfigError, match="train.annealing = 'temperature'"):
        load_config(None, ["train.annealing=temperature", "train.elbo=mean_field"])
    assert isinstance(build_elbo(load_config(None, ["train.elbo=iwae", "train.num_particles=5"]).train), IWAE_ELBO)


def test_the_flow_learns_at_its_own_rate_in_a_second_parameter_group():
    vae = _vae("planar")
    params = list(vae.parameters())
    flow_ids = {id(p) for p in vae.guide.flow.parameters()}
    optimizer = build_optimizer(params, TrainConfig(lr=1e-3, flow_lr_scale=0.1), vae.guide.flow.parameters())
    base, flow = optimizer.param_groups
    assert base["lr"] == 1e-3 and flow["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in flow["params"]} == flow_ids and not flow_ids & {id(p) for p in base["params"]}
    assert len(base["params"]) + len(flow["params"]) == len(params)
    single = build_optimizer(params, TrainConfig(flow_lr_scale=1.0), vae.guide.flow.parameters())
    assert len(single.param_groups) == 1
