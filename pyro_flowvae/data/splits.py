"""The container every loader returns: train/valid/test tensors of shape (N, D) and how to binarize them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyro_flowvae.errors import DataError

__all__ = ["DataSplits", "BINARIZE_MODES"]

#: How train batches are made binary: kept as stored, resampled per batch, or thresholded once when loaded.
BINARIZE_MODES = ("none", "dynamic", "static")


@dataclass
class DataSplits:
    """A data set split into train, valid and test, each a float32 tensor of shape (N, D).

    ``binarize`` says what the training loop must do with train batches: ``"dynamic"`` means the train split
    holds grey levels in [0, 1] and every batch is resampled as :math:`x \\sim \\mathrm{Bernoulli}(x)` when
    drawn (see :func:`~pyro_flowvae.data.iterate_minibatches`); valid and test were then already binarized
    once, with a fixed seed, by the loader. ``"static"`` and ``"none"`` mean the tensors are used as stored.
    """

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    image_shape: tuple[int, int, int] | None
    binarize: str

    def __post_init__(self) -> None:
        if self.binarize not in BINARIZE_MODES:
            raise DataError(f"binarize must be one of {BINARIZE_MODES}, got {self.binarize!r}")
        dims = {}
        for split in ("train", "valid", "test"):
            x = getattr(self, split)
            if not isinstance(x, Tensor) or x.dim() != 2:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise DataError(f"DataSplits.{split} must be a 2-D tensor (N, D), got {shape}")
            dims[split] = x.shape[1]
        if len(set(dims.values())) != 1:
            raise DataError(f"train, valid and test must have the same number of columns D, got {dims}")
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
            if len(self.image_shape) != 3 or math.prod(self.image_shape) != self.data_dim:
                raise DataError(
                    f"image_shape {self.image_shape} must be (C, H, W) with C*H*W equal to data_dim = {self.data_dim}"
                )

    @property
    def data_dim(self) -> int:
        """D, the number of values per example."""
        return int(self.train.shape[1])

    def to(self, device: torch.device | str) -> DataSplits:
        """A copy with all three splits on ``device`` (the whole data set lives on the training device)."""
        return dataclasses.replace(
            self, train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device)
        )

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(getattr(self, k).shape)}" for k in ("train", "valid", "test"))
        return (
            f"DataSplits(name={self.name!r}, {shapes}, image_shape={self.image_shape}, "
            f"binarize={self.binarize!r}, device={self.train.device})"
        )
