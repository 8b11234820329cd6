"""Importance-sampled log p(x) per datapoint, checked against factor analysis in closed form."""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms.planar import ConditionedPlanar

from pyro_flowvae.errors import FlowVAEError
from pyro_flowvae.evaluation import importance
from pyro_flowvae.evaluation.importance import (
    MIN_PARETO_SAMPLES,
    ImportanceEstimate,
    estimate_log_likelihood,
    log_importance_weights,
)


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), (x.std() / math.sqrt(x.numel())).item()


def _delta_method_se(log_w: torch.Tensor) -> torch.Tensor:
    """Standard error of log(mean w) per datapoint: sqrt(Var(w) / (K mean(w)^2)), from (K, B) log weights."""
    w = (log_w - log_w.max(0).values).exp()
    return (w.var(0) / (log_w.shape[0] * w.mean(0) ** 2)).sqrt()


class TestClosedForm:
    @pytest.mark.parametrize(
        ("num_samples", "sample_chunk", "data_chunk"),
        [(1, 1, 1), (3, 2, 3), (7, 500, 100), (30, 4, 7), (30, 30, 20)],
    )
    def test_exact_posterior_guide_gives_log_px(self, fa, num_samples, sample_chunk, data_chunk):
        x = fa.sample_x(20)
        est = estimate_log_likelihood(
            fa.model,
            fa.exact_guide,
            x,
            num_samples=num_samples,
            sample_chunk=sample_chunk,
            data_chunk=data_chunk,
        )
        truth = fa.log_px(x)
        assert est.log_px.shape == est.elbo.shape == (20,)
        assert est.num_samples == num_samples
        # log w = log p(x) exactly when q is the posterior; float64 rounding is ~1e-14
        torch.testing.assert_close(est.log_px, truth, atol=1e-8, rtol=0)
        torch.testing.assert_close(est.elbo, truth, atol=1e-8, rtol=0)

    def test_log_weights_match_hand_computation_per_sample_and_datapoint(self, fa):
        """Each w[k, b] uses z[k, b] and x_b only: recompute the same draws by hand."""
        x = fa.sample_x(6)
        guide = fa.mean_field_guide(1.5)
        pyro.set_rng_seed(3)
        log_w = log_importance_weights(fa.model, guide, x, num_samples=4)
        mu, sigma = fa.posterior(x)
        q = dist.Normal(mu, 1.5 * sigma.diagonal().sqrt()).to_event(1).expand((4, 6))
        pyro.set_rng_seed(3)
        z = q.sample()
        prior = dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1)
        lik = dist.Normal(z @ fa.W.T + fa.b, fa.psi.sqrt()).to_event(1)
        expected = prior.log_prob(z) + lik.log_prob(x) - q.log_prob(z)
        assert log_w.shape == (4, 6)
        torch.testing.assert_close(log_w, expected)

    def test_error_shrinks_with_num_samples_for_mean_field_guide(self, fa):
        # A mean-field guide 1.5x wider than the posterior's marginals: the weights are bounded
        # (q has heavier tails than p(z | x)), so the IWAE error falls roughly like 1/sqrt(K).
        x = fa.sample_x(50)
        guide = fa.mean_field_guide(1.5)
        truth = fa.log_px(x)
        errors = {}
        for K in (1, 10, 100, 5000):
            est = estimate_log_likelihood(fa.model, guide, x, num_samples=K, sample_chunk=1000)
            assert (est.log_px >= est.elbo - 1e-12).all()  # Jensen, datapoint by datapoint
            errors[K] = (est.log_px - truth).abs()
        mean_errors = [errors[K].mean().item() for K in (1, 10, 100, 5000)]
        assert all(a > b for a, b in zip(mean_errors, mean_errors[1:])), mean_errors
        # Tolerance at K = 5000: the delta-method standard error sd(w) / (sqrt(K) mean(w)) of each
        # datapoint's estimate, measured on an independent set of 5000 weights (about 0.01 to 0.02
        # here; the bias, Var(w) / (2 K mean(w)^2), is ~100x smaller). 5 SE per datapoint, and the
        # mean absolute error of 50 datapoints below 0.03 (about 2x the largest SE).
        se = _delta_method_se(log_importance_weights(fa.model, guide, x, num_samples=5000))
        assert (errors[5000] < 5 * se).all(), (errors[5000] / se).max()
        assert mean_errors[-1] < 0.03
        assert est.mean_elbo < truth.mean().item()

    def test_single_sample_estimate_is_the_elbo_in_expectation(self, fa):
        x = fa.sample_x(20)
        guide = fa.mean_field_guide(1.5)
        reps = 300
        # 300 copies of each datapoint: one independent K = 1 estimate per copy
        est = estimate_log_likelihood(fa.model, guide, x.repeat(reps, 1), num_samples=1, data_chunk=1000)
        torch.testing.assert_close(est.log_px, est.elbo)  # one sample: log mean w = mean log w
        per_rep = est.log_px.reshape(reps, 20).mean(1)  # average over the 20 datapoints, per copy
        mean, se = _mean_se(per_rep)
        particles = 6000
        elbo = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        reference = -elbo.loss(fa.model, guide, x) / 20
        se_reference = se * math.sqrt(reps / particles)  # same per-draw variance, more draws
        assert abs(mean - reference) < 4 * math.hypot(se, se_reference), (mean, reference, se)
        # and it is a strict lower bound here: the guide is not the posterior
        assert mean < fa.log_px(x).mean().item() - 10 * se

    def test_estimate_rises_with_num_samples_in_expectation(self, fa):
        x = fa.sample_x(50)
        guide = fa.mean_field_guide(0.7)  # too narrow: a clear gap that closes slowly
        reps = 200  # the K = 16 -> 64 step is ~0.015 nats; 200 copies give SEs of ~0.003
        x_rep = x.repeat(reps, 1)
        truth = fa.log_px(x).mean().item()
        means, ses = [], []
        for K in (1, 4, 16, 64):
            est = estimate_log_likelihood(fa.model, guide, x_rep, num_samples=K, data_chunk=2000, pareto_k=False)
            mean, se = _mean_se(est.log_px.reshape(reps, 50).mean(1))
            assert mean < truth + 3 * se  # a lower bound in expectation
            means.append(mean)
            ses.append(se)
        for i in range(3):
            assert means[i + 1] - means[i] > 3 * math.hypot(ses[i], ses[i + 1]), (means, ses)


