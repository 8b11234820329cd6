"""``load_data``: one entry point for every data set, with the same splitting, limiting and binarization."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from pyro_flowvae.data.arrays import load_array_file
from pyro_flowvae.data.binarized_mnist import load_binarized_mnist
from pyro_flowvae.data.checks import check_finite
from pyro_flowvae.data.splits import BINARIZE_MODES, DataSplits
from pyro_flowvae.data.torchvision_sets import IMAGE_SHAPE, load_torchvision_set
from pyro_flowvae.errors import DataError

__all__ = ["DATASETS", "DEFAULT_BINARIZE", "load_data"]

_Loaded = tuple[Tensor, Tensor, Tensor, tuple[int, int, int] | None]
PathLike = str | os.PathLike[str] | None


def _mnist_family(name: str) -> Callable[..., _Loaded]:
    def load(
        *, root: PathLike, path: PathLike, valid_size: int, download: bool, seed: int, cache_dir: PathLike
    ) -> _Loaded:
        train, valid, test = load_torchvision_set(
            name, root=root, valid_size=valid_size, download=download, cache_dir=cache_dir
        )
        return train, valid, test, IMAGE_SHAPE

    return load


def _binarized_mnist(
    *, root: PathLike, path: PathLike, valid_size: int, download: bool, seed: int, cache_dir: PathLike
) -> _Loaded:
    if root is None and path is None:
        root = cache_dir
    return (*load_binarized_mnist(root=root, path=path), IMAGE_SHAPE)


def _npz(*, root: PathLike, path: PathLike, valid_size: int, download: bool, seed: int, cache_dir: PathLike) -> _Loaded:
    return load_array_file(path, seed=seed)


#: data set name -> loader returning (train, valid, test, image_shape) before limiting and binarization
_LOADERS: dict[str, Callable[..., _Loaded]] = {
    "mnist": _mnist_family("mnist"),
    "fashion_mnist": _mnist_family("fashion_mnist"),
    "binarized_mnist": _binarized_mnist,
    "npz": _npz,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
#: what ``binarize=None`` means for each data set
DEFAULT_BINARIZE = {"mnist": "dynamic", "fashion_mnist": "dynamic", "binarized_mnist": "none", "npz": "none"}


def _is_binary(x: Tensor) -> bool:
    head = x[:256]  # most grey data show it in the first rows: skip the full pass
    return bool(((head == 0) | (head == 1)).all()) and bool(((x == 0) | (x == 1)).all())


def _binarize(mode: str, train: Tensor, valid: Tensor, test: Tensor, seed: int) -> tuple[str, Tensor, Tensor, Tensor]:
    """Apply ``mode`` to the splits; already-binary data are left alone and reported as ``"none"``."""
    if mode == "none" or all(_is_binary(x) for x in (train, valid, test)):
        return "none", train, valid, test
    for split, x in (("train", train), ("valid", valid), ("test", test)):
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 1.0)
        if lo < 0 or hi > 1:
            raise DataError(
                f"data.binarize = {mode!r} treats each value as the probability that a pixel is on and needs "
                f"values in [0, 1], but the {split} split ranges over "
                f"[{lo:g}, {hi:g}]. "
                'Scale the data into [0, 1], or set data.binarize = "none" (with model.likelihood = '
                '"gaussian" for real-valued data).'
            )
    if mode == "static":
        return "static", *((x > 0.5).to(x.dtype) for x in (train, valid, test))
    # dynamic: train batches are resampled during training; valid/test are drawn once, with fixed seeds,
    # so that validation and test figures are comparable across epochs and runs
    valid = torch.bernoulli(valid, generator=torch.Generator().manual_seed(seed))
    test = torch.bernoulli(test, generator=torch.Generator().manual_seed(seed + 1))
    return "dynamic", train, valid, test


def load_data(
    name: str,
    *,
    root: str | None = None,
    path: str | None = None,
    limit: int | None = None,
    valid_size: int = 10000,
    binarize: str | None = "dynamic",
    download: bool = False,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DataSplits:
    """Load a data set as :class:`DataSplits` of float32 (N, D) tensors on the CPU.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding ``MNIST/raw`` / ``FashionMNIST/raw`` (the original ``*-ubyte.gz`` files or
            their extracted versions) or ``binarized_mnist.npz``; may be read-only. Defaults to the cache.
        path: the file, for ``"npz"`` (required) and ``"binarized_mnist"`` (optional, overrides ``root``).
        limit: keep at most the first ``limit`` training examples (valid and test are kept whole).
        valid_size: MNIST / Fashion-MNIST only: the last ``valid_size`` of the 60000 training images form the
            validation split, the others the training split. (``"npz"`` carves 10% of train for each split
            the file lacks; binarized MNIST comes split.)
        binarize: ``"dynamic"`` (train batches resampled as Bernoulli(grey) during training; valid and test
            binarized once here with a generator seeded by ``seed``), ``"static"`` (threshold 0.5 on every
            split, here), ``"none"`` (values kept), or ``None`` for the data set's default
            (:data:`DEFAULT_BINARIZE`). Data that are already binary get ``"none"``, whatever was asked.
        download: let torchvision fetch MNIST / Fashion-MNIST when the files are absent. Never needed when
            the ``.gz`` files are there: they are checked by MD5 and extracted offline.
        seed: seeds the one-off binarization of valid/test, and the split of an ``"npz"`` file.
        cache_dir: writable folder for files extracted from a read-only ``root`` (default
            ``$PYRO_FLOWVAE_CACHE/<name>`` or ``~/.cache/pyro_flowvae/<name>``).
    """
    if name not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if binarize is None:
        binarize = DEFAULT_BINARIZE[name]
    if binarize not in BINARIZE_MODES:
        raise DataError(f"data.binarize must be one of {', '.join(BINARIZE_MODES)}, got {binarize!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"data.limit must be a positive integer or None, got {limit!r}")
    if isinstance(valid_size, bool) or not isinstance(valid_size, int) or valid_size < 0:
        raise DataError(f"data.valid_size must be a non-negative integer, got {valid_size!r}")
    train, valid, test, image_shape = _LOADERS[name](
        root=root, path=path, valid_size=valid_size, download=download, seed=seed, cache_dir=cache_dir
    )
    if limit is not None:
        train = train[:limit]
    for split, x in (("train", train), ("valid", valid), ("test", test)):
        if x.shape[0] == 0:
            raise DataError(
                f"the {split} split of {name} has no examples; every split needs at least one (check data.path, "
                "data.valid_size and the arrays of the file)"
            )
        check_finite(x, split=split)
    binarize, train, valid, test = _binarize(binarize, train, valid, test, seed)
    return DataSplits(name=name, train=train, valid=valid, test=test, image_shape=image_shape, binarize=binarize)
