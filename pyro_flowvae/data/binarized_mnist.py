"""The statically binarized MNIST of Larochelle & Murray (2011), from a local ``binarized_mnist.npz``.

This is the fixed binarization used to report test log-likelihoods in the flow-VAE literature (Rezende &
Mohamed 2015; van den Berg et al. 2018; Tomczak & Welling 2018): 50000 train, 10000 valid, 10000 test
images of 28 x 28 pixels with values 0/1.

[1] Hugo Larochelle, Iain Murray. The Neural Autoregressive Distribution Estimator. AISTATS 2011.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_flowvae.data.arrays import read_arrays
from pyro_flowvae.data.paths import default_cache_dir
from pyro_flowvae.errors import DataError

__all__ = ["EXPECTED_KEYS", "FILENAME", "candidate_paths", "load_binarized_mnist"]

FILENAME = "binarized_mnist.npz"
#: the arrays the .npz must hold, each (N, 784) (or (N, 28, 28)) with values 0/1
EXPECTED_KEYS = ("train", "valid", "test")
_DIM = 784


def candidate_paths(root: str | os.PathLike[str] | None, path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the file is looked for: ``path`` alone if given, else ROOT/binarized_mnist.npz and
    ROOT/binarized_mnist/binarized_mnist.npz (ROOT defaults to the cache folder)."""
    if path is not None:
        return [Path(path).expanduser()]
    base = Path(root).expanduser() if root is not None else default_cache_dir("binarized_mnist")
    return [base / FILENAME, base / "binarized_mnist" / FILENAME]


def _as_binary_matrix(a: np.ndarray, key: str, file: Path) -> Tensor:
    if a.ndim == 3 and a.shape[1:] == (28, 28):
        a = a.reshape(a.shape[0], _DIM)
    if a.ndim != 2 or a.shape[1] != _DIM:
        raise DataError(
            f"{file}: array {key!r} has shape {a.shape}, expected (N, {_DIM}) or (N, 28, 28) binarized images"
        )
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{file}: array {key!r} has dtype {a.dtype}, expected numbers 0/1 (uint8)")
    bad = (a != 0) & (a != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{file}: array {key!r} must hold only 0 and 1, but has {int(bad.sum())} other value(s) (first: "
            f"{a[row, col].item()!r} at row {row}, column {col}); this does not look like binarized MNIST"
        )
    return torch.from_numpy(a.astype(np.float32, copy=False))


def load_binarized_mnist(
    *, root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(train, valid, test) of binarized MNIST as float32 tensors (N, 784) with values 0/1."""
    tried = candidate_paths(root, path)
    file = next((p for p in tried if p.is_file()), None)
    if file is None:
        raise DataError(
            f"binarized MNIST not found; tried {', '.join(str(p) for p in tried)}. Expected an .npz file "
            f"with arrays {', '.join(EXPECTED_KEYS)} of shape (N, {_DIM}) and values 0/1 (uint8). Put "
            f"{FILENAME} in data.root, or set data.path to the file. It is not downloaded automatically."
        )
    arrays, is_npz = read_arrays(file)
    if not is_npz:
        raise DataError(f"{file} is a single .npy array; expected an .npz with arrays {list(EXPECTED_KEYS)}")
    missing = [k for k in EXPECTED_KEYS if k not in arrays]
    if missing:
        raise DataError(
            f"{file} has arrays {sorted(arrays)}, but binarized MNIST needs {list(EXPECTED_KEYS)} "
            f"(missing: {missing}), each of shape (N, {_DIM}) with values 0/1"
        )
    train, valid, test = (_as_binary_matrix(arrays[k], k, file) for k in EXPECTED_KEYS)
    return train, valid, test
