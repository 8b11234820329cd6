"""The GP-VAE guide: shapes, its log-density against independent computations, masking, errors, training."""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn
from torch.autograd.functional import jacobian
from torch.nn import functional as F

from pyro_flowvae.errors import ConfigError, DataError
from pyro_flowvae.guides.banded import BandedPrecisionNormal
from pyro_flowvae.guides.sequence import GPVAEGuide, SequenceEncoder

B, T, D, L = 3, 4, 5, 2
DTYPE = torch.float64
CASES = [(cov, flow) for cov in ("diagonal", "banded") for flow in ("mean_field", "planar", "iaf")]
cases = pytest.mark.parametrize("covariance, flow", CASES, ids=[f"{c}-{f}" for c, f in CASES])


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed: int = 0, dtype: torch.dtype = DTYPE) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, D), a boolean mask with about 30% missing, strictly increasing irregular times (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen, dtype=dtype)
    mask = torch.rand(B, T, D, generator=gen) > 0.3
    times = torch.cumsum(0.5 + torch.rand(B, T, generator=gen, dtype=dtype), dim=-1)
    return x, mask, times


def make_guide(covariance: str, flow: str, **kwargs) -> GPVAEGuide:
    torch.manual_seed(0)
    num_flows = 0 if flow == "mean_field" else 2
    guide = GPVAEGuide(D, L, [8], covariance=covariance, flow=flow, num_flows=num_flows, time_length=T, **kwargs)
    if covariance == "banded":  # move the banded guide well away from its diagonal initialisation
        with torch.no_grad():
            guide.head.weight[2 * L :].normal_(0.0, 0.5)
            guide.head.bias[2 * L :].normal_(0.0, 0.5)
    return guide.to(DTYPE)


def independent_base_log_prob(base: dist.TorchDistribution, z0: Tensor) -> Tensor:
    """log q0(z0) of shape (B,) from torch's own Normal / dense MultivariateNormal."""
    inner = base.base_dist
    if isinstance(inner, BandedPrecisionNormal):
        B_ = inner.bidiagonal_factor
        mvn = torch.distributions.MultivariateNormal(inner.loc, precision_matrix=B_.mT @ B_)
        return mvn.log_prob(z0).sum(-1)
    return torch.distributions.Normal(inner.loc, inner.scale).log_prob(z0).sum((-1, -2))


# -- shapes and densities -------------------------------------------------------------------------------
@cases
def test_event_shape_and_finite_log_prob(covariance, flow):
    guide = make_guide(covariance, flow)
    x, mask, times = batch()
    trace = pyro.poutine.trace(guide).get_trace(x, mask, times)
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert site["value"].shape == (B, L, T)
    assert site["fn"].batch_shape == (B,) and site["fn"].event_shape == (L, T)
    assert site["log_prob"].shape == (B,) and torch.isfinite(site["log_prob"]).all()
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert "guide$$$head.weight" in pyro.get_param_store()


@cases
def test_trace_log_prob_is_base_log_prob_minus_log_det(covariance, flow):
    """Same seed: z0 from the base, z = f(z0) reproduces the traced z, and the traced log q(z) equals
    log q0(z0) (torch Normal / dense MVN) - log|det df/dz0| (autograd Jacobian, one block per sequence)."""
    guide = make_guide(covariance, flow)
    x, mask, times = batch()
    pyro.set_rng_seed(5)
    trace = pyro.poutine.trace(guide).get_trace(x, mask, times)
    trace.compute_log_prob()
    z, log_q = trace.nodes["z"]["value"], trace.nodes["z"]["log_prob"]

    pyro.set_rng_seed(5)
    posterior = guide.get_posterior(x, mask, times)
    transformed = isinstance(posterior, dist.TransformedDistribution)
    base = posterior.base_dist if transformed else posterior
    z0 = base.rsample()
    expected = independent_base_log_prob(base, z0)
    if transformed:
        transforms = posterior.transforms

        def push(flat: Tensor) -> Tensor:
            out = flat.reshape(B, L, T)
            for t in transforms:
                out = t(out)
            return out.reshape(-1)

        torch.testing.assert_close(push(z0.reshape(-1)).reshape(B, L, T), z)
        J = jacobian(push, z0.reshape(-1).detach()).reshape(B, L * T, B, L * T)
        blocks = torch.stack([J[b, :, b, :] for b in range(B)])
        expected = expected - torch.linalg.slogdet(blocks).logabsdet
    else:
        torch.testing.assert_close(z0, z)
    torch.testing.assert_close(log_q, expected)