class TestFlowGuideWithoutInverse:
    def test_planar_flow_cannot_rescore_its_samples(self, fa):
        """Why log q must be computed in the trace that drew z: a copy of z cannot be scored."""
        x = fa.sample_x(4)
        params = (torch.zeros(4, 1, dtype=x.dtype), 0.1 * torch.ones(4, 2, dtype=x.dtype), x.new_ones(4, 2))
        q = dist.TransformedDistribution(
            dist.Normal(torch.zeros(4, 2, dtype=x.dtype), 1.0).to_event(1),
            [ConditionedPlanar(params)],
        )
        z = q.sample()
        assert torch.isfinite(q.log_prob(z)).all()  # the cached last output: fine
        with pytest.raises(KeyError, match="intermediates cache"):
            q.log_prob(z.clone())  # anything else needs the inverse, which planar lacks

    def test_planar_guide_estimate_per_datapoint(self, fa):
        x = fa.sample_x(30)
        truth = fa.log_px(x)
        est = estimate_log_likelihood(fa.model, fa.planar_guide(), x, num_samples=5000, sample_chunk=2500)
        assert est.log_px.shape == (30,)
        assert torch.isfinite(est.log_px).all() and torch.isfinite(est.elbo).all()
        assert (est.log_px >= est.elbo).all()
        # the flow is not the posterior: the ELBO is clearly below log p(x), the IWAE closes the gap
        assert est.mean_elbo < truth.mean().item() - 0.1
        error = (est.log_px - truth).abs()
        assert error.mean() < 0.05 and error.max() < 0.2, error

    def test_guide_sites_sharing_one_flow_are_scored_where_drawn(self, fa):
        """Two sites use one planar transform: the second draw evicts the first from its cache."""
        x = fa.sample_x(10)

        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.psi.sqrt()).to_event(1), obs=x)
                pyro.sample("nuisance", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

        def guide(x):
            flow = ConditionedPlanar(
                (x.new_zeros(x.shape[0], 1), x.new_full((x.shape[0], 2), 0.2), x.new_ones(x.shape[0], 2))
            )
            mu, sigma = fa.posterior(x)
            with pyro.plate("data", x.shape[0]):
                base = dist.Normal(mu, 1.3 * sigma.diagonal().sqrt()).to_event(1)
                pyro.sample("z", dist.TransformedDistribution(base, [flow]))
                base = dist.Normal(x.new_zeros(x.shape[0], 2), 1.2).to_event(1)
                pyro.sample("nuisance", dist.TransformedDistribution(base, [flow]))

        est = estimate_log_likelihood(model, guide, x, num_samples=2000, pareto_k=False)
        # the nuisance latent integrates to 1, so the estimate still targets log p(x)
        assert (est.log_px - fa.log_px(x)).abs().max() < 0.2


class TestDatapointsStaySeparate:
    def test_batch_equals_each_datapoint_alone(self, fa):
        x = fa.sample_x(10)
        batch = estimate_log_likelihood(fa.model, fa.exact_guide, x, num_samples=5)
        alone = torch.cat(
            [estimate_log_likelihood(fa.model, fa.exact_guide, x[i : i + 1], num_samples=5).log_px for i in range(10)]
        )
        torch.testing.assert_close(batch.log_px, alone, atol=1e-10, rtol=0)
        permuted = estimate_log_likelihood(fa.model, fa.exact_guide, x.flip(0), num_samples=5)
        torch.testing.assert_close(permuted.log_px, batch.log_px.flip(0), atol=1e-10, rtol=0)

    def test_nested_plate_inside_data_plate_is_summed(self, fa):
        """Data plate at dim -2, features plate at dim -1 inside it: still log p(x_b) per datapoint."""
        x = fa.sample_x(8)

        def model(x):
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))  # (..., B, 1, L)
                loc = (z @ fa.W.T).squeeze(-2) + fa.b  # (..., B, D)
                with pyro.plate("features", x.shape[1], dim=-1):
                    pyro.sample("x", dist.Normal(loc, fa.psi.sqrt()), obs=x)

        def guide(x):
            mu, sigma = fa.posterior(x)
            with pyro.plate("data", x.shape[0], dim=-2):
                pyro.sample("z", dist.MultivariateNormal(mu[:, None], scale_tril=torch.linalg.cholesky(sigma)))

        est = estimate_log_likelihood(model, guide, x, num_samples=3, max_plate_nesting=2)
        torch.testing.assert_close(est.log_px, fa.log_px(x), atol=1e-8, rtol=0)

    def test_factor_inside_the_data_plate_counts_per_datapoint(self, fa):
        x = fa.sample_x(6)
        shift = torch.arange(6, dtype=x.dtype)

        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, fa.psi.sqrt()).to_event(1), obs=x)
                pyro.factor("shift", shift)

        est = estimate_log_likelihood(model, fa.exact_guide, x, num_samples=3)
        torch.testing.assert_close(est.log_px, fa.log_px(x) + shift, atol=1e-8, rtol=0)


