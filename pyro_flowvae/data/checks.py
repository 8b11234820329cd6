"""Data checks that name the split, the offending value and where it is, and say how to fix it."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_flowvae.errors import DataError

__all__ = ["check_data", "check_finite"]


def _position(mask: Tensor) -> str:
    """'row i, column j' of the first True entry of a 2-D mask (row-major order)."""
    first = int(torch.nonzero(mask.reshape(-1))[0, 0])
    if mask.dim() < 2:
        return f"index {first}"
    cols = mask.shape[1] if mask.shape[1] > 0 else 1
    return f"row {first // cols}, column {first % cols}"


def _first_value(x: Tensor, mask: Tensor) -> float:
    return float(x.reshape(-1)[torch.nonzero(mask.reshape(-1))[0, 0]])


def check_finite(x: Tensor, *, split: str = "train") -> None:
    """Raise :class:`DataError` when ``x`` holds NaN or infinite values, saying how many and where."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    # fast path: a NaN or inf anywhere makes the sum non-finite (a finite sum proves there is none)
    if bool(torch.isfinite(x.sum())):
        return
    bad = ~torch.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    n_nan = int(torch.isnan(x).sum())
    raise DataError(
        f"the {split} split has {n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} inf) out of "
        f"{x.numel()}; the first is at {_position(bad)} (value {_first_value(x, bad)}). "
        "Remove or impute those entries before training."
    )


def check_data(
    x: Tensor,
    *,
    likelihood: str,
    data_dim: int | None = None,
    split: str = "train",
    binarize_dynamic: bool = False,
) -> None:
    """Check that ``x`` (N, D) suits a model with the given likelihood; raise :class:`DataError` if not.

    Checks, in order: ``x`` is 2-D; no NaN/inf; D equals ``data_dim`` (when given); the values lie in the
    likelihood's support: {0, 1} for ``"bernoulli"``, [0, 1] for ``"continuous_bernoulli"``; other
    likelihoods (``"gaussian"``) accept any finite value.

    ``binarize_dynamic=True`` says this tensor holds grey levels that are resampled as Bernoulli draws every
    time a batch is drawn (the train split when ``DataSplits.binarize == "dynamic"``): under ``"bernoulli"``
    it then only has to lie in [0, 1].
    """
    if not isinstance(x, Tensor):
        raise DataError(f"the {split} split must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise DataError(f"the {split} split must have shape (N, D), got {tuple(x.shape)}")
    check_finite(x, split=split)
    if data_dim is not None and x.shape[1] != data_dim:
        raise DataError(
            f"the {split} split has {x.shape[1]} values per example but the model expects data_dim = "
            f"{data_dim}; build the model for this data set or load the data it was built for"
        )
    if x.numel() == 0:
        return
    if likelihood == "bernoulli" and not binarize_dynamic:
        bad = (x != 0) & (x != 1)
        n_bad = int(bad.sum())
        if n_bad:
            raise DataError(
                f"model.likelihood = 'bernoulli' needs binary data, but the {split} split has {n_bad} "
                f"value(s) outside {{0, 1}} (range [{float(x.min()):g}, {float(x.max()):g}]; the first is "
                f"{_first_value(x, bad):g} at {_position(bad)}). Binarize the data — set "
                'data.binarize = "dynamic" or "static" — or choose model.likelihood = '
                '"continuous_bernoulli" or "gaussian".'
            )
    elif likelihood == "continuous_bernoulli" or (likelihood == "bernoulli" and binarize_dynamic):
        bad = (x < 0) | (x > 1)
        n_bad = int(bad.sum())
        if n_bad:
            why = (
                "dynamic binarization draws Bernoulli(x) and needs x in [0, 1]"
                if likelihood == "bernoulli"
                else "model.likelihood = 'continuous_bernoulli' needs values in [0, 1]"
            )
            raise DataError(
                f"{why}, but the {split} split has {n_bad} value(s) outside [0, 1] (range "
                f"[{float(x.min()):g}, {float(x.max()):g}]; the first is {_first_value(x, bad):g} at "
                f'{_position(bad)}). Scale the data into [0, 1], or choose model.likelihood = "gaussian".'
            )
