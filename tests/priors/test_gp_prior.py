"""GP priors over latent time: kernels against their raw formulas, log-densities against torch, learning under SVI."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.contrib.gp import kernels as gpk
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.distributions import MultivariateNormal

from pyro_flowvae.errors import ConfigError, DataError
from pyro_flowvae.priors.gp import GPPrior
from pyro_flowvae.priors.kernels import KERNELS, build_kernel, evaluate_kernel, parse_kernel_expr

JITTER = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# independent reference: the kernels written out from their textbook formulas, in float64


def raw_kernel(name: str, t: torch.Tensor, lengthscale: float, variance: float = 1.0, period: float = 12.0):
    t = t.double()
    d = (t[:, None] - t[None, :]).abs()
    r = d / lengthscale
    if name == "rbf":
        return variance * torch.exp(-0.5 * r**2)
    if name == "matern32":
        return variance * (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
    if name == "matern52":
        return variance * (1 + math.sqrt(5) * r + 5 / 3 * r**2) * torch.exp(-math.sqrt(5) * r)
    if name == "cauchy":
        return variance / (1 + 0.5 * r**2)
    if name == "periodic":
        return variance * torch.exp(-2 * torch.sin(math.pi * d / period) ** 2 / lengthscale**2)
    if name == "linear":
        return variance * t[:, None] * t[None, :]
    raise AssertionError(name)


def irregular_times(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cumsum(0.2 + 1.5 * torch.rand(batch, steps, generator=gen, dtype=torch.float64), dim=-1)


def reference_log_prob(z, times, names_per_channel):
    """sum_l log N(z[b, l]; 0, K_l(t_b) + jitter I) with torch's own MultivariateNormal, per row b."""
    out = torch.zeros(z.shape[0], dtype=torch.float64)
    eye = torch.eye(times.shape[-1], dtype=torch.float64)
    for b in range(z.shape[0]):
        for ch, kernel_fn in enumerate(names_per_channel):
            cov = kernel_fn(times[b]) + JITTER * eye
            out[b] += MultivariateNormal(torch.zeros_like(times[b]), covariance_matrix=cov).log_prob(z[b, ch].double())
    return out


# ---------------------------------------------------------------------------------------------------------------
# log-densities and kernel matrices


@pytest.mark.parametrize("name", KERNELS)
def test_log_prob_matches_torch_mvn_for_irregular_times_per_row(name):
    lengthscales = [0.75, 1.5, 3.0]  # exactly representable: the reference sees the same numbers
    prior = GPPrior(3, name, lengthscale=lengthscales, variance=1.25, period=5.0).double()
    times = irregular_times(4, 9) / (8.0 if name == "linear" else 1.0)
    d = prior(times)
    assert d.batch_shape == (4,) and d.event_shape == (3, 9)
    z = d.sample()
    kernels = [lambda t, ls=ls: raw_kernel(name, t, ls, 1.25, 5.0) for ls in lengthscales]
    expected = reference_log_prob(z, times, kernels)
    assert prior.jitter_used == JITTER
    torch.testing.assert_close(d.log_prob(z), expected, rtol=1e-7, atol=1e-7)


def test_float32_module_matches_float64_reference():
    prior = GPPrior(2, "cauchy", lengthscale=2.0)  # float32 parameters, float64 Cholesky inside
    times = irregular_times(3, 20)
    z = torch.randn(3, 2, 20)
    d = prior(times)
    assert d.base_dist.scale_tril.dtype == torch.float32
    expected = reference_log_prob(z, times, [lambda t: raw_kernel("cauchy", t, 2.0)] * 2)
    torch.testing.assert_close(d.log_prob(z).double(), expected, rtol=1e-4, atol=1e-3)


def test_kernel_matrix_keeps_float64_precision_for_a_float32_module_on_request():
    times = 5000 + irregular_times(1, 30)[0]  # large t / l: t^2 - 2tt' + t'^2 cancels badly in float32
    prior = GPPrior(2, "rbf", lengthscale=0.5)
    matrix = prior.kernel_matrix(times, dtype=torch.float64)
    assert matrix.dtype == torch.float64 and prior.kernel_matrix(times).dtype == torch.float32
    torch.testing.assert_close(matrix[1], raw_kernel("rbf", times, 0.5), rtol=1e-7, atol=1e-7)  # float32: off by ~1


