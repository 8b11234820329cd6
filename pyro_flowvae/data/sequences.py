"""Partly observed sequences (N, T, D) with masks and observation times, and their train/valid/test splits."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from pyro_flowvae.errors import DataError

__all__ = ["SequenceData", "SequenceSplits", "check_sequence_batch"]

_Index = int | slice | Tensor | Sequence[int]


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _first_bad(bad: Tensor) -> str:
    """'(i, j, ...)' of the first True entry."""
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    return str(tuple(int(i) for i in np.unravel_index(flat, tuple(bad.shape))))


def _all_finite(x: Tensor) -> bool:
    """No NaN or inf in ``x``: the sum is finite (fast path), or, if it overflowed, every entry is."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


@dataclass
class SequenceData:
    r"""N sequences of T frames of D values, some of them missing, observed at known times.

    Fields:

    - ``x`` (N, T, D) float: the observed values, with every missing entry set to 0 (never NaN, so that
      ``x * mask`` and a likelihood masked by ``mask`` need no special care);
    - ``mask`` (N, T, D) float: 1. where the value is observed, 0. where it is missing (a bool mask is
      converted to ``x``'s dtype);
    - ``times`` (N, T) float: observation times, strictly increasing along each row (irregular spacing
      allowed);
    - ``truth`` (N, T, D) float or None: the complete values, for scoring imputations of the missing entries;
    - ``labels`` (N,) long or None: one class per sequence (e.g. the digit of a Healing MNIST sequence).

    Construction checks shapes, dtypes, finiteness and increasing times, and raises
    :class:`~pyro_flowvae.errors.DataError` naming the field, its shape and the fix. Values of ``x`` at missing
    entries are replaced by 0.

    The object quacks like the (N, D) tensors that :func:`~pyro_flowvae.data.iterate_minibatches` slices:
    ``shape``, ``device``, ``len()``, ``data[slice or index tensor]`` and ``data.index_select(0, idx)``
    return a :class:`SequenceData` of the selected sequences (without re-checking them, so that slicing on a
    GPU never synchronises). ``data.args()`` gives ``(x, mask, times)``, the arguments of a GP-VAE's model
    and guide.

    >>> data = SequenceData.from_arrays(torch.tensor([[[1.0], [float("nan")], [3.0]]]))
    >>> data.mask.squeeze(-1).tolist(), data.x.squeeze(-1).tolist(), data.times.tolist()
    ([[1.0, 0.0, 1.0]], [[1.0, 0.0, 3.0]], [[0.0, 1.0, 2.0]])
    """

    x: Tensor
    mask: Tensor
    times: Tensor
    truth: Tensor | None = None
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
            what = f"{_shape(x)} {x.dtype}" if isinstance(x, Tensor) else _shape(x)
            raise DataError(
                f"SequenceData.x must be a floating-point tensor of shape (N, T, D), got {what}; "
                "reshape it to (sequences, time steps, values per step) and convert it with .float()"
            )
        n, t, _ = x.shape
        mask = self.mask
        if not isinstance(mask, Tensor) or mask.shape != x.shape:
            raise DataError(
                f"SequenceData.mask must have the shape of x {tuple(x.shape)}, got {_shape(mask)}; "
                "give one flag per value (1 = observed, 0 = missing)"
            )
        if mask.dtype == torch.bool:
            mask = mask.to(x.dtype)
        elif not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError(
                f"SequenceData.mask must hold only 0 (missing) and 1 (observed), but has other values at "
                f"{_first_bad((mask != 0) & (mask != 1))}; build it as (values observed).float()"
            )
        mask = mask.to(x.dtype)
        observed = mask.bool()
        all_finite = _all_finite(x)
        bad = None if all_finite else observed & ~torch.isfinite(x)
        if bad is not None and bool(bad.any()):
            raise DataError(
                f"SequenceData.x {tuple(x.shape)} has {int(bad.sum())} non-finite observed value(s), the first at "
                f"{_first_bad(bad)}; mark them missing (mask = 0), or build the data with "
                "SequenceData.from_arrays, which treats NaN as missing"
            )
        self.x = x * mask if all_finite else torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
        self.mask = mask
        times = self.times
        if not isinstance(times, Tensor) or times.shape != (n, t):
            raise DataError(
                f"SequenceData.times must have shape (N, T) = {(n, t)}, got {_shape(times)}; give one time per "
                "frame and sequence (e.g. torch.arange(T).float().expand(N, T))"
            )
        if not times.is_floating_point():
            times = times.to(x.dtype)
        if not _all_finite(times):
            raise DataError(
                f"SequenceData.times {tuple(times.shape)} has non-finite values, the first at "
                f"{_first_bad(~torch.isfinite(times))}; every frame needs a finite time"
            )
        if t > 1:
            steps = times.diff(dim=1)
            if not bool((steps > 0).all()):
                raise DataError(
                    f"SequenceData.times {tuple(times.shape)} must be strictly increasing along each row, but "
                    f"times[i, j + 1] <= times[i, j] at (i, j) = {_first_bad(steps <= 0)}; sort the frames of "
                    "each sequence by time and merge frames observed at the same time"
                )
        if n > 1 and bool((times == times[:1]).all()):
            times = times[:1].expand(n, t)  # regular sampling: every row is one shared row (see `regular_times`)
        self.times = times
        if self.truth is not None:
            truth = self.truth
            if not isinstance(truth, Tensor) or truth.shape != x.shape or not truth.is_floating_point():
                raise DataError(
                    f"SequenceData.truth must be None or a float tensor of the shape of x {tuple(x.shape)}, got "
                    f"{_shape(truth)}; it holds the complete values used to score imputations"
                )
            if not _all_finite(truth):
                raise DataError(
                    f"SequenceData.truth {tuple(truth.shape)} has non-finite values, the first at "
                    f"{_first_bad(~torch.isfinite(truth))}; give truth only where every value is known, "
                    "otherwise leave it None"
                )
        if self.labels is not None:
            labels = self.labels
            if not isinstance(labels, Tensor) or labels.shape != (n,):
                raise DataError(
                    f"SequenceData.labels must be None or a tensor of shape (N,) = ({n},), got {_shape(labels)}; "
                    "give one class per sequence"
                )
            if labels.is_floating_point() and not bool((labels == labels.round()).all()):
                raise DataError("SequenceData.labels must be integer class indices; got fractional values")
            self.labels = labels.long()

    @classmethod
    def _trusted(cls, **fields: Tensor | None) -> SequenceData:
        """Build without checks: for slices of data that were already checked."""
        obj = cls.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(obj, name, value)
        return obj

    @classmethod
    def from_arrays(
        cls,
        values: Tensor | np.ndarray,
        times: Tensor | np.ndarray | None = None,
        *,
        truth: Tensor | np.ndarray | None = None,
        labels: Tensor | np.ndarray | None = None,
    ) -> SequenceData:
        """Sequences from values with NaN where missing: mask = not NaN, x = values with NaN set to 0.

        ``values`` is (N, T, D), or (N, T) for one value per step (D = 1). ``times`` is (N, T), or (T,)
        shared by every sequence; by default ``arange(T)``. Arrays and integer tensors are converted to the
        default float dtype (float32); floating-point tensors keep theirs.
        """
        if isinstance(values, Tensor):
            values_t = values if values.is_floating_point() else values.to(torch.get_default_dtype())
        else:
            values_t = torch.as_tensor(values, dtype=torch.get_default_dtype())
        if values_t.dim() == 2:
            values_t = values_t.unsqueeze(-1)
        if values_t.dim() != 3:
            raise DataError(
                f"SequenceData.from_arrays needs values of shape (N, T, D) or (N, T), got {tuple(values_t.shape)}"
            )
        n, t, _ = values_t.shape
        observed = ~torch.isnan(values_t)
        if times is None:
            times_t = torch.arange(t, dtype=values_t.dtype, device=values_t.device).expand(n, t).clone()
        else:
            times_t = torch.as_tensor(times, device=values_t.device)
            times_t = times_t.to(values_t.dtype) if not times_t.is_floating_point() else times_t
            if times_t.dim() == 1 and times_t.shape[0] == t:
                times_t = times_t.expand(n, t).clone()
        x = torch.where(observed, values_t, torch.zeros((), dtype=values_t.dtype, device=values_t.device))
        truth_t = None
        if truth is not None:
            truth_t = torch.as_tensor(truth, device=values_t.device).to(values_t.dtype)
            if truth_t.dim() == 2:
                truth_t = truth_t.unsqueeze(-1)
        labels_t = None if labels is None else torch.as_tensor(labels, device=values_t.device)
        return cls(x=x, mask=observed.to(values_t.dtype), times=times_t, truth=truth_t, labels=labels_t)

    # --- tensor-like interface used by iterate_minibatches -------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The shape (N, T, D) of ``x``."""
        return self.x.shape

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def data_dim(self) -> int:
        """D, the number of values per frame."""
        return int(self.x.shape[2])

    @property
    def seq_len(self) -> int:
        """T, the number of frames per sequence."""
        return int(self.x.shape[1])

    @property
    def missing(self) -> Tensor:
        """1. where a value is missing, 0. where observed (``1 - mask``)."""
        return 1.0 - self.mask

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def regular_times(self) -> bool:
        """Whether every sequence has the same time stamps. They are then stored once, ``times`` being a stride-0
        view of one row that every slice, batch and device copy keeps sharing: a GP prior recognises the same
        times at every step from the tensor's storage, without reading its values (no host sync on CUDA)."""
        return self.times.dim() == 2 and self.times.shape[0] > 1 and self.times.stride(0) == 0

    def _select(self, fn: Any, moves: bool = False) -> SequenceData:
        """Apply ``fn`` to every field; ``moves``: fn keeps the rows (a device copy), else it selects rows."""
        fields = {f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in _FIELDS}
        if self.regular_times:
            row = fn(self.times[:1]) if moves else self.times[:1]
            fields["times"] = row.expand(fields["x"].shape[0], self.times.shape[1])
        return SequenceData._trusted(**fields)

    def __getitem__(self, index: _Index) -> SequenceData:
        """The sequences at ``index``: a slice, an index or bool tensor, a list of ints, or an int.

        An int keeps the sequence dimension: ``data[i]`` is a :class:`SequenceData` of one sequence.
        """
        if isinstance(index, bool):
            raise TypeError("SequenceData indices must be ints, slices or index tensors, not bool")
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"sequence index {index} is out of range for {n} sequences")
            index = slice(index % n, index % n + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.device)
            if index.dim() != 1:
                raise IndexError(f"SequenceData takes a 1-D index tensor, got shape {tuple(index.shape)}")
            if index.dtype == torch.bool:
                index = index.nonzero().squeeze(1)
            elif index.is_floating_point():
                raise IndexError("SequenceData index tensors must hold integers or bools")
        return self._select(lambda v: v[index])

    def index_select(self, dim: int, index: Tensor) -> SequenceData:
        """The sequences at ``index`` (``dim`` must be 0: sequences are selected whole)."""
        if dim != 0:
            raise DataError(f"SequenceData.index_select selects whole sequences: dim must be 0, got {dim}")
        return self._select(lambda v: v.index_select(0, index))

    def to(self, device: torch.device | str) -> SequenceData:
        """A copy with every tensor on ``device``."""
        return self._select(lambda v: v.to(device), moves=True)

    def args(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, mask, times)``: how a GP-VAE's model and guide are called, ``model(*data.args())``."""
        return self.x, self.mask, self.times

    def __repr__(self) -> str:
        n, t, d = self.x.shape
        observed = float(self.mask.mean()) if self.mask.numel() else float("nan")
        return (
            f"SequenceData(N={n}, T={t}, D={d}, observed={observed:.1%}, truth={self.truth is not None}, "
            f"labels={self.labels is not None}, device={self.device})"
        )


