"""Forecast the airline passengers of 1960 with a GP-VAE, using the Python API and a plain Pyro SVI loop.

Each latent channel of the VAE has a Gaussian-process prior over time (a periodic kernel for the season plus a
linear one for the trend); the guide is the banded-precision Gaussian of Fortuin et al. (2020). The 12 months to
forecast are masked entries of the last window: the masked likelihood ignores them, and the forecast is the
posterior predictive there, summarised by its mean and arviz's 90% HDI.

    python examples/gpvae_airline.py                 # about a minute on a CPU; writes airline_forecast.png
    python examples/gpvae_airline.py --smoke         # seconds
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import arviz as az
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_flowvae.config import load_config
from pyro_flowvae.data import airline_windows, iterate_minibatches, load_airline, to_passengers
from pyro_flowvae.evaluation.baselines import sarima_airline, seasonal_naive
from pyro_flowvae.evaluation.metrics import forecast_metrics
from pyro_flowvae.models.gpvae import GPVAE, posterior_predictive_to_inference_data
from pyro_flowvae.plots.sequences import plot_forecast

CONFIG = Path(__file__).resolve().parent / "configs" / "airline_gpvae.toml"


def main(args: argparse.Namespace) -> dict[str, float]:
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    months, passengers = load_airline()
    data = airline_windows(passengers, months=months, window=36, horizon=12)
    config = load_config(CONFIG, {"train.seed": args.seed})
    vae = GPVAE.from_config(config, data.data_dim, data.seq_len)

    # the SVI loop: model and guide are plain Pyro programs called as fn(x, mask, times)
    svi = SVI(vae.model, vae.guide, Adam({"lr": config.train.lr}), Trace_ELBO())
    generator = torch.Generator().manual_seed(args.seed)
    epochs = 2 if args.smoke else args.epochs
    for epoch in range(1, epochs + 1):
        loss = sum(svi.step(*batch.args()) for batch in iterate_minibatches(data.train, 32, generator=generator))
        if epoch % 100 == 0 or epoch == epochs:
            print(f"epoch {epoch:4d}  ELBO per window {-loss / len(data.train):8.2f}")

    # the forecast: posterior-predictive draws at the masked months of the last window
    vae.eval()
    test = data.test
    imputation = vae.impute(*test.args(), num_samples=100 if args.smoke else 1000)
    draws = to_passengers(imputation.samples[:, 0, -12:, 0], data.meta).double()  # (S, 12)
    truth = to_passengers(test.truth[0, -12:, 0], data.meta).double()
    lower, upper = torch.from_numpy(az.hdi(draws.numpy()[None], hdi_prob=0.9)).unbind(-1)
    figures = forecast_metrics(draws.mean(0), lower, upper, truth)

    history = passengers[:-12].double()
    naive = seasonal_naive(history, 12)
    sarima = sarima_airline(history.log(), horizon=12)
    rmse, mape, coverage = figures["rmse"], figures["mape"], figures["coverage"]
    print(f"GP-VAE          RMSE {rmse:6.1f}  MAPE {mape:4.1f}%  90% coverage {coverage:.2f}")
    print(f"seasonal naive  RMSE {forecast_metrics(naive, naive, naive, truth)['rmse']:6.1f}")
    sarima_rmse = forecast_metrics(sarima["mean"].exp(), sarima["lower"].exp(), sarima["upper"].exp(), truth)["rmse"]
    print(f"SARIMA          RMSE {sarima_rmse:6.1f}")

    # the same draws as arviz InferenceData (standardized log scale), e.g. for az.summary
    idata = posterior_predictive_to_inference_data(imputation, test.x, test.mask, test.times)
    assert idata.posterior_predictive["x"].shape[1] == imputation.samples.shape[0]
    if args.out:
        forecast = {"truth": truth.tolist(), "mean": draws.mean(0).tolist(), "lower": lower.tolist(),
                    "upper": upper.tolist(), "level": 0.9}  # fmt: skip
        baselines = {"seasonal naive": {"mean": naive.tolist()}, "SARIMA": {"mean": sarima["mean"].exp().tolist()}}
        plot_forecast(months, passengers.tolist(), forecast, args.out, baselines=baselines, title="airline, 1960")
        print(f"wrote {args.out}")
    assert all(math.isfinite(v) for v in figures.values())
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=500, help="passes over the training windows")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--out", default="airline_forecast.png", help="forecast plot ('' for none)")
    parser.add_argument("--smoke", action="store_true", help="two epochs, no plot: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.out = ""
    return args


if __name__ == "__main__":
    main(parse_args())