def test_banded_with_zero_coupling_is_the_diagonal_guide():
    """phi = 0 gives d = 1 / sigma, s = 0: the banded base is N(mu, sigma^2), read here from the head by hand."""
    guide = GPVAEGuide(D, L, [8], covariance="banded", min_scale=0.01).to(DTYPE)
    with torch.no_grad():
        guide.head.weight[2 * L :].zero_()
        guide.head.bias[2 * L :].zero_()
    x, mask, times = batch()
    h = guide.encoder(x, mask)
    out = h @ guide.head.weight.T + guide.head.bias  # (B, T, 3L)
    loc = out[..., :L].transpose(-1, -2)
    scale = (F.softplus(out[..., L : 2 * L]) + 0.01).transpose(-1, -2)
    posterior = guide.get_posterior(x, mask, times)
    value = torch.randn(B, L, T, dtype=DTYPE)
    want = torch.distributions.Normal(loc, scale).log_prob(value).sum((-1, -2))
    torch.testing.assert_close(posterior.log_prob(value), want)
    torch.testing.assert_close(posterior.base_dist.variance, scale.pow(2))


def test_banded_guide_is_the_backward_chain_of_its_docstring():
    """z_t - mu_t = phi_t (z_{t+1} - mu_{t+1}) + sigma_t eps_t gives Cov(z_t, z_{t+1}) = phi_t Var z_{t+1} and
    Var z_t = sigma_t^2 + phi_t^2 Var z_{t+1}; checked on the dense covariance, with mu, sigma, phi read by hand."""
    guide = make_guide("banded", "mean_field", min_scale=0.01)
    x, mask, times = batch()
    out = guide.head(guide.encoder(x, mask)).transpose(-1, -2)  # (B, 3L, T)
    mu, sigma, phi = out[:, :L], F.softplus(out[:, L : 2 * L]) + 0.01, torch.tanh(out[:, 2 * L :, :-1])
    inner = guide.get_posterior(x, mask, times).base_dist
    cov = inner.to_dense().covariance_matrix  # (B, L, T, T)
    var = cov.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(inner.mean, mu)
    torch.testing.assert_close(cov.diagonal(offset=1, dim1=-2, dim2=-1), phi * var[..., 1:])
    torch.testing.assert_close(var[..., :-1], sigma[..., :-1].pow(2) + phi.pow(2) * var[..., 1:])
    torch.testing.assert_close(var[..., -1], sigma[..., -1].pow(2))


def test_the_banded_coupling_is_bounded_whatever_the_head_outputs():
    """phi = tanh(.): with the coupling rows of the head pushed to +-1e4, |phi| < 1 and Var z_t stays below the
    sum of sigma^2 over the steps after t (the bound at |phi| = 1), where unbounded it would be about 1e8^(T-t)."""
    guide = make_guide("banded", "mean_field", min_scale=0.01)
    x, mask, times = batch()
    with torch.no_grad():
        guide.head.bias[2 * L :] = 1e4 * torch.sign(torch.randn(L, dtype=DTYPE))
    out = guide.head(guide.encoder(x, mask)).transpose(-1, -2)
    sigma = F.softplus(out[:, L : 2 * L]) + 0.01
    var = guide.get_posterior(x, mask, times).base_dist.variance  # (B, L, T), the O(T) recurrence
    tail_sum = sigma.pow(2).flip(-1).cumsum(-1).flip(-1)
    assert torch.isfinite(var).all() and (var <= tail_sum * (1 + 1e-6)).all()


@pytest.mark.parametrize("covariance, flow", [("diagonal", "mean_field"), ("banded", "iaf"), ("banded", "planar")])
def test_masked_out_entries_do_not_change_the_guide(covariance, flow):
    guide = make_guide(covariance, flow)
    x, mask, times = batch()
    other = x.clone()
    other[~mask] = torch.randn(int((~mask).sum()), dtype=DTYPE) * 100.0
    nan = x.masked_fill(~mask, float("nan"))
    samples = []
    for data in (x, other, nan):
        pyro.set_rng_seed(2)
        samples.append(guide(data, mask, times))
    assert torch.isfinite(samples[0]).all()
    torch.testing.assert_close(samples[1], samples[0])
    torch.testing.assert_close(samples[2], samples[0])
    # ... while an observed entry does change it
    changed = x.clone()
    changed[mask.nonzero()[0].unbind()] += 1.0
    pyro.set_rng_seed(2)
    assert not torch.allclose(guide(changed, mask, times), samples[0])


