"""Figures of a sequence run: Healing-MNIST imputation strips and a forecast with its uncertainty band."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from pyro_flowvae.plots.images import save_image_grid

__all__ = ["save_imputation_strips", "plot_forecast", "write_sequence_figures"]


def save_imputation_strips(
    truth: Tensor, mask: Tensor, imputed: Tensor, frame_shape: Sequence[int], path: str | Path
) -> None:
    """Per sequence three rows of T frames: the complete frames, what the model saw (missing entries grey)
    and the imputation (observed entries kept, missing ones replaced by the posterior-predictive mean)."""
    rows = []
    for n in range(truth.shape[0]):
        seen = torch.where(mask[n].bool(), truth[n], torch.full_like(truth[n], 0.5))
        filled = torch.where(mask[n].bool(), truth[n], imputed[n])
        rows += [truth[n], seen, filled]
    images = torch.cat(rows).clamp(0, 1).cpu()
    save_image_grid(images, frame_shape, path, nrow=truth.shape[1])


def plot_forecast(
    months: Sequence[str] | None,
    history: Sequence[float],
    forecast: dict[str, Any],
    path: str | Path,
    baselines: dict[str, dict[str, Any]] | None = None,
    title: str = "",
) -> None:
    """The series, the held-out truth, the predictive mean and its HDI band, and the baselines' forecasts."""
    horizon = len(forecast["mean"])
    n = len(history)
    t_hist = list(range(n - horizon))
    t_future = list(range(n - horizon, n))
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    ax.plot(t_hist, history[: n - horizon], color="black", lw=1.2, label="observed")
    ax.plot(t_future, forecast["truth"], color="black", lw=1.2, ls=":", label="held out (truth)")
    level = forecast.get("level", 0.9)
    ax.fill_between(
        t_future, forecast["lower"], forecast["upper"], color="C0", alpha=0.3, label=f"GP-VAE {level:.0%} HDI"
    )
    ax.plot(t_future, forecast["mean"], color="C0", lw=2, label="GP-VAE mean")
    for i, (name, row) in enumerate((baselines or {}).items(), start=1):
        label = {"sarima": "SARIMA(0,1,1)(0,1,1)12"}.get(name, name.replace("_", " "))
        ax.plot(t_future, row["mean"], color=f"C{i}", lw=1.2, ls="--", label=label)
    if months:
        ticks = list(range(0, n, 12))
        ax.set_xticks(ticks, [months[i][:4] for i in ticks] if len(months) == n else ticks)
    ax.set_ylabel("passengers (thousands)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@torch.no_grad()
def write_sequence_figures(run_dir: Path, vae: Any, data: Any, config: Any, metrics: dict[str, Any]) -> None:
    """``imputations.png`` (sequence data with frames) or ``forecast.png`` (a forecast run)."""
    if "forecast" in metrics:
        meta = data.meta
        title = (
            f"GP-VAE ({config.gp.kernel} kernel, {config.guide.covariance} guide): RMSE {metrics['rmse']:.1f}, "
            f"MAPE {metrics['mape']:.1f}%"
        )
        plot_forecast(
            meta.get("months"),
            list(meta["series"]),
            metrics["forecast"],
            run_dir / "forecast.png",
            baselines=metrics.get("baselines"),
            title=title,
        )
        return
    if data.frame_shape is None or data.test.truth is None:
        return
    device = next(vae.parameters()).device
    test = data.test[:4].to(device)
    torch.manual_seed(config.train.seed)
    imputed = vae.impute(*test.args(), num_samples=config.eval.impute_samples).mean
    save_imputation_strips(test.truth, test.mask, imputed, data.frame_shape, run_dir / "imputations.png")
