"""Minibatches sliced on the device where the data live, optionally binarized dynamically."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from pyro_flowvae.errors import DataError

__all__ = ["iterate_minibatches", "num_minibatches", "batch_args"]


def num_minibatches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`iterate_minibatches` yields for ``n`` examples."""
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size}")
    if n < 0:
        raise DataError(f"the number of examples must be >= 0, got {n}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_minibatches(
    x: Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    dynamic_binarize: bool = False,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    r"""Yield batches of rows of ``x``: one pass over the data (an epoch).

    With ``shuffle`` the order is a permutation drawn on ``x``'s device, so nothing is copied between host
    and device; without it the batches are contiguous views. ``dynamic_binarize`` replaces every batch by a
    fresh draw :math:`\tilde{x} \sim \mathrm{Bernoulli}(x)` on the device (values of ``x`` must lie in
    [0, 1]; :func:`~pyro_flowvae.data.check_data` checks that once, so no per-batch check syncs the device).
    Both the permutation and the Bernoulli draws use ``generator`` when given (it must be on ``x``'s device:
    ``torch.Generator(device=x.device).manual_seed(seed)``), which makes the epoch reproducible.
    The last, smaller batch is dropped when ``drop_last``.
    """
    n_batches = num_minibatches(x.shape[0], batch_size, drop_last)
    if generator is not None and generator.device.type != x.device.type:
        raise DataError(
            f"the generator is on {generator.device} but the data are on {x.device}; create it with "
            f"torch.Generator(device={str(x.device)!r})"
        )
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator) if shuffle else None
    for i in range(n_batches):
        start, stop = i * batch_size, min((i + 1) * batch_size, x.shape[0])
        batch = x[start:stop] if perm is None else x.index_select(0, perm[start:stop])
        if dynamic_binarize:
            batch = torch.bernoulli(batch, generator=generator)
        yield batch


def batch_args(batch: Any) -> tuple[Any, ...]:
    """The arguments model and guide take for a minibatch: ``(x,)`` for a tensor of images, ``batch.args()``
    (``(x, mask, times)``) for :class:`~pyro_flowvae.data.sequences.SequenceData`."""
    return (batch,) if isinstance(batch, Tensor) else tuple(batch.args())
