"""A user's own data from a .npy or .npz file, flattened to (N, D) and split into train/valid/test.

An .npz may hold ``train`` and optionally ``valid`` and ``test`` (other arrays, such as labels, are ignored),
or exactly one array of any name; a .npy holds one array. Each array is (N, D) or (N, *image dims):

- (N, D): kept, ``image_shape = None``;
- (N, H, W): one-channel images, ``image_shape = (1, H, W)``;
- (N, C, H, W): ``image_shape = (C, H, W)``; an array that looks channel-last, (N, H, W, C) with C in {1, 3}
  and H > 4 (so H cannot be a channel count), is transposed to (N, C, H, W) first;
- more dimensions: flattened, ``image_shape = None``.

Splits that are not given are carved out of ``train`` by a permutation seeded with ``seed``: 10% of its rows
each (so a single array becomes 80/10/10); the rows of every split keep their order in the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_flowvae.errors import DataError

__all__ = ["SPLITS", "read_arrays", "load_array_file", "infer_image_shape"]

SPLITS = ("train", "valid", "test")
#: fraction of the rows of train carved out for each split that the file does not give
CARVE_FRACTION = 0.1


def read_arrays(file: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays stored in a .npy or .npz file (no pickles), and whether it was an .npz archive."""
    file = Path(file)
    try:
        with open(file, "rb") as handle:  # ours to close, also when np.load fails on a truncated file
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded as npz:
                    return {k: npz[k] for k in npz.files}, True
            return {file.stem: loaded}, False
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"could not read {file} as a .npy or .npz file of numeric arrays (pickles are refused): {e}"
        ) from e


def infer_image_shape(trailing: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) for per-example shapes (H, W) and (C, H, W); None otherwise."""
    if len(trailing) == 2:
        return (1, *trailing)
    if len(trailing) == 3:
        return (trailing[0], trailing[1], trailing[2])
    return None


def _looks_channel_last(trailing: tuple[int, ...]) -> bool:
    return len(trailing) == 3 and trailing[2] in (1, 3) and trailing[0] > 4


def load_array_file(
    path: str | os.PathLike[str] | None, *, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int] | None]:
    """(train, valid, test, image_shape) from a user's .npy/.npz file; tensors are float32 (N, D)."""
    if path is None:
        raise DataError("data.name = 'npz' needs data.path: the .npy or .npz file holding your data")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data file {file} not found (data.path); expected a .npy or .npz file")
    arrays, _ = read_arrays(file)
    if "train" in arrays:
        given = {k: arrays[k] for k in SPLITS if k in arrays}
    elif len(arrays) == 1:
        given = {"train": next(iter(arrays.values()))}
    else:
        raise DataError(
            f"{file} holds arrays {sorted(arrays)}; expected one named 'train' (and optionally 'valid' and "
            "'test'), or a single array to be split 80/10/10"
        )
    for key, a in given.items():
        if a.ndim < 2:
            raise DataError(
                f"{file}: array {key!r} has shape {a.shape}; expected one example per row: (N, D), (N, H, W) "
                "or (N, C, H, W)"
            )
        if a.shape[0] == 0 or 0 in a.shape[1:]:
            raise DataError(
                f"{file}: array {key!r} has shape {a.shape}, which holds no values; give at least one example "
                "with at least one value per row"
            )
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise DataError(f"{file}: array {key!r} has dtype {a.dtype}; expected real numbers")
    shapes = {key: a.shape[1:] for key, a in given.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{file}: the arrays must have the same shape per example, got {shapes}")
    trailing = shapes["train"]
    if _looks_channel_last(trailing):
        given = {key: np.moveaxis(a, -1, 1) for key, a in given.items()}
        trailing = given["train"].shape[1:]
    image_shape = infer_image_shape(trailing)
    tensors = {
        key: torch.from_numpy(np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float32))
        for key, a in given.items()
    }
    missing = [s for s in SPLITS if s not in tensors]
    if missing:
        tensors.update(_carve(tensors.pop("train"), missing, seed=seed, file=file))
    return tensors["train"], tensors["valid"], tensors["test"], image_shape


def _carve(train: Tensor, missing: list[str], *, seed: int, file: Path) -> dict[str, Tensor]:
    """Split ``CARVE_FRACTION`` of train's rows off for each missing split, with a seeded permutation."""
    n = train.shape[0]
    n_each = int(n * CARVE_FRACTION)
    if n_each < 1:
        raise DataError(
            f"{file}: {n} rows are too few to split off {' and '.join(missing)} (10% each); give at least "
            f"{int(np.ceil(1 / CARVE_FRACTION))} rows, or store arrays 'train', 'valid' and 'test' in an .npz"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = {}
    for i, split in enumerate(missing):
        out[split] = train[perm[i * n_each : (i + 1) * n_each].sort().values]
    out["train"] = train[perm[len(missing) * n_each :].sort().values]
    return out
