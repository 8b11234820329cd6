"""Figures for a run directory: the ELBO curve and image grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import save_image

__all__ = ["plot_elbo_curve", "plot_kl_per_dim", "plot_flow_health", "save_image_grid", "interleave", "run_title"]


def plot_elbo_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Training and validation ELBO (nats per datapoint) against the epoch."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_elbo"] for r in history], marker="o", label="train ELBO (running, KL-weighted)")
    ax.plot(epochs, [r["valid_elbo"] for r in history], marker="s", label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_kl_per_dim(kl_per_dim: Sequence[float], active: Sequence[float], path: str | Path, title: str = "") -> None:
    """KL(q(z_u | x) || p(z_u)) per latent dimension, sorted, with the activity Cov_x E_q[z_u] beside it:
    a picture of how many dimensions the model uses (posterior collapse shows as a tail of zeros)."""
    order = sorted(range(len(kl_per_dim)), key=lambda u: -kl_per_dim[u])
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(order)), [kl_per_dim[u] for u in order], color="tab:blue", label="KL (nats)")
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("nats per datapoint")
    ax.set_xticks(range(len(order)), [str(u) for u in order], fontsize=6)
    twin = ax.twinx()
    twin.plot(range(len(order)), [active[u] for u in order], "o", color="tab:orange", label="activity")
    twin.axhline(0.01, color="tab:orange", linestyle=":", linewidth=1)
    twin.set_yscale("log")
    twin.set_ylabel("activity Cov_x E_q[z_u] (dotted: 0.01)")
    ax.set_title(title)
    fig.savefig(path, dpi=120)


def plot_flow_health(record: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Per flow layer, the share of saturated units (slope below the record's threshold) and the median slope,
    with the mean log|det J| and the gap log p(x) - ELBO in the title: a dead flow shows as bars near 100%."""
    layers = record["layers"]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    index = [layer["layer"] for layer in layers]
    ax.bar(index, [100 * layer["saturated"] for layer in layers], color="tab:red", label="saturated units (%)")
    ax.set_ylim(0, 100)
    ax.set_xlabel("flow layer")
    ax.set_ylabel(f"% of units with slope < {record['threshold']}")
    twin = ax.twinx()
    twin.plot(index, [layer["median_slope"] for layer in layers], "o-", color="tab:blue", label="median slope")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("median slope (1: linear, 0: saturated)")
    gap = record.get("gap")
    facts = f"mean log|det J| {record['mean_log_det']:.2f} nats" + (f", gap {gap:.2f} nats" if gap is not None else "")
    ax.set_title(f"{title}\n{facts}" if title else facts, fontsize=9)
    fig.savefig(path, dpi=120)


def save_image_grid(images: Tensor, image_shape: Sequence[int], path: str | Path, nrow: int = 8) -> None:
    """Rows of ``images`` (N, D), reshaped to ``image_shape``, as one PNG grid (torchvision)."""
    grid = images.detach().float().cpu().clamp(0, 1).reshape(-1, *image_shape)
    save_image(grid, str(path), nrow=nrow, padding=2, pad_value=1.0)


def interleave(a: Tensor, b: Tensor) -> Tensor:
    """Rows a0, b0, a1, b1, ...: originals beside their reconstructions."""
    return torch.stack([a, b], dim=1).reshape(-1, *a.shape[1:])


def run_title(config: Any) -> str:
    """The title of a run's plots: guide, latent dimension and data set."""
    return f"{config.guide.flow} guide, latent {config.model.latent_dim}, {config.data.name}"
