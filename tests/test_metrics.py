"""Metrics against brute force: masked NLL/MSE by loops, AUROC by counting pairs, a linear probe, forecasts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize

from pyro_flowvae.errors import DataError
from pyro_flowvae.evaluation.metrics import (
    forecast_metrics,
    logistic_regression_auroc,
    masked_bernoulli_nll,
    masked_mse,
    multiclass_auroc,
    roc_auc,
)


def _pairs_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.fixture
def masked():
    gen = torch.Generator().manual_seed(0)
    truth = (torch.rand(3, 4, 5, generator=gen) > 0.5).float()
    probs = torch.rand(3, 4, 5, generator=gen) * 0.98 + 0.01
    missing = (torch.rand(3, 4, 5, generator=gen) > 0.6).float()
    return probs, truth, missing


class TestImputationScores:
    def test_bernoulli_nll_against_a_loop_and_torch_distributions(self, masked):
        probs, truth, missing = masked
        total, count = 0.0, 0
        for idx in itertools.product(range(3), range(4), range(5)):
            if missing[idx]:
                p, y = float(probs[idx]), float(truth[idx])
                total -= y * math.log(p) + (1 - y) * math.log(1 - p)
                count += 1
        assert float(masked_bernoulli_nll(probs, truth, missing)) == pytest.approx(total / count, rel=1e-5)
        logits = torch.logit(probs)
        assert float(masked_bernoulli_nll(logits, truth, missing, logits=True)) == pytest.approx(
            total / count, rel=1e-5
        )
        dist = torch.distributions.Bernoulli(logits=logits)
        ref = -(dist.log_prob(truth) * missing).sum() / missing.sum()
        torch.testing.assert_close(masked_bernoulli_nll(logits, truth, missing, logits=True), ref)

    def test_bernoulli_nll_with_sample_dimension_averages_samples(self, masked):
        probs, truth, missing = masked
        stacked = torch.stack([probs, 1 - probs])
        both = masked_bernoulli_nll(stacked, truth, missing)
        single = [masked_bernoulli_nll(p, truth, missing) for p in stacked]
        torch.testing.assert_close(both, (single[0] + single[1]) / 2)

    def test_mse_against_a_loop(self, masked):
        pred, truth, missing = masked
        errors = [
            float((pred[i] - truth[i]) ** 2) for i in itertools.product(range(3), range(4), range(5)) if missing[i]
        ]
        assert float(masked_mse(pred, truth, missing)) == pytest.approx(sum(errors) / len(errors), rel=1e-6)

    def test_errors(self, masked):
        probs, truth, missing = masked
        with pytest.raises(DataError, match="no entry is marked missing.*pass missing = 1 - mask"):
            masked_mse(probs, truth, torch.zeros_like(missing))
        with pytest.raises(DataError, match="probabilities must lie in \\[0, 1\\]; pass logits=True"):
            masked_bernoulli_nll(probs * 3, truth, missing)
        with pytest.raises(DataError, match=r"shapes \(3, 4, 5\) \(prediction\), \(3, 4\) \(truth\)"):
            masked_mse(probs, truth[..., 0], missing)


class TestAuroc:
    def test_roc_auc_equals_pair_counting_with_ties(self):
        gen = torch.Generator().manual_seed(1)
        scores = torch.randint(0, 6, (60,), generator=gen).float()  # many ties
        labels = torch.randint(0, 2, (60,), generator=gen)
        assert roc_auc(scores, labels) == pytest.approx(_pairs_auc(scores.tolist(), labels.tolist()), abs=1e-12)
        assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1])) == 1.0
        assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
        assert roc_auc(torch.ones(4), torch.tensor([0, 1, 0, 1])) == 0.5

    def test_multiclass_is_the_mean_of_one_vs_rest(self):
        gen = torch.Generator().manual_seed(2)
        probs = torch.softmax(torch.randn(40, 3, generator=gen), -1)
        labels = torch.randint(0, 3, (40,), generator=gen)
        expected = sum(_pairs_auc(probs[:, k].tolist(), (labels == k).long().tolist()) for k in range(3)) / 3
        assert multiclass_auroc(probs, labels) == pytest.approx(expected, abs=1e-12)
        # a class absent from the labels is left out
        probs4 = torch.cat([probs, torch.rand(40, 1, generator=gen)], 1)
        assert multiclass_auroc(probs4, labels) == pytest.approx(expected, abs=1e-12)

    def test_errors(self):
        with pytest.raises(DataError, match="roc_auc needs both classes, got 3 positive and 0 negative"):
            roc_auc(torch.rand(3), torch.ones(3))
        with pytest.raises(DataError, match="labels must be 0 or 1; for several classes use multiclass_auroc"):
            roc_auc(torch.rand(3), torch.tensor([0, 1, 2]))
        with pytest.raises(DataError, match=r"labels must lie in 0..1"):
            multiclass_auroc(torch.rand(3, 2), torch.tensor([0, 1, 2]))


class TestLinearProbe:
    def test_separable_classes_give_auroc_one(self):
        gen = torch.Generator().manual_seed(3)
        centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]) * 1e3  # scale is removed by standardising
        y_train, y_test = torch.arange(90) % 3, torch.arange(30) % 3
        x_train = centres[y_train] + torch.randn(90, 2, generator=gen) * 1e3
        x_test = centres[y_test] + torch.randn(30, 2, generator=gen) * 1e3
        assert logistic_regression_auroc(x_train, y_train, x_test, y_test) == 1.0

    def test_noise_features_give_chance_auroc(self):
        gen = torch.Generator().manual_seed(4)
        x_train, x_test = torch.randn(600, 5, generator=gen), torch.randn(600, 5, generator=gen)
        y_train, y_test = torch.randint(0, 4, (600,), generator=gen), torch.randint(0, 4, (600,), generator=gen)
        assert abs(logistic_regression_auroc(x_train, y_train, x_test, y_test) - 0.5) < 0.05

    def test_matches_an_independent_fit(self):
        """Same AUROC as a penalised multinomial fit by scipy on a loss and gradient written out in numpy."""
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(200, 3, generator=gen)
        y = (x[:, 0] + 0.5 * torch.randn(200, generator=gen) > 0).long() + (x[:, 1] > 1).long()
        auc = logistic_regression_auroc(x, y, x, y, l2=1e-2)
        z = (x.numpy().astype(np.float64) - x.numpy().mean(0)) / x.numpy().std(0)
        onehot = np.eye(3)[y.numpy()]

        def loss_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = params[:9].reshape(3, 3), params[9:]
            logits = z @ w + b
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            loss = -np.mean(np.sum(onehot * np.log(p), 1)) + 1e-2 * np.sum(w**2)
            g = (p - onehot) / len(z)
            return loss, np.concatenate([(z.T @ g + 2e-2 * w).ravel(), g.sum(0)])

        fit = optimize.minimize(loss_grad, np.zeros(12), jac=True, method="BFGS", options={"gtol": 1e-10})
        w, b = fit.x[:9].reshape(3, 3), fit.x[9:]
        ref = multiclass_auroc(torch.softmax(torch.from_numpy(z @ w + b), -1), y)
        assert auc == pytest.approx(ref, abs=1e-6)


class TestForecast:
    def test_against_plain_python(self):
        mean, truth = [10.0, 20.0, 33.0], [12.0, 18.0, 30.0]
        lower, upper = [9.0, 19.0, 31.0], [13.0, 21.0, 35.0]
        out = forecast_metrics(*(torch.tensor(v) for v in (mean, lower, upper, truth)))
        rmse = math.sqrt(sum((m - t) ** 2 for m, t in zip(mean, truth)) / 3)
        mape = 100 * sum(abs(m - t) / t for m, t in zip(mean, truth)) / 3
        assert out == pytest.approx({"rmse": rmse, "mape": mape, "coverage": 1 / 3})

    def test_errors(self):
        with pytest.raises(DataError, match="must have the same shape"):
            forecast_metrics(torch.ones(3), torch.ones(3), torch.ones(2), torch.ones(3))
        with pytest.raises(DataError, match="MAPE divides by the true values, and some are 0"):
            forecast_metrics(torch.ones(2), torch.ones(2), torch.ones(2), torch.zeros(2))