_FIELDS = dataclasses.fields(SequenceData)


@dataclass
class SequenceSplits:
    """A sequence data set split into train, valid and test :class:`SequenceData` with the same T and D.

    ``frame_shape`` is the (C, H, W) of a frame when the D values of a frame are an image (Healing MNIST:
    (1, 28, 28)), else None; ``meta`` holds what the loader knows about how the data were made (e.g. the
    achieved missing share, or the mean and std used to standardise a series). ``binarize`` is always
    ``"none"``: sequences are used as stored (the attribute exists so that code written for
    :class:`~pyro_flowvae.data.DataSplits` can ask).
    """

    name: str
    train: SequenceData
    valid: SequenceData
    test: SequenceData
    frame_shape: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    binarize: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        shapes = {}
        for split in ("train", "valid", "test"):
            data = getattr(self, split)
            if not isinstance(data, SequenceData):
                raise DataError(
                    f"SequenceSplits.{split} must be a SequenceData, got {type(data).__name__}; build it with "
                    "SequenceData(x, mask, times) or SequenceData.from_arrays(values)"
                )
            shapes[split] = (data.seq_len, data.data_dim)
        if len(set(shapes.values())) != 1:
            raise DataError(
                f"train, valid and test must have the same (T, D), got {shapes}; cut or pad the sequences "
                "to a common length"
            )
        if self.frame_shape is not None:
            self.frame_shape = tuple(int(s) for s in self.frame_shape)
            if math.prod(self.frame_shape) != self.data_dim:
                raise DataError(
                    f"frame_shape {self.frame_shape} holds {math.prod(self.frame_shape)} values but a frame has "
                    f"D = {self.data_dim}; give the (C, H, W) of a frame, or None"
                )

    @property
    def data_dim(self) -> int:
        """D, the number of values per frame."""
        return self.train.data_dim

    @property
    def seq_len(self) -> int:
        """T, the number of frames per sequence."""
        return self.train.seq_len

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """Alias of ``frame_shape``, as in :class:`~pyro_flowvae.data.DataSplits`."""
        return self.frame_shape

    def to(self, device: torch.device | str) -> SequenceSplits:
        """A copy with all three splits on ``device``."""
        return dataclasses.replace(
            self, train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device)
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "valid", "test"))
        return (
            f"SequenceSplits(name={self.name!r}, {sizes}, T={self.seq_len}, D={self.data_dim}, "
            f"frame_shape={self.frame_shape}, device={self.train.device})"
        )