def test_float_mask_equals_bool_mask():
    guide = make_guide("banded", "mean_field")
    x, mask, times = batch()
    torch.testing.assert_close(
        guide.posterior_mean(x, mask.to(DTYPE), times), guide.posterior_mean(x, mask, times), rtol=0, atol=0
    )


def test_encoder_convolves_over_time_only_with_neighbours():
    """Kernel 3: h_t depends on frames t-1, t, t+1 only."""
    torch.manual_seed(0)
    encoder = SequenceEncoder(D, [6, 7], activation="tanh").to(DTYPE)
    assert encoder.context_dim == 7
    x, mask, _ = batch()
    h = encoder(x, mask)
    bumped = x.clone()
    bumped[:, 0] += 1.0
    moved = (encoder(bumped, mask) - h).abs().amax(dim=(0, 2))
    assert moved[0] > 0 and moved[1] > 0 and torch.all(moved[2:] == 0)


def test_posterior_mean():
    x, mask, times = batch()
    guide = make_guide("banded", "mean_field")
    posterior = guide.get_posterior(x, mask, times)
    torch.testing.assert_close(guide.posterior_mean(x, mask, times), posterior.base_dist.loc)

    guide = make_guide("banded", "iaf")
    with torch.no_grad():
        pyro.set_rng_seed(1)
        estimate = guide.posterior_mean(x, mask, times, num_samples=64)
        many = guide.get_posterior(x, mask, times).sample((20000,))
    assert estimate.shape == (B, L, T)
    standard_error = many.std(0) / 64**0.5
    assert ((estimate - many.mean(0)).abs() / standard_error).max() < 5.0


# -- errors -------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named():
    guide = make_guide("diagonal", "mean_field")
    x, mask, times = batch()
    with pytest.raises(DataError, match=r"mask has shape \(3, 4, 4\) but x has shape \(3, 4, 5\)"):
        guide(x, mask[..., :4], times)
    with pytest.raises(DataError, match=r"times has shape \(3, 5\) .* needs times of shape \(B, T\) = \(3, 4\)"):
        guide(x, mask, torch.zeros(3, 5, dtype=DTYPE))
    with pytest.raises(DataError, match=r"x must have shape \(B, T, D\)"):
        guide(x[0], mask[0], times[0])
    with pytest.raises(DataError, match=r"built for data_dim=5; build it with data_dim=4"):
        guide(x[..., :4], mask[..., :4], times)


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match=r"unknown guide covariance 'full'; choose one of: diagonal, banded"):
        GPVAEGuide(D, L, [8], covariance="full")
    with pytest.raises(ConfigError, match=r"unknown flow 'nope'; choose guide.flow from: .*iaf"):
        GPVAEGuide(D, L, [8], flow="nope", num_flows=1, time_length=T)
    with pytest.raises(ConfigError, match=r"flow 'iaf' .* needs the sequence length: pass time_length=T"):
        GPVAEGuide(D, L, [8], flow="iaf", num_flows=1)
    with pytest.raises(ConfigError, match=r"hidden sizes must be a non-empty list"):
        GPVAEGuide(D, L, [])
    guide = make_guide("banded", "iaf")
    x, mask, times = batch()
    with pytest.raises(DataError, match=r"built for time_length=4, got sequences of 3 steps"):
        guide(x[:, :3], mask[:, :3], times[:, :3])


