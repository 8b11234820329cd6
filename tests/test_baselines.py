"""Baselines: imputation by mean and LOCF against loops, seasonal naive and SARIMA on the airline data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_flowvae.data.airline import load_airline
from pyro_flowvae.data.sequences import SequenceData
from pyro_flowvae.errors import DataError
from pyro_flowvae.evaluation.baselines import forward_imputation, mean_imputation, sarima_airline, seasonal_naive


def _data(n: int, t: int, d: int, seed: int, p_obs: float = 0.6) -> SequenceData:
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(n, t, d, generator=gen) + torch.arange(d)  # feature means differ
    mask = (torch.rand(n, t, d, generator=gen) < p_obs).float()
    return SequenceData(x=truth * mask, mask=mask, times=torch.arange(float(t)).expand(n, t), truth=truth)


class TestImputation:
    def test_mean_imputation_against_a_loop(self):
        train, data = _data(20, 6, 3, 0), _data(5, 6, 3, 1)
        train.mask[:, :, 2] = 0  # feature 2 never observed in train: falls back to the overall mean
        train.x[:, :, 2] = 0
        out = mean_imputation(train, data)
        values = [[] for _ in range(3)]
        for n in range(20):
            for t in range(6):
                for d in range(3):
                    if train.mask[n, t, d]:
                        values[d].append(float(train.x[n, t, d]))
        overall = sum(values[0] + values[1]) / len(values[0] + values[1])
        means = [sum(values[0]) / len(values[0]), sum(values[1]) / len(values[1]), overall]
        for n in range(5):
            for t in range(6):
                for d in range(3):
                    expected = float(data.x[n, t, d]) if data.mask[n, t, d] else means[d]
                    assert float(out[n, t, d]) == pytest.approx(expected, abs=1e-5)

    def test_forward_imputation_against_a_loop(self):
        data = _data(4, 9, 2, 2, p_obs=0.4)
        fill = torch.tensor([-7.0, 9.0])
        out = forward_imputation(data, fill)
        for n in range(4):
            for d in range(2):
                last = float(fill[d])
                for t in range(9):
                    if data.mask[n, t, d]:
                        last = float(data.x[n, t, d])
                    assert float(out[n, t, d]) == last
        assert torch.equal(
            forward_imputation(data, mean_imputation(data, data))[data.mask.bool()], data.x[data.mask.bool()]
        )

    def test_forward_imputation_bad_fill(self):
        with pytest.raises(DataError, match=r"fill of shape \(5,\) does not broadcast to the data's shape \(2, 3, 2\)"):
            forward_imputation(_data(2, 3, 2, 0), torch.zeros(5))

    def test_mean_imputation_dimension_mismatch(self):
        with pytest.raises(DataError, match="train has D = 3 values per frame but data has 2"):
            mean_imputation(_data(2, 3, 3, 0), _data(2, 3, 2, 0))


@pytest.fixture(scope="module")
def airline():
    _, series = load_airline()
    return series[:132], series[132:]


class TestSeasonalNaive:
    def test_airline_rmse_is_50_7(self, airline):
        train, test = airline
        forecast = seasonal_naive(train, 12)
        assert forecast.tolist() == train[120:].tolist()
        rmse = math.sqrt(sum((f - y) ** 2 for f, y in zip(forecast.tolist(), test.tolist())) / 12)
        assert round(rmse, 1) == 50.7

    def test_longer_horizon_repeats_the_last_season(self):
        series = torch.arange(10.0)
        assert seasonal_naive(series, 7, season=3).tolist() == [7, 8, 9, 7, 8, 9, 7]
        with pytest.raises(DataError, match=r"at least one season \(12 values\), got 10"):
            seasonal_naive(series, 3)


def _simulate_airline(n: int, theta: float, seasonal_theta: float, sigma: float, seed: int) -> np.ndarray:
    """y with (1 - B)(1 - B^12) y = (1 + theta B)(1 + Theta B^12) e, by a plain loop."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0, sigma, n + 13)
    y = np.zeros(n + 13)
    y[:13] = rng.normal(0, 1, 13)
    for t in range(13, n + 13):
        y[t] = (
            y[t - 1]
            + y[t - 12]
            - y[t - 13]
            + e[t]
            + theta * e[t - 1]
            + seasonal_theta * e[t - 12]
            + theta * seasonal_theta * e[t - 13]
        )
    return y[13:]