class TestErrors:
    def test_global_latent_is_refused_by_name(self, fa):
        x = fa.sample_x(5)

        def model(x):
            noise = pyro.sample("noise", dist.LogNormal(x.new_zeros(()), 1.0))
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ fa.W.T + fa.b, noise[..., None]).to_event(1), obs=x)

        def guide(x):
            pyro.sample("noise", dist.LogNormal(x.new_zeros(()), 0.1))
            fa.exact_guide(x)

        with pytest.raises(FlowVAEError, match=r"'noise' is outside the data plate 'data'.*undefined"):
            estimate_log_likelihood(model, guide, x, num_samples=3)

    def test_global_factor_in_the_model_is_refused_by_name(self, fa):
        def model(x):
            fa.model(x)
            pyro.factor("penalty", x.new_zeros(()))

        with pytest.raises(FlowVAEError, match=r"model sample site 'penalty' is outside the data plate"):
            estimate_log_likelihood(model, fa.exact_guide, fa.sample_x(5), num_samples=3)

    def test_misnamed_data_plate_points_to_the_argument(self, fa):
        x = fa.sample_x(5)
        with pytest.raises(FlowVAEError, match=r"outside the data plate 'batch'.*data_plate="):
            estimate_log_likelihood(fa.model, fa.exact_guide, x, num_samples=3, data_plate="batch")

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"num_samples": 0}, "num_samples"),
            ({"num_samples": -2}, "num_samples"),
            ({"num_samples": 2.5}, "num_samples"),
            ({"num_samples": True}, "num_samples"),
            ({"num_samples": 3, "sample_chunk": 0}, "sample_chunk"),
            ({"num_samples": 3, "data_chunk": 0}, "data_chunk"),
            ({"num_samples": 3, "max_plate_nesting": 0}, "max_plate_nesting"),
        ],
    )
    def test_bad_arguments_are_named(self, fa, kwargs, name):
        with pytest.raises(FlowVAEError, match=rf"^{name} must be an integer >= 1"):
            estimate_log_likelihood(fa.model, fa.exact_guide, fa.sample_x(3), **kwargs)

    def test_bad_arguments_of_log_importance_weights(self, fa):
        with pytest.raises(FlowVAEError, match="num_samples"):
            log_importance_weights(fa.model, fa.exact_guide, fa.sample_x(3), num_samples=0)

    def test_empty_data_is_refused(self, fa):
        with pytest.raises(FlowVAEError, match="at least one datapoint"):
            estimate_log_likelihood(fa.model, fa.exact_guide, fa.sample_x(3)[:0], num_samples=3)