# -- training -------------------------------------------------------------------------------------------
class TinyModel(nn.Module):
    """z ~ N(0, I) over (L, T) per sequence (no GP), x_t ~ N(W z_t + b, 0.3^2) where observed."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(L, D)

    def forward(self, x: Tensor, mask: Tensor, times: Tensor) -> None:
        pyro.module("decoder", self)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L, T), 1.0).to_event(2))
            loc = self.decoder(z.transpose(-1, -2))  # (..., B, T, D)
            pyro.sample("x", dist.Normal(loc, 0.3).mask(mask).to_event(2), obs=x.masked_fill(~mask, 0.0))


@pytest.mark.parametrize(
    "covariance, flow, particles",
    [("diagonal", "mean_field", 1), ("banded", "mean_field", 4), ("banded", "iaf", 1)],
)
def test_guide_trains_under_svi(covariance, flow, particles):
    gen = torch.Generator().manual_seed(0)
    n = 32
    z = torch.cumsum(0.5 * torch.randn(n, T, L, generator=gen), dim=1)  # smooth latent paths
    x = z @ torch.randn(L, D, generator=gen) + 0.3 * torch.randn(n, T, D, generator=gen)
    mask = torch.rand(n, T, D, generator=gen) > 0.2
    times = torch.arange(T, dtype=torch.float32).expand(n, T)
    torch.manual_seed(0)
    model = TinyModel()
    num_flows = 0 if flow == "mean_field" else 1
    guide = GPVAEGuide(D, L, [16], covariance=covariance, flow=flow, num_flows=num_flows, time_length=T)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), elbo)
    losses = [svi.step(x, mask, times) / n for _ in range(150)]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.5 * first, (first, last)


def test_conv_frame_encoder_reads_image_frames_and_ignores_missing_values():
    """model.frame_encoder = 'conv' (Fortuin et al.'s image preprocessor): frames (1, 3, 4) go through two 3x3
    convolutions before the frame MLP; features do not depend on the values at missing pixels, do depend on the
    observed ones, and a pixel only reaches the preprocessed pixels within two 3x3 neighbourhoods."""
    torch.manual_seed(0)
    d = 12
    encoder = SequenceEncoder(d, [8], frame_encoder="conv", frame_shape=(1, 3, 4), conv_channels=6).to(DTYPE)
    x = torch.randn(B, T, d, dtype=DTYPE)
    mask = (torch.rand(B, T, d) > 0.4).to(DTYPE)
    h = encoder(x, mask)
    assert h.shape == (B, T, 8)
    scrambled = torch.where(mask.bool(), x, torch.randn_like(x))
    torch.testing.assert_close(encoder(scrambled, mask), h)
    observed = mask.nonzero()[0]
    bumped = x.clone()
    bumped[tuple(observed)] += 1.0
    assert not torch.allclose(encoder(bumped, mask), h)
    pre = encoder.preprocessor(x.masked_fill(mask == 0, 0.0), mask)
    grad = torch.autograd.functional.jacobian(lambda v: encoder.preprocessor(v, mask)[0, 0], x)[:, 0, 0]  # (d, d)
    rows, cols = torch.arange(d) // 4, torch.arange(d) % 4
    far = ((rows[:, None] - rows[None]).abs() > 2) | ((cols[:, None] - cols[None]).abs() > 2)
    assert pre.shape == x.shape and torch.all(grad[far] == 0) and torch.any(grad[~far] != 0)


def test_conv_frame_encoder_needs_image_frames():
    with pytest.raises(ConfigError, match=r"model\.frame_encoder = 'conv' needs frames that are images"):
        SequenceEncoder(D, [8], frame_encoder="conv", frame_shape=None)
    with pytest.raises(ConfigError, match=r"C\*H\*W = 5, got frame shape \(1, 2, 2\)"):
        SequenceEncoder(D, [8], frame_encoder="conv", frame_shape=(1, 2, 2))
    with pytest.raises(ConfigError, match=r"choose one of: mlp, conv"):
        SequenceEncoder(D, [8], frame_encoder="cnn")


def test_the_reference_config_builds_fortuins_architecture():
    """examples/configs/hmnist_gpvae_reference.toml: latent 256, conv preprocessor, encoder 256-256 with a window
    of 3, decoder 256-256-256, beta 0.8, batch 64."""
    from pyro_flowvae.config import load_config
    from tests.conftest import REPO

    config = load_config(REPO / "examples" / "configs" / "hmnist_gpvae_reference.toml")
    vae = config.task.build_model(config, {"data_dim": 784, "seq_len": 10, "image_shape": (1, 28, 28)})
    encoder = vae.guide.encoder
    assert isinstance(encoder.preprocessor.net[0], nn.Conv2d) and encoder.preprocessor.net[0].out_channels == 256
    assert encoder.conv.kernel_size == (3,) and encoder.context_dim == 256
    widths = [m.out_features for m in vae.model.decoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [256, 256, 256, 784] and vae.guide.latent_dim == 256
    train = config.train
    assert (train.beta, train.batch_size, train.epochs, config.gp.kernel) == (0.8, 64, 20, "cauchy")
    # Fortuin's cauchy_kernel(T, sigma=1, length_scale=2): sigma / (1 + d^2 / length_scale^2) over the frames
    from pyro_flowvae.priors.kernels import build_kernel, evaluate_kernel

    t = torch.arange(10, dtype=torch.float64)
    kernel = build_kernel(config.gp.kernel, lengthscale=config.gp.lengthscale[0], variance=config.gp.variance)
    fortuin = 1.0 / (1.0 + (t[:, None] - t) ** 2 / 2.0**2)
    torch.testing.assert_close(evaluate_kernel(kernel, t).double(), fortuin, rtol=1e-6, atol=1e-7)