def test_one_dimensional_times_give_unbatched_distribution_that_expands():
    prior = GPPrior(2, "matern52", lengthscale=1.7).double()
    times = irregular_times(1, 6)[0]
    d = prior(times)
    assert d.batch_shape == () and d.event_shape == (2, 6)
    z = torch.randn(5, 2, 6, dtype=torch.float64)
    expected = reference_log_prob(z, times.expand(5, 6), [lambda t: raw_kernel("matern52", t, 1.7)] * 2)
    torch.testing.assert_close(d.expand((5,)).log_prob(z), expected)
    assert prior.kernel_matrix(times).shape == (2, 6, 6)


def test_identical_rows_share_one_cholesky_without_copies():
    prior = GPPrior(4, "rbf", lengthscale=[1.0, 2.0]).double()
    row = irregular_times(1, 7)[0]
    d = prior(row.expand(5, 7).clone())
    tril = d.base_dist.scale_tril
    assert tril.shape == (5, 4, 7, 7)
    assert tril.stride(0) == 0  # broadcast over the batch, not copied
    z = torch.randn(5, 4, 7, dtype=torch.float64)
    kernels = [lambda t: raw_kernel("rbf", t, 1.0)] * 2 + [lambda t: raw_kernel("rbf", t, 2.0)] * 2
    torch.testing.assert_close(d.log_prob(z), reference_log_prob(z, row.expand(5, 7), kernels))


def test_vectorized_particles_prepend_sample_dims():
    prior = GPPrior(2, "cauchy", lengthscale=[1.0, 4.0]).double()
    times = irregular_times(3, 5)
    d = prior(times)
    with pyro.plate("particles", 6, dim=-2), pyro.plate("data", 3, dim=-1):
        z = pyro.sample("z", d)
    assert z.shape == (6, 3, 2, 5)
    log_p = d.expand((6, 3)).log_prob(z)
    assert log_p.shape == (6, 3)
    kernels = [lambda t: raw_kernel("cauchy", t, 1.0), lambda t: raw_kernel("cauchy", t, 4.0)]
    for n in range(6):
        torch.testing.assert_close(log_p[n], reference_log_prob(z[n], times, kernels))


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_matrix_is_positive_definite_for_1000_irregular_steps(name):
    times = torch.sort(torch.rand(1000, dtype=torch.float64) * 200).values
    prior = GPPrior(1, name, lengthscale=2.0, period=7.0)
    d = prior(times)  # float32 module: no jitter growth needed, the factor is computed in float64
    assert prior.jitter_used == JITTER
    diag = d.base_dist.scale_tril.diagonal(dim1=-2, dim2=-1)
    assert torch.isfinite(d.base_dist.scale_tril).all() and (diag > 0).all()
    cov = prior.double().kernel_matrix(times)[0] + JITTER * torch.eye(1000, dtype=torch.float64)
    torch.linalg.cholesky(cov)
    assert torch.linalg.eigvalsh(cov).min() > 0
    torch.testing.assert_close(
        cov - JITTER * torch.eye(1000, dtype=torch.float64), raw_kernel(name, times, 2.0, 1.0, 7.0)
    )


def test_sums_and_products_equal_sums_and_products_of_matrices():
    times = irregular_times(2, 8) / 4
    ls, var, per = 1.5, 2.0, 4.0
    prior = GPPrior(1, "periodic*rbf + linear", lengthscale=ls, variance=var, period=per).double()
    for b in range(2):
        expected = var * raw_kernel("periodic", times[b], ls, period=per) * raw_kernel("rbf", times[b], ls)
        expected = expected + var * raw_kernel("linear", times[b], ls)  # the product's variance is var, not var^2
        torch.testing.assert_close(prior.kernel_matrix(times)[b, 0], expected)
    # '*' binds tighter than '+', and the combination equals the combination of the single-kernel priors
    single = {name: GPPrior(1, name, lengthscale=ls, period=per).double().kernel_matrix(times) for name in KERNELS}
    combined = GPPrior(1, "rbf + matern32*cauchy*periodic + linear", lengthscale=ls, period=per).double()
    expected = single["rbf"] + single["matern32"] * single["cauchy"] * single["periodic"] + single["linear"]
    torch.testing.assert_close(combined.kernel_matrix(times), expected)
    assert parse_kernel_expr(" Periodic*RBF +linear ") == [["periodic", "rbf"], ["linear"]]


