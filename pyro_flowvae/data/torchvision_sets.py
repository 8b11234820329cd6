"""MNIST and Fashion-MNIST through ``torchvision.datasets``, offline whenever the raw files are at hand.

torchvision reads ``ROOT/MNIST/raw/*-ubyte`` (``ROOT/FashionMNIST/raw``). When only the original
``*-ubyte.gz`` files are there, we check their MD5 sums against torchvision's list and decompress them
ourselves: into ``ROOT/<Set>/raw`` when that folder is writable, otherwise into the cache (``cache_dir``), so
a read-only root is never written to. The cache keeps each extraction under a key of the source files' path,
size and checksum (:func:`source_key`), and the ``.gz`` files are checked at every load, so a different or
corrupted root is never hidden by an older extraction. Nothing touches the network unless ``download=True``
and the files are absent.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path
from typing import IO
from urllib.error import URLError

import torch
from torch import Tensor
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.utils import calculate_md5, check_integrity

from pyro_flowvae._atomic import atomic_write
from pyro_flowvae.data.paths import default_cache_dir, is_writable_dir
from pyro_flowvae.errors import DataError

__all__ = [
    "TORCHVISION_SETS",
    "IMAGE_SHAPE",
    "load_torchvision_set",
    "read_torchvision_set",
    "extraction_root",
    "source_key",
]

#: data set name -> torchvision class
TORCHVISION_SETS: dict[str, type[MNIST]] = {"mnist": MNIST, "fashion_mnist": FashionMNIST}

#: MNIST and Fashion-MNIST images: one channel of 28 x 28
IMAGE_SHAPE = (1, 28, 28)


def _raw(root: Path, cls: type[MNIST]) -> Path:
    return root / cls.__name__ / "raw"


def _gz_names(cls: type[MNIST]) -> list[str]:
    return [fname for fname, _ in cls.resources]


def _extracted_names(cls: type[MNIST]) -> list[str]:
    return [fname[: -len(".gz")] for fname, _ in cls.resources]


def _has_extracted(root: Path, cls: type[MNIST]) -> bool:
    raw, processed = _raw(root, cls), root / cls.__name__ / "processed"
    legacy = all((processed / f).is_file() for f in (cls.training_file, cls.test_file))
    return legacy or all((raw / f).is_file() for f in _extracted_names(cls))


def _has_gz(root: Path, cls: type[MNIST]) -> bool:
    return all((_raw(root, cls) / f).is_file() for f in _gz_names(cls))


def source_key(raw: Path, cls: type[MNIST]) -> str:
    """16 hex digits of SHA-256 over the resolved path, size and MD5 sum of each ``.gz`` file in ``raw``: the
    cache folder of what was extracted from them, so that files from another root, or changed ones, never
    reuse an older extraction."""
    digest = hashlib.sha256()
    for fname, _ in cls.resources:
        file = (raw / fname).resolve()
        digest.update(f"{file}|{file.stat().st_size}|{calculate_md5(str(file))};".encode())
    return digest.hexdigest()[:16]


def extraction_root(cache: Path, raw: Path, cls: type[MNIST]) -> Path:
    """Where the files of a read-only ``raw`` are extracted: ``cache/<source_key>`` (holding ``<Set>/raw``)."""
    return cache / source_key(raw, cls)


def _verify_gz(raw: Path, cls: type[MNIST]) -> None:
    for fname, md5 in cls.resources:
        if not check_integrity(raw / fname, md5):
            raise DataError(
                f"{raw / fname} is not the original {cls.__name__} file (its MD5 sum differs from {md5}): "
                f"copy the original file there again, or delete the four *-ubyte.gz files in {raw} and set "
                "data.download = true to fetch them"
            )


def _extract(src_raw: Path, dst_raw: Path, cls: type[MNIST]) -> None:
    """Decompress the four .gz files of ``src_raw`` into ``dst_raw``, each written atomically."""
    for gz_name, name in zip(_gz_names(cls), _extracted_names(cls)):

        def decompress(handle: IO, src: Path = src_raw / gz_name) -> None:
            with gzip.open(src, "rb") as fin:
                shutil.copyfileobj(fin, handle, length=1 << 20)

        atomic_write(dst_raw / name, decompress, binary=True)


def _not_found(cls: type[MNIST], root: Path) -> DataError:
    raw = _raw(root, cls)
    missing = [gz for gz in _gz_names(cls) if not (raw / gz).is_file()]
    hint = ""
    for wrong in (root / "raw", root):
        if any((wrong / f).is_file() for f in _gz_names(cls) + _extracted_names(cls)):
            hint = (
                f" Found {cls.__name__} files in {wrong}, but torchvision reads them from "
                f"ROOT/{cls.__name__}/raw/: move them to {raw}, or point data.root at the folder that "
                f"contains {cls.__name__}/raw/."
            )
            break
    return DataError(
        f"{cls.__name__} data not found. Looked for the extracted *-ubyte files or the original *-ubyte.gz "
        f"files in {raw} (missing: {', '.join(missing)}). To fix: copy the "
        f"four files {', '.join(_gz_names(cls))} into {raw}, or set data.download = true (download=True) "
        f"to fetch them from the internet.{hint}"
    )


def _resolve_root(cls: type[MNIST], root: Path, cache: Path, download: bool) -> Path:
    """A root under which torchvision finds the extracted files, extracting or downloading them if needed."""
    if _has_extracted(root, cls):
        return root
    if _has_gz(root, cls):
        raw = _raw(root, cls)
        _verify_gz(raw, cls)  # every time: a corrupted file is never hidden by an earlier extraction
        target = root if is_writable_dir(raw) else extraction_root(cache, raw, cls)
        if target != root and _has_extracted(target, cls):
            return target
        try:
            _extract(raw, _raw(target, cls), cls)
        except OSError as e:
            raise DataError(
                f"could not extract the {cls.__name__} files of {raw} into {_raw(target, cls)}: {e}. "
                "Set data.cache_dir to a writable folder."
            ) from e
        return target
    if not download:
        raise _not_found(cls, root)
    target = root if is_writable_dir(root) else cache
    try:
        cls(str(target), train=True, download=True)
    except (RuntimeError, OSError, URLError) as e:
        raise DataError(
            f"downloading {cls.__name__} into {_raw(target, cls)} failed: {e}. Copy the four files "
            f"{', '.join(_gz_names(cls))} into {_raw(root, cls)} instead."
        ) from e
    return target


def read_torchvision_set(cls: type[MNIST], root: Path, cache: Path, download: bool) -> tuple[MNIST, MNIST]:
    """The train and test sets of ``cls`` (extracting or downloading first, as :func:`_resolve_root` does); a
    truncated or corrupted extracted file is a :class:`DataError` that says which folder to clear."""
    source = _resolve_root(cls, root, cache, download)
    try:
        return cls(str(source), train=True, download=False), cls(str(source), train=False, download=False)
    except (RuntimeError, ValueError, OSError, EOFError, IndexError, AssertionError) as e:  # torchvision asserts
        raw = _raw(source, cls)
        raise DataError(
            f"the extracted {cls.__name__} files in {raw} cannot be read ({str(e) or type(e).__name__}); one is "
            "truncated or corrupted. "
            f"Delete the *-ubyte files there (not the .gz files): they are extracted again from the .gz files, "
            "or copy the original files there again"
        ) from None


def _to_float(images: Tensor) -> Tensor:
    """uint8 images (N, H, W) -> float32 (N, H*W) in [0, 1]."""
    return images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)


def load_torchvision_set(
    name: str,
    *,
    root: str | os.PathLike[str] | None,
    valid_size: int,
    download: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Grey levels in [0, 1] of MNIST or Fashion-MNIST as (train, valid, test), each float32 (N, 784).

    valid is the last ``valid_size`` images of the official training set, train the ones before it, test the
    official test set. ``root=None`` means the cache folder, which is also where ``download=True`` puts the
    files when ``root`` is read-only.
    """
    cls = TORCHVISION_SETS[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(name)
    root_path = Path(root).expanduser() if root is not None else cache
    train_set, test_set = read_torchvision_set(cls, root_path, cache, download)
    n = train_set.data.shape[0]
    if not 0 <= valid_size < n:
        raise DataError(f"valid_size must be in [0, {n - 1}] for {name} ({n} training images), got {valid_size}")
    train_all = _to_float(train_set.data)
    return train_all[: n - valid_size], train_all[n - valid_size :], _to_float(test_set.data)