class TestParetoK:
    def test_exact_guide_is_reliable(self, fa):
        est = estimate_log_likelihood(fa.model, fa.exact_guide, fa.sample_x(40), num_samples=100)
        assert est.pareto_k is not None and est.pareto_k.shape == (40,)
        assert est.pareto_k_share() == 0.0
        # weights equal to rounding: bounded, reported as the k -> -inf limit (arviz alone says inf)
        assert torch.isneginf(est.pareto_k).all()

    def test_badly_mismatched_guide_is_flagged(self, fa):
        x = fa.sample_x(40)
        bad = estimate_log_likelihood(fa.model, fa.mean_field_guide(0.05), x, num_samples=1000)
        assert bad.pareto_k_share() > 0.8
        assert bad.summary()["pareto_k_share_above_0_7"] == bad.pareto_k_share(0.7)
        good = estimate_log_likelihood(fa.model, fa.mean_field_guide(1.5), x, num_samples=1000)
        assert good.pareto_k_share() == 0.0
        assert good.pareto_k.max() < 0.5

    def test_too_few_samples_or_disabled_gives_none(self, fa):
        x = fa.sample_x(4)
        few = estimate_log_likelihood(fa.model, fa.exact_guide, x, num_samples=MIN_PARETO_SAMPLES - 1)
        off = estimate_log_likelihood(fa.model, fa.exact_guide, x, num_samples=100, pareto_k=False)
        for est in (few, off):
            assert est.pareto_k is None and est.pareto_k_share() is None
            assert est.summary()["pareto_k_max"] is None

    def test_arviz_stats_is_used_with_its_sign_convention(self, monkeypatch):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz

        calls = []

        def psislw(ary, r_eff=1, axis=-1):  # arviz-stats: takes log-likelihood, negates it
            calls.append((r_eff, axis))
            return arviz.psislw(-ary, reff=r_eff)

        base = types.ModuleType("arviz_stats.base")
        base.array_stats = types.SimpleNamespace(psislw=psislw)
        monkeypatch.setitem(sys.modules, "arviz", types.SimpleNamespace(__version__="1.0.0"))
        monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
        monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
        log_w = np.random.default_rng(0).standard_normal((3, 200)) * np.array([[0.1], [1.0], [3.0]])
        k = importance._load_pareto_k()(log_w)
        np.testing.assert_allclose(k, arviz.psislw(log_w, reff=1.0)[1])
        assert calls == [(1.0, -1)]

    def test_missing_arviz_says_what_to_install(self, fa, monkeypatch):
        monkeypatch.setitem(sys.modules, "arviz", None)
        monkeypatch.setitem(sys.modules, "arviz_stats", None)
        with pytest.raises(ImportError, match=r"arviz<1.*arviz-stats.*pareto_k=False"):
            estimate_log_likelihood(fa.model, fa.exact_guide, fa.sample_x(3), num_samples=30)
        est = estimate_log_likelihood(fa.model, fa.exact_guide, fa.sample_x(3), num_samples=30, pareto_k=False)
        assert est.pareto_k is None