def test_per_channel_lengthscales_give_different_channel_covariances():
    times = irregular_times(1, 10)[0]
    one_each = GPPrior(3, "matern32", lengthscale=[0.5, 2.0, 8.0]).double().kernel_matrix(times)
    for ch, ls in enumerate([0.5, 2.0, 8.0]):
        torch.testing.assert_close(one_each[ch], raw_kernel("matern32", times, ls))
    assert not torch.allclose(one_each[0], one_each[1]) and not torch.allclose(one_each[1], one_each[2])
    grouped = GPPrior(6, "matern32", lengthscale=[0.5, 8.0]).double()
    matrices = grouped.kernel_matrix(times)
    for ch in range(6):
        torch.testing.assert_close(matrices[ch], raw_kernel("matern32", times, 0.5 if ch < 3 else 8.0))
    assert len(grouped.kernels) == 2
    shared = GPPrior(3, "matern32", lengthscale=2.0)
    assert len(shared.kernels) == 1


def test_gradient_of_log_prob_matches_autograd_through_the_raw_formula():
    times = irregular_times(2, 7)
    z = torch.randn(2, 1, 7, dtype=torch.float64)
    prior = GPPrior(1, "rbf", lengthscale=1.25, variance=0.75, learn=True).double()
    prior(times).log_prob(z).sum().backward()
    kernel = prior.kernels[0]
    got = {"lengthscale": kernel.lengthscale_unconstrained.grad, "variance": kernel.variance_unconstrained.grad}

    log_ls = kernel.lengthscale_unconstrained.detach().clone().requires_grad_()
    log_var = kernel.variance_unconstrained.detach().clone().requires_grad_()
    total = 0.0
    for b in range(2):
        d = (times[b][:, None] - times[b][None, :]) / log_ls.exp()
        cov = log_var.exp() * torch.exp(-0.5 * d**2) + JITTER * torch.eye(7, dtype=torch.float64)
        total = total + MultivariateNormal(torch.zeros(7, dtype=torch.float64), cov).log_prob(z[b, 0])
    total.backward()
    torch.testing.assert_close(got["lengthscale"], log_ls.grad)
    torch.testing.assert_close(got["variance"], log_var.grad)


# ---------------------------------------------------------------------------------------------------------------
# caching and device/dtype moves


def counting_cholesky(monkeypatch) -> list[int]:
    calls = [0]
    original = torch.linalg.cholesky_ex

    def wrapped(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", wrapped)
    return calls


def test_frozen_prior_caches_cholesky_and_invalidates_it(monkeypatch):
    calls = counting_cholesky(monkeypatch)
    prior = GPPrior(2, "rbf", lengthscale=1.5)
    times = irregular_times(3, 6)
    z = torch.randn(3, 2, 6)
    first = prior(times).log_prob(z)
    again = prior(times.clone()).log_prob(z)
    assert calls[0] == 1
    torch.testing.assert_close(first, again)

    moved = irregular_times(3, 6, seed=1)
    got = prior(moved).log_prob(z)
    assert calls[0] == 2
    torch.testing.assert_close(got, GPPrior(2, "rbf", lengthscale=1.5)(moved).log_prob(z))

    prior.double()
    assert all(buffer.dtype == torch.float64 for buffer in prior.buffers())
    d = prior(moved)
    assert calls[0] == 4  # one for the fresh reference prior above, one after the move
    assert d.base_dist.scale_tril.dtype == torch.float64

    prior.kernels[0].lengthscale.fill_(3.0)  # an in-place write to a frozen hyperparameter
    got = prior(moved).log_prob(z.double())
    torch.testing.assert_close(got, GPPrior(2, "rbf", lengthscale=3.0).double()(moved).log_prob(z.double()))


def test_learned_prior_never_serves_a_stale_factor(monkeypatch):
    calls = counting_cholesky(monkeypatch)
    prior = GPPrior(1, "cauchy", lengthscale=1.0, learn=True)
    times = irregular_times(2, 5)
    prior(times)
    with torch.no_grad():
        prior.kernels[0].lengthscale_unconstrained.fill_(math.log(2.5))
    z = torch.randn(2, 1, 5)
    torch.testing.assert_close(prior(times).log_prob(z), GPPrior(1, "cauchy", lengthscale=2.5)(times).log_prob(z))
    assert calls[0] == 3


def test_jitter_grows_when_cholesky_fails_then_raises_a_clear_error():
    times = torch.arange(40, dtype=torch.float64)
    prior = GPPrior(1, "rbf", lengthscale=200.0, jitter=1e-30, max_jitter=1e-2).double()
    d = prior(times)
    assert 1e-30 < prior.jitter_used <= 1e-2
    expected = raw_kernel("rbf", times, 200.0) + prior.jitter_used * torch.eye(40, dtype=torch.float64)
    torch.testing.assert_close(d.base_dist.covariance_matrix[0], expected)
    with pytest.raises(ConfigError, match=r"Cholesky of the GP prior covariance .* failed.*raise jitter"):
        GPPrior(1, "rbf", lengthscale=200.0, jitter=1e-30, max_jitter=1e-27).double()(times)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_parameters_and_factors_move_to_cuda():
    times = irregular_times(3, 8)
    z = torch.randn(3, 2, 8)
    for learn in (False, True):
        cpu = GPPrior(2, "periodic*rbf + linear", lengthscale=[1.0, 2.0], learn=learn)
        expected = cpu(times).log_prob(z)
        gpu = cpu.cuda()
        assert all(t.is_cuda for t in [*gpu.parameters(), *gpu.buffers()])
        d = gpu(times.cuda())
        assert d.base_dist.scale_tril.is_cuda
        torch.testing.assert_close(d.log_prob(z.cuda()).cpu(), expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# learning under SVI: one param-store entry per hyperparameter, one update per step, frozen ones never move


def make_svi(prior: GPPrior, lr: float, name: str = "prior", particles: int = 1) -> SVI:
    def model(x, times):
        pyro.module(name, prior)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", prior(times))
            pyro.sample("x", dist.Normal(z, 0.05).to_event(2), obs=x)

    def guide(x, times):  # q(z | x) pinned near x: the ELBO's gradient in the prior is E_q[grad log p(z)]
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x, 0.01).to_event(2))

    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    return SVI(model, guide, Adam({"lr": lr}), elbo)


