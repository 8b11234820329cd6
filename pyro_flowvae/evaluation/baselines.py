"""Baselines: imputing sequences (mean, last observation carried forward), forecasting (seasonal naive, SARIMA)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import optimize, signal
from torch import Tensor

from pyro_flowvae.data.sequences import SequenceData
from pyro_flowvae.errors import DataError

__all__ = ["forward_imputation", "mean_imputation", "sarima_airline", "seasonal_naive"]


def mean_imputation(train: SequenceData, data: SequenceData) -> Tensor:
    r"""``data.x`` with every missing value replaced by its feature's mean over the observed training values.

    .. math:: \hat{x}_{ntd} = m_{ntd}\, x_{ntd} + (1 - m_{ntd})\, \bar{x}_d, \qquad
        \bar{x}_d = \frac{\sum_{n,t} m_{ntd} x_{ntd}}{\sum_{n,t} m_{ntd}}

    over the training sequences. A feature never observed in ``train`` gets the mean of all observed training
    values. Returns a tensor of ``data``'s shape (N, T, D).
    """
    if train.data_dim != data.data_dim:
        raise DataError(
            f"mean_imputation: train has D = {train.data_dim} values per frame but data has {data.data_dim}; "
            "impute data of the same kind as the training data"
        )
    mask = train.mask.to(data.device)
    x = train.x.to(data.device)
    counts = mask.sum(dim=(0, 1))
    totals = (x * mask).sum(dim=(0, 1))
    overall = totals.sum() / counts.sum().clamp(min=1)
    means = torch.where(counts > 0, totals / counts.clamp(min=1), overall)
    return torch.where(data.mask.bool(), data.x, means.to(data.x.dtype))


def forward_imputation(data: SequenceData, fill: Tensor | float) -> Tensor:
    r"""Last observation carried forward along time, per sequence and feature.

    :math:`\hat{x}_{ntd} = x_{n\tau d}` with :math:`\tau = \max\{s \le t : m_{nsd} = 1\}`; where no value has been
    observed yet (before the first observation) the value of ``fill`` is used: a scalar or a tensor
    broadcastable to (N, T, D), e.g. :func:`mean_imputation`'s output. Observed values are kept.
    """
    x, mask = data.x, data.mask.bool()
    steps = torch.arange(data.seq_len, device=x.device).view(1, -1, 1).expand_as(x)
    last = torch.where(mask, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    carried = x.gather(1, last.clamp(min=0))
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    try:
        fill_t = fill_t.expand_as(x)
    except RuntimeError:
        raise DataError(
            f"forward_imputation: fill of shape {tuple(fill_t.shape)} does not broadcast to the data's shape "
            f"{tuple(x.shape)}; give a scalar, a (D,) vector or an (N, T, D) tensor"
        ) from None
    return torch.where(last >= 0, carried, fill_t)


def _series(values: Tensor | np.ndarray, name: str) -> Tensor:
    series = torch.as_tensor(values, dtype=torch.float64)
    if series.dim() != 1:
        raise DataError(f"{name} takes a 1-D series, got shape {tuple(series.shape)}; pass series.reshape(-1)")
    if not bool(torch.isfinite(series).all()):
        raise DataError(f"{name}: the series has NaN or infinite values; fill them first")
    return series


def seasonal_naive(series: Tensor | np.ndarray, horizon: int, season: int = 12) -> Tensor:
    r"""Forecast each of the next ``horizon`` values by the last observed value of the same season.

    :math:`\hat{y}_{n+h} = y_{n + h - s\,(\lfloor (h - 1)/s \rfloor + 1)}`, h = 1..horizon, for a series
    :math:`y_1..y_n` and season length s. Returns a float64 tensor (horizon,).

    [1] Rob J. Hyndman, George Athanasopoulos. Forecasting: Principles and Practice, 3rd ed. 2021, sec. 5.2.
    """
    y = _series(series, "seasonal_naive")
    if horizon < 1 or season < 1:
        raise DataError(f"seasonal_naive needs horizon >= 1 and season >= 1, got horizon={horizon}, season={season}")
    if y.shape[0] < season:
        raise DataError(f"seasonal_naive needs at least one season ({season} values), got {y.shape[0]}")
    h = torch.arange(horizon)
    return y[y.shape[0] - season + h % season]


def _ma_poly(theta: float, seasonal_theta: float, season: int) -> np.ndarray:
    """Coefficients of (1 + theta B)(1 + Theta B^s) in powers of B."""
    poly = np.zeros(season + 2)
    poly[0], poly[1], poly[season], poly[season + 1] = 1.0, theta, seasonal_theta, theta * seasonal_theta
    return poly


def _psi_weights(theta: float, seasonal_theta: float, season: int, n: int) -> np.ndarray:
    r""":math:`\psi_0..\psi_{n-1}` of :math:`\psi(B) = \theta(B) / ((1 - B)(1 - B^s))`."""
    ma = _ma_poly(theta, seasonal_theta, season)
    ar = np.zeros(season + 2)  # y_t = sum_i ar[i] y_{t-i} + ...
    ar[1], ar[season], ar[season + 1] = 1.0, 1.0, -1.0
    psi = np.zeros(n)
    for j in range(n):
        psi[j] = (ma[j] if j < len(ma) else 0.0) + sum(ar[i] * psi[j - i] for i in range(1, min(j, season + 1) + 1))
    return psi


def sarima_airline(
    log_series: Tensor | np.ndarray, horizon: int = 12, level: float = 0.9, season: int = 12
) -> dict[str, Tensor | float]:
    r"""Forecast with the airline model SARIMA(0,1,1)(0,1,1)_s fitted by conditional sum of squares (CSS).

    The model (Box & Jenkins 1976, ch. 9) for a (log) series :math:`y_t`, with season :math:`s` = 12:

    .. math::
        w_t = (1 - B)(1 - B^s)\, y_t = (1 + \theta B)(1 + \Theta B^s)\, \varepsilon_t,
        \qquad \varepsilon_t \sim \mathcal{N}(0, \sigma^2)

    (signs as in R and statsmodels; Box & Jenkins write :math:`1 - \theta B`). CSS: with the innovations before
    the first difference set to zero, :math:`\varepsilon_t = w_t - \theta\varepsilon_{t-1} - \Theta\varepsilon_{t-s}
    - \theta\Theta\varepsilon_{t-s-1}`, and :math:`(\theta, \Theta)` minimise :math:`\sum_t \varepsilon_t^2`
    (a grid search, then L-BFGS-B inside the invertible region :math:`|\theta|, |\Theta| < 1`);
    :math:`\hat\sigma^2 = \sum_t \varepsilon_t^2 / (m - 2)` over the m differences. This is CSS, not the exact
    Gaussian maximum likelihood of a state-space fit, so the estimates differ slightly from R's ``arima``.

    Forecasts follow the recursion :math:`y_t = y_{t-1} + y_{t-s} - y_{t-s-1} + \varepsilon_t + \theta
    \varepsilon_{t-1} + \Theta \varepsilon_{t-s} + \theta\Theta \varepsilon_{t-s-1}` with future
    :math:`\varepsilon` set to 0; the h-step variance is :math:`\sigma^2 \sum_{j<h} \psi_j^2`, with
    :math:`\psi(B) = (1 + \theta B)(1 + \Theta B^s) / ((1 - B)(1 - B^s))`, and the interval is
    mean :math:`\pm z_{(1 + \text{level})/2}` standard deviations, on the scale of ``log_series`` (exponentiate
    mean and bounds for passengers: the bounds stay valid quantiles, the mean becomes a median).

    Returns ``mean``, ``lower``, ``upper`` (float64 tensors (horizon,)), ``theta``, ``seasonal_theta``,
    ``sigma2`` and ``psi`` (the first ``horizon`` psi-weights).

    [1] George E. P. Box, Gwilym M. Jenkins. Time Series Analysis: Forecasting and Control. 1976.
    [2] Rob J. Hyndman, George Athanasopoulos. Forecasting: Principles and Practice, 3rd ed. 2021, ch. 9.
    """
    y = _series(log_series, "sarima_airline").numpy()
    n = y.shape[0]
    if horizon < 1:
        raise DataError(f"sarima_airline needs horizon >= 1, got {horizon}")
    if not 0 < level < 1:
        raise DataError(f"sarima_airline: level must lie in (0, 1), got {level}")
    if n < 2 * season + 4:
        raise DataError(
            f"sarima_airline needs at least 2 * season + 4 = {2 * season + 4} values to fit two MA terms after "
            f"differencing at lags 1 and {season}, got {n}; use a longer series"
        )
    lag = season + 1
    w = y[lag:] - y[lag - 1 : -1] - y[1 : n - season] + y[: n - lag]

    def residuals(params: np.ndarray) -> np.ndarray:
        return signal.lfilter([1.0], _ma_poly(params[0], params[1], season), w)

    def sse(params: np.ndarray) -> float:
        return float(np.sum(residuals(params) ** 2))

    grid = np.linspace(-0.9, 0.9, 19)
    start = min(((a, b) for a in grid for b in grid), key=lambda p: sse(np.array(p)))
    bound = 0.999
    fit = optimize.minimize(sse, np.array(start), method="L-BFGS-B", bounds=[(-bound, bound)] * 2)
    theta, seasonal_theta = (float(v) for v in fit.x)
    eps = np.zeros(n + horizon)
    eps[lag:n] = residuals(fit.x)
    sigma2 = float(np.sum(eps[lag:n] ** 2) / (w.shape[0] - 2))
    path = np.concatenate([y, np.zeros(horizon)])
    for t in range(n, n + horizon):
        path[t] = (
            path[t - 1]
            + path[t - season]
            - path[t - lag]
            + theta * eps[t - 1]
            + seasonal_theta * eps[t - season]
            + theta * seasonal_theta * eps[t - lag]
        )
    psi = _psi_weights(theta, seasonal_theta, season, horizon)
    sd = np.sqrt(sigma2 * np.cumsum(psi**2))
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2, dtype=torch.float64)))
    mean = torch.from_numpy(path[n:].copy())
    sd_t = torch.from_numpy(sd)
    return {
        "mean": mean,
        "lower": mean - z * sd_t,
        "upper": mean + z * sd_t,
        "theta": theta,
        "seasonal_theta": seasonal_theta,
        "sigma2": sigma2,
        "psi": torch.from_numpy(psi),
    }