class TestChunking:
    def test_never_more_than_one_chunk_at_once(self, fa):
        x = fa.sample_x(23)
        shapes = []

        def recording_guide(x):
            mu, sigma = fa.posterior(x)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(mu, sigma.diagonal().sqrt()).to_event(1))
            shapes.append(tuple(z.shape))

        est = estimate_log_likelihood(
            fa.model, recording_guide, x, num_samples=57, sample_chunk=10, data_chunk=5, progress=True
        )
        assert est.log_px.shape == (23,)
        assert len(shapes) == math.ceil(57 / 10) * math.ceil(23 / 5)
        assert all(k <= 10 and b <= 5 and latent == 2 for k, b, latent in shapes), shapes
        assert sum(k * b for k, b, _ in shapes) == 57 * 23  # every (sample, datapoint) pair drawn once

    def test_chunking_does_not_change_a_seeded_single_chunk_result(self, fa):
        """One data chunk and one sample chunk equals log_importance_weights reduced by hand."""
        x = fa.sample_x(12)
        guide = fa.mean_field_guide(1.5)
        pyro.set_rng_seed(7)
        est = estimate_log_likelihood(fa.model, guide, x, num_samples=40, sample_chunk=40, data_chunk=12)
        pyro.set_rng_seed(7)
        log_w = log_importance_weights(fa.model, guide, x, num_samples=40)
        torch.testing.assert_close(est.log_px, torch.logsumexp(log_w, 0) - math.log(40))
        torch.testing.assert_close(est.elbo, log_w.mean(0))


class TestSummary:
    def test_summary_is_plain_floats(self, fa):
        x = fa.sample_x(30)
        est = estimate_log_likelihood(fa.model, fa.mean_field_guide(1.5), x, num_samples=100)
        s = est.summary()
        assert set(s) == {
            "log_px",
            "log_px_stderr",
            "elbo",
            "elbo_stderr",
            "num_samples",
            "num_datapoints",
            "pareto_k_share_above_0_7",
            "pareto_k_max",
        }
        assert s["num_samples"] == 100 and s["num_datapoints"] == 30
        for key in (
            "log_px",
            "log_px_stderr",
            "elbo",
            "elbo_stderr",
            "pareto_k_share_above_0_7",
            "pareto_k_max",
        ):
            assert type(s[key]) is float, key
        assert s["log_px"] == pytest.approx(est.log_px.mean().item())
        assert s["log_px_stderr"] == pytest.approx(est.log_px.std().item() / math.sqrt(30))
        assert s["elbo_stderr"] == pytest.approx(est.stderr_elbo)
        assert s["elbo"] == pytest.approx(est.mean_elbo) and s["elbo"] < s["log_px"]
        assert s["pareto_k_max"] == pytest.approx(est.pareto_k.max().item())

    def test_single_datapoint_has_no_stderr(self):
        est = ImportanceEstimate(log_px=torch.tensor([-1.0]), elbo=torch.tensor([-2.0]), pareto_k=None, num_samples=10)
        assert est.mean_log_px == -1.0 and math.isnan(est.stderr_log_px)
        assert est.summary()["pareto_k_share_above_0_7"] is None