def gp_data(lengthscale: float, variance: float, batch: int = 24, steps: int = 25):
    times = (irregular_times(1, steps, seed=3) / 1.5).expand(batch, steps)  # one shared row: one Cholesky a step
    truth = GPPrior(1, "rbf", lengthscale=lengthscale, variance=variance).double()
    z = truth(times).sample()
    return (z + 0.005 * torch.randn_like(z)).float(), times.float()


def test_learned_hyperparameters_fit_towards_the_truth_and_frozen_ones_stay():
    x, times = gp_data(lengthscale=3.0, variance=2.0)
    learned = GPPrior(1, "rbf", lengthscale=1.0, variance=0.5, learn=True)
    svi = make_svi(learned, lr=0.05, particles=2)
    for _ in range(100):
        svi.step(x, times)
    fitted = learned.hyperparameters()  # truth (3, 2) from start (1, 0.5)
    assert 2.5 < fitted["kernels.0.lengthscale"] < 3.5, fitted
    assert 1.5 < fitted["kernels.0.variance"] < 2.6, fitted

    pyro.clear_param_store()
    frozen = GPPrior(1, "rbf", lengthscale=1.0, variance=0.5, learn=False)
    assert list(frozen.parameters()) == []
    before = frozen.hyperparameters()
    svi = make_svi(frozen, lr=0.05)
    for _ in range(5):
        svi.step(x, times)
    assert frozen.hyperparameters() == before
    keys = list(pyro.get_param_store().keys())
    assert not any(key.startswith("prior") for key in keys), keys


def test_each_learned_hyperparameter_gets_one_store_entry_and_one_update_per_step():
    x, times = gp_data(lengthscale=3.0, variance=2.0, batch=4, steps=10)
    prior = GPPrior(1, "periodic*rbf", lengthscale=1.0, variance=1.0, period=6.0, learn=True)
    start = {name: p.detach().clone() for name, p in prior.named_parameters()}
    lr = 0.1
    make_svi(prior, lr=lr).step(x, times)
    store = pyro.get_param_store()
    assert set(store.keys()) == {f"prior$$${name}" for name in start}  # no unscoped "lengthscale" entries
    for name, param in prior.named_parameters():
        assert store._params[f"prior$$${name}"] is param
        # Adam's first step moves every coordinate by lr * sign(grad): a second update would move it by 2 lr
        torch.testing.assert_close(
            (param.detach() - start[name]).abs(), torch.tensor(lr, dtype=param.dtype), rtol=1e-3, atol=0
        )
    # the product's second variance and the fixed hyperparameters are buffers, not parameters
    assert sorted(start) == [
        "kernels.0.kern0.lengthscale_unconstrained",
        "kernels.0.kern0.period_unconstrained",
        "kernels.0.kern0.variance_unconstrained",
        "kernels.0.kern1.lengthscale_unconstrained",
    ]