def check_sequence_batch(x: Tensor, mask: Tensor, times: Tensor, data_dim: int | None = None) -> None:
    """Raise :class:`~pyro_flowvae.errors.DataError` unless x is (B, T, D), mask has x's shape and times is (B, T)."""
    if x.dim() != 3:
        raise DataError(
            f"x must have shape (B, T, D) = (sequences, time steps, features), got {tuple(x.shape)}; "
            f"add a batch dimension with x.unsqueeze(0) for a single sequence"
        )
    if data_dim is not None and x.shape[-1] != data_dim:
        raise DataError(
            f"x has {x.shape[-1]} features per time step (shape {tuple(x.shape)}) but the guide was built for "
            f"data_dim={data_dim}; build it with data_dim={x.shape[-1]} or pass the right data"
        )
    if tuple(mask.shape) != tuple(x.shape):
        raise DataError(
            f"mask has shape {tuple(mask.shape)} but x has shape {tuple(x.shape)}; the mask marks every entry of x "
            f"(1/True = observed), so give it x's shape"
        )
    if tuple(times.shape) != tuple(x.shape[:2]):
        raise DataError(
            f"times has shape {tuple(times.shape)} but x of shape {tuple(x.shape)} needs times of shape (B, T) = "
            f"{tuple(x.shape[:2])}: one time stamp per step of each sequence"
        )
