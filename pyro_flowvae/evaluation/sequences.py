"""Test-set figures of a sequence VAE: ELBO and log p(x_obs), imputation error on the missing entries,
a classifier on the latent means, and the forecast of masked future steps, beside simple baselines."""

from __future__ import annotations

from typing import Any

import pyro
import torch
from torch import Tensor

from pyro_flowvae.config import EvalConfig
from pyro_flowvae.evaluation.images import importance_metrics, spread_subset
from pyro_flowvae.evaluation.importance import estimate_log_likelihood
from pyro_flowvae.models.gpvae import GPVAE, Imputation

__all__ = ["evaluate_sequences", "impute_batches", "imputation_metrics", "forecast_interval_metrics", "latent_features"]

#: posterior-predictive draws decoded at once by :func:`impute_batches`
IMPUTE_SAMPLE_CHUNK = 5


@torch.no_grad()
def impute_batches(
    vae: GPVAE,
    data: Any,
    num_samples: int,
    batch_size: int = 100,
    sample_chunk: int = IMPUTE_SAMPLE_CHUNK,
    keep_samples: int | None = None,
) -> Imputation:
    """:meth:`GPVAE.impute` over ``data`` (a SequenceData), ``batch_size`` sequences and ``sample_chunk`` draws at
    a time, keeping the first ``keep_samples`` draws of each (None: all; 0: none, for mean and log predictive
    density alone); ``log_pred`` scores ``data.truth``. Peak memory grows with ``batch_size * sample_chunk``,
    not with ``len(data) * num_samples``."""
    means, samples, log_preds = [], [], []
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        imp = vae.impute(
            *chunk.args(), num_samples=num_samples, target=chunk.truth, sample_chunk=sample_chunk,
            keep_samples=keep_samples,
        )  # fmt: skip
        means.append(imp.mean)
        samples.append(imp.samples)
        if imp.log_pred is not None:
            log_preds.append(imp.log_pred)
    return Imputation(
        mean=torch.cat(means),
        samples=torch.cat(samples, dim=1),
        log_pred=torch.cat(log_preds) if log_preds else None,
    )


def imputation_metrics(imputation: Imputation, data: Any) -> dict[str, float]:
    r"""On the missing entries only (mask = 0) of data with known ``truth``:
    ``nll`` = :math:`-\frac{1}{|M|}\sum_{(n,t,d) \in M} \log \frac1S \sum_s p(x^{true}_{ntd} \mid z_s)`
    (nats per missing entry, the posterior-predictive density) and ``mse`` of the predictive mean."""
    from pyro_flowvae.evaluation.metrics import masked_mse

    missing = data.mask == 0
    figures = {"mse": float(masked_mse(imputation.mean, data.truth, missing))}
    if imputation.log_pred is not None:
        figures["nll"] = float(-imputation.log_pred[missing].mean())
    return figures


@torch.no_grad()
def latent_features(vae: GPVAE, data: Any, batch_size: int = 200) -> Tensor:
    """The flattened posterior means E_q[z] (N, L*T), a representation for downstream classifiers."""
    parts = [vae.latent_means(*data[s : s + batch_size].args()).flatten(1) for s in range(0, len(data), batch_size)]
    return torch.cat(parts)


def forecast_interval_metrics(samples: Tensor, truth: Tensor, level: float) -> dict[str, Any]:
    """Predictive mean and the ``level`` HDI (arviz) of forecast draws (S, H), scored against ``truth`` (H,):
    RMSE, MAPE (%) and the share of true values inside the interval."""
    import arviz as az

    from pyro_flowvae.evaluation.metrics import forecast_metrics

    draws = samples.detach().cpu().double().numpy()
    hdi = az.hdi(draws[None], hdi_prob=level)  # (H, 2) over chain 1 x draws S
    mean = torch.from_numpy(draws.mean(0))
    lower, upper = torch.from_numpy(hdi[:, 0]), torch.from_numpy(hdi[:, 1])
    figures = forecast_metrics(mean, lower, upper, truth.detach().cpu().double())
    return {**figures, "mean": mean.tolist(), "lower": lower.tolist(), "upper": upper.tolist()}