class TestSarima:
    def test_recovers_simulated_parameters(self):
        y = _simulate_airline(1500, -0.4, -0.6, 0.05, seed=0)
        fit = sarima_airline(y, horizon=3)
        assert fit["theta"] == pytest.approx(-0.4, abs=0.06)
        assert fit["seasonal_theta"] == pytest.approx(-0.6, abs=0.06)
        assert fit["sigma2"] == pytest.approx(0.05**2, rel=0.1)

    def test_interval_matches_simulated_future_paths(self):
        """The psi-weight variance equals the spread of futures simulated from the fitted model."""
        y = _simulate_airline(200, -0.3, -0.5, 0.1, seed=1)
        fit = sarima_airline(y, horizon=14, level=0.8)
        theta, big = fit["theta"], fit["seasonal_theta"]
        # residuals by brute-force CSS recursion, then 4000 futures with fresh innovations
        w = y[13:] - y[12:-1] - y[1:-12] + y[:-13]
        eps = np.zeros(len(y))
        for i, t in enumerate(range(13, len(y))):
            eps[t] = w[i] - theta * eps[t - 1] - big * eps[t - 12] - theta * big * eps[t - 13]
        rng = np.random.default_rng(0)
        sims = rng.normal(0, math.sqrt(fit["sigma2"]), (4000, 14))
        paths = np.tile(np.concatenate([y, np.zeros(14)]), (4000, 1))
        e_all = np.concatenate([np.tile(eps, (4000, 1)), sims], axis=1)
        n = len(y)
        for t in range(n, n + 14):
            paths[:, t] = (
                paths[:, t - 1]
                + paths[:, t - 12]
                - paths[:, t - 13]
                + e_all[:, t]
                + theta * e_all[:, t - 1]
                + big * e_all[:, t - 12]
                + theta * big * e_all[:, t - 13]
            )
        future = paths[:, n:]
        z = 1.2815515655446004  # standard normal 0.9 quantile
        np.testing.assert_allclose(fit["mean"].numpy(), future.mean(0), atol=4 * future.std(0).max() / math.sqrt(4000))
        np.testing.assert_allclose((fit["upper"] - fit["mean"]).numpy() / z, future.std(0), rtol=0.05)
        np.testing.assert_allclose((fit["mean"] - fit["lower"]).numpy() / z, future.std(0), rtol=0.05)

    def test_airline_forecast_close_to_the_classic_figures(self, airline):
        train, test = airline
        fit = sarima_airline(train.log(), horizon=12, level=0.9)
        forecast = fit["mean"].exp()
        rmse = float(((forecast - test) ** 2).mean().sqrt())
        mape = float(((forecast - test).abs() / test).mean() * 100)
        assert 17.0 < rmse < 20.0 and 2.5 < mape < 3.3  # classic figures: RMSE 18.6, MAPE 2.9%
        assert -0.45 < fit["theta"] < -0.2 and -0.7 < fit["seasonal_theta"] < -0.45
        assert bool((fit["lower"] < fit["mean"]).all()) and bool((fit["upper"].exp() > test * 0.9).all())

    def test_errors(self):
        with pytest.raises(DataError, match=r"at least 2 \* season \+ 4 = 28 values .* got 20"):
            sarima_airline(torch.ones(20))
        with pytest.raises(DataError, match=r"level must lie in \(0, 1\)"):
            sarima_airline(torch.arange(40.0), level=90)
        with pytest.raises(DataError, match="takes a 1-D series"):
            sarima_airline(torch.ones(3, 40))