def test_two_learned_priors_never_share_hyperparameters():
    x, times = gp_data(lengthscale=3.0, variance=2.0, batch=4, steps=10)
    first = GPPrior(1, "cauchy", lengthscale=1.0, learn=True)
    second = GPPrior(1, "cauchy", lengthscale=3.0, learn=True)

    def model(x, times):
        pyro.module("first", first)
        pyro.module("second", second)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z1", first(times), obs=x)
            pyro.sample("z2", second(times), obs=x)

    SVI(model, lambda x, times: None, Adam({"lr": 0.1}), Trace_ELBO()).step(x, times)
    assert len(pyro.get_param_store().keys()) == 4
    ls1, ls2 = first.hyperparameters()["kernels.0.lengthscale"], second.hyperparameters()["kernels.0.lengthscale"]
    assert abs(math.log(ls1) - math.log(1.0)) == pytest.approx(0.1, rel=1e-3)
    assert abs(math.log(ls2) - math.log(3.0)) == pytest.approx(0.1, rel=1e-3)

    # after clearing the store, a fresh prior starts from its own values, not from stale store entries
    pyro.clear_param_store()
    fresh = GPPrior(1, "cauchy", lengthscale=5.0, learn=True)
    make_svi(fresh, lr=0.1, name="first").step(x, times)
    assert abs(math.log(fresh.hyperparameters()["kernels.0.lengthscale"]) - math.log(5.0)) == pytest.approx(
        0.1, rel=1e-3
    )


def test_build_kernel_freezes_into_buffers_and_keeps_cauchy_alpha_fixed():
    frozen = build_kernel("cauchy + linear", lengthscale=2.0, variance=3.0)
    assert list(frozen.parameters()) == []
    assert {name for name, _ in frozen.named_buffers()} == {
        "kern0.variance",
        "kern0.lengthscale",
        "kern0.scale_mixture",
        "kern1.variance",
    }
    learned = build_kernel("cauchy", lengthscale=2.0, learn=True)
    assert isinstance(learned, gpk.RationalQuadratic)
    assert {name for name, _ in learned.named_parameters()} == {"variance_unconstrained", "lengthscale_unconstrained"}
    assert learned.scale_mixture == 1.0
    t = torch.linspace(0, 3, 5)
    torch.testing.assert_close(
        evaluate_kernel(frozen, t).double(),
        3.0 / (1 + 0.5 * (t[:, None] - t).double() ** 2 / 4) + 3.0 * (t[:, None] * t).double(),
        rtol=1e-5,
        atol=1e-5,
    )
    assert len(pyro.get_param_store().keys()) == 0  # evaluating issued no pyro.param statement


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_unknown_kernel_lists_names_with_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown kernel 'rfb'.*did you mean 'rbf'\?.*rbf, matern32, matern52"):
        GPPrior(2, "periodic*rfb")
    with pytest.raises(ConfigError, match=r"unknown kernel 'spectral'.*choose from: rbf"):
        build_kernel("spectral")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("rbf++linear", "empty term"),
        ("", "empty"),
        ("+rbf", "empty term"),
        ("rbf*", "empty factor"),
        ("rbf * * linear", "empty factor"),
        ("   ", "empty"),
    ],
)
def test_malformed_expressions_are_config_errors(expr, message):
    with pytest.raises(ConfigError, match=message):
        build_kernel(expr)


def test_non_increasing_times_name_row_and_index():
    prior = GPPrior(2, "rbf")
    times = irregular_times(3, 6)
    times[2, 4] = times[2, 3]
    with pytest.raises(DataError, match=r"row 2, index 4.*strictly increasing.*sort the frames"):
        prior(times)
    with pytest.raises(DataError, match=r"not strictly increasing at index 1 "):
        prior(torch.tensor([0.0, -1.0, 2.0]))