def evaluate_sequences(
    vae: GPVAE, data: Any, config: EvalConfig, progress: bool = False, auroc_train: int = 2000
) -> dict[str, Any]:
    """Everything ``metrics.json`` reports for sequence data (nats per sequence for the ELBO and log p(x_obs)):

    * ``test_elbo``, ``test_log_px``: from ``eval.iw_samples`` importance samples, observed entries only;
    * ``test_nll_missing``, ``test_mse_missing``: the imputation of the missing entries (data with ``truth``);
    * ``auroc``: a logistic regression on the latent means, fitted on training sequences (data with labels);
    * ``rmse``, ``mape``, ``coverage90`` and the forecast itself: masked future steps (data with a horizon);
    * ``baselines``: mean and forward imputation, or seasonal naive and SARIMA for a forecast.
    """
    vae.eval()
    test = data.test
    if config.test_limit is not None and config.test_limit < len(test):
        test = test[spread_subset(len(test), config.test_limit)]

    def indexed(fn: Any) -> Any:
        return lambda idx: fn(*test[idx].args())

    with pyro.validation_enabled(False):
        estimate = estimate_log_likelihood(
            indexed(vae.model),
            indexed(vae.guide),
            torch.arange(len(test), device=test.x.device),
            num_samples=config.iw_samples,
            sample_chunk=config.sample_chunk,
            data_chunk=config.data_chunk,
            pareto_k=True,
            progress=progress,
        )
        metrics: dict[str, Any] = importance_metrics(estimate)
        if test.truth is None:
            return metrics
        torch.manual_seed(0)
        horizon = data.meta.get("horizon")
        # a forecast's bands need the draws; imputation figures need only the mean and the log density
        imputation = impute_batches(vae, test, config.impute_samples, keep_samples=None if horizon else 0)
        if horizon:
            metrics.update(_forecast(imputation, test, data, config.level))
            return metrics
        metrics["missing_share"] = float((test.mask == 0).float().mean())
        if metrics["missing_share"] == 0.0:
            return metrics  # nothing is missing (e.g. data.options.missing_rate = 0): nothing to impute or score
        figures = imputation_metrics(imputation, test)
        metrics["test_mse_missing"] = figures["mse"]
        metrics["test_nll_missing"] = figures.get("nll")
        hidden_frames = _hidden_frames(test)
        if hidden_frames is not None:  # whole frames unobserved: what only a prior over time can fill
            from pyro_flowvae.evaluation.metrics import masked_mse

            metrics["test_mse_missing_frames"] = float(masked_mse(imputation.mean, test.truth, hidden_frames))
            metrics["missing_frame_share"] = float(hidden_frames[..., 0].float().mean())
        baselines = _imputation_baselines(data, test)
        if test.labels is not None and data.train.labels is not None:
            from pyro_flowvae.evaluation.metrics import logistic_regression_auroc

            train = data.train[:auroc_train]
            metrics["auroc"] = float(
                logistic_regression_auroc(
                    latent_features(vae, train), train.labels, latent_features(vae, test), test.labels
                )
            )
            for name, fn in _IMPUTERS.items():
                features_train = fn(data.train, train).flatten(1)
                features_test = fn(data.train, test).flatten(1)
                baselines[name]["auroc"] = float(
                    logistic_regression_auroc(features_train, train.labels, features_test, test.labels)
                )
        metrics["baselines"] = baselines
    return metrics


def _mean_imputed(train: Any, data: Any) -> Tensor:
    from pyro_flowvae.evaluation.baselines import mean_imputation

    return mean_imputation(train, data)


def _forward_imputed(train: Any, data: Any) -> Tensor:
    """Last observation carried forward; entries before a feature's first observation get the training mean."""
    from pyro_flowvae.evaluation.baselines import forward_imputation

    return forward_imputation(data, _mean_imputed(train, data))


_IMPUTERS = {"mean_imputation": _mean_imputed, "forward_imputation": _forward_imputed}


def _hidden_frames(data: Any) -> Tensor | None:
    """A (N, T, D) bool mask of the entries of frames with no observed entry, or None when there are none."""
    empty = ~(data.mask != 0).any(-1)  # (N, T)
    return empty.unsqueeze(-1).expand_as(data.mask) if bool(empty.any()) else None


def _imputation_baselines(data: Any, test: Any) -> dict[str, dict[str, float | None]]:
    from pyro_flowvae.evaluation.metrics import masked_bernoulli_nll, masked_mse

    missing = test.mask == 0
    hidden_frames = _hidden_frames(test)
    rows: dict[str, dict[str, float | None]] = {}
    for name, fn in _IMPUTERS.items():
        filled = fn(data.train, test)
        # an NLL only where the fill is a probability: mean imputation's pixel means (forward fills are 0/1)
        nll = float(masked_bernoulli_nll(filled, test.truth, missing)) if name == "mean_imputation" else None
        rows[name] = {"mse": float(masked_mse(filled, test.truth, missing)), "nll": nll}
        if hidden_frames is not None:
            rows[name]["mse_missing_frames"] = float(masked_mse(filled, test.truth, hidden_frames))
    return rows


def _forecast(imputation: Imputation, test: Any, data: Any, level: float) -> dict[str, Any]:
    """Forecast figures on the passenger scale for the last test window's masked future steps."""
    from pyro_flowvae.data.airline import to_passengers
    from pyro_flowvae.evaluation.baselines import sarima_airline, seasonal_naive
    from pyro_flowvae.evaluation.metrics import forecast_metrics

    horizon = int(data.meta["horizon"])
    meta = data.meta
    draws = to_passengers(imputation.samples[:, -1, -horizon:, 0], meta)  # (S, H) of the last window
    truth = to_passengers(test.truth[-1, -horizon:, 0], meta)
    figures = forecast_interval_metrics(draws, truth, level)
    series = torch.as_tensor(meta["series"], dtype=torch.float64)
    history = series[:-horizon]
    naive = seasonal_naive(history, horizon)
    sarima = sarima_airline(history.log(), horizon=horizon, level=level)
    sarima_mean, sarima_lo, sarima_hi = (sarima[k].exp() for k in ("mean", "lower", "upper"))
    return {
        "rmse": figures["rmse"],
        "mape": figures["mape"],
        "coverage90" if abs(level - 0.9) < 1e-9 else f"coverage{round(level * 100)}": figures["coverage"],
        "forecast": {
            "months": meta.get("test_months"),
            "truth": truth.tolist(),
            "mean": figures["mean"],
            "lower": figures["lower"],
            "upper": figures["upper"],
            "level": level,
        },
        "baselines": {
            "seasonal_naive": {
                **{k: v for k, v in forecast_metrics(naive, naive, naive, truth).items() if k != "coverage"},
                "mean": naive.tolist(),
            },
            "sarima": {
                **forecast_metrics(sarima_mean, sarima_lo, sarima_hi, truth),
                "mean": sarima_mean.tolist(),
                "lower": sarima_lo.tolist(),
                "upper": sarima_hi.tolist(),
            },
        },
    }