def test_nan_times_are_data_errors():
    times = irregular_times(2, 5)
    times[1, 3] = float("nan")
    with pytest.raises(DataError, match=r"non-finite value \(nan\) at row 1, index 3"):
        GPPrior(1)(times)
    with pytest.raises(DataError, match=r"shape \(B, T\) or \(T,\)"):
        GPPrior(1)(torch.zeros(2, 3, 4))


def test_bad_lengthscale_lists_and_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"3 length scales for latent_dim=4.*divides 4"):
        GPPrior(4, lengthscale=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match=r"non-empty list"):
        GPPrior(4, lengthscale=[])
    with pytest.raises(ConfigError, match=r"lengthscale must be a finite number > 0"):
        GPPrior(2, lengthscale=[1.0, -2.0])
    with pytest.raises(ConfigError, match=r"period must be a finite number > 0"):
        GPPrior(2, "periodic", period=0.0)
    with pytest.raises(ConfigError, match=r"max_jitter .* must be >= jitter"):
        GPPrior(2, jitter=1e-2, max_jitter=1e-3)


class _HostReads:
    """Make every read of a tensor's values on the host raise: what would synchronise with a GPU."""

    NAMES = ("__bool__", "item", "tolist", "__float__", "__int__", "numpy")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}
        self.saved_equal = torch.equal

        def refuse(*args, **kwargs):
            raise AssertionError("a tensor's values were read on the host")

        for name in self.NAMES:
            setattr(torch.Tensor, name, refuse)
        torch.equal = refuse
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(torch.Tensor, name, fn)
        torch.equal = self.saved_equal


def test_regular_times_are_factorised_once_and_then_recognised_without_reading_them():
    prior = GPPrior(4, kernel="cauchy", lengthscale=[1.0, 3.0])
    row = torch.arange(6.0)[None]
    shared = row.expand(5, 6)  # what SequenceData keeps for regular sampling
    z = torch.randn(5, 4, 6)
    expected = prior(shared.clone()).log_prob(z)  # the general path, rows compared on the host
    first = prior(shared).log_prob(z)
    torch.testing.assert_close(first, expected)
    with _HostReads(), pyro.validation_enabled(False):  # as the trainer runs: no per-step support checks
        again = prior(shared[:3]).log_prob(z[:3])  # another batch of the same rows: no value is read
    torch.testing.assert_close(again, expected[:3])
    with _HostReads(), pyro.validation_enabled(False), pytest.raises(AssertionError, match="read on the host"):
        prior(shared.clone())  # materialised rows: compared by value, as before
    with torch.no_grad():
        row.mul_(2.0)  # new values in place: the version changes, so the factor is recomputed
    torch.testing.assert_close(prior(shared).log_prob(z), prior(shared.clone()).log_prob(z))
    assert not torch.allclose(prior(shared).log_prob(z), expected)


@pytest.mark.parametrize("learn", [False, True])
def test_hyperparameters_keep_their_precision_in_float64(learn):
    """A length scale of 0.7 is 0.7, not float32's 0.699999988: GPPrior.log_prob in float64 equals a
    MultivariateNormal built from the same RBF kernel written out in float64, to 1e-10."""
    prior = GPPrior(1, kernel="rbf", lengthscale=0.7, variance=1.3, jitter=1e-4, learn=learn).double()
    times = torch.linspace(0.0, 3.0, 12, dtype=torch.float64)
    d = times[:, None] - times[None]
    k = 1.3 * torch.exp(-0.5 * d**2 / 0.7**2) + 1e-4 * torch.eye(12, dtype=torch.float64)
    expected = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), covariance_matrix=k)
    torch.manual_seed(0)
    z = expected.sample((5,))[:, None]  # typical draws: log p(z) of order 10, where float32's 0.699999988 shows
    ours = prior(times.expand(5, 12).clone()).log_prob(z)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected.log_prob(z[:, 0]), rtol=0, atol=1e-10)
    hyper = prior.hyperparameters()
    assert float(hyper["kernels.0.lengthscale"]) == 0.7 or learn  # learned: exp(log 0.7), within 1 ulp
    assert abs(float(hyper["kernels.0.lengthscale"]) - 0.7) < 1e-15


def test_a_float32_prior_still_computes_and_returns_float32():
    prior = GPPrior(2, kernel="cauchy", lengthscale=0.7, compute_dtype=None)
    distribution = prior(torch.arange(5.0))
    assert (
        distribution.sample().dtype == torch.float32 and distribution.log_prob(torch.zeros(2, 5)).dtype == torch.float32
    )
