"""Fixtures for the data tests: the shared offline data, a writable copy of it, and a network guard."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torchvision.datasets.mnist as tv_mnist
import torchvision.datasets.utils as tv_utils

from pyro_flowvae.data import DataSplits, load_data

MNIST_GZ = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("PYRO_FLOWVAE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


@contextmanager
def network_guard() -> Iterator[list[str]]:
    """Make every way torchvision could reach the network fail loudly, and record the attempts."""
    calls: list[str] = []

    def refuse(what: str):
        def _refuse(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"network access attempted through {what}")

        return _refuse

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", refuse("urllib.request.urlopen"))
        mp.setattr(socket.socket, "connect", refuse("socket.connect"))
        mp.setattr(tv_utils, "download_url", refuse("torchvision download_url"))
        mp.setattr(tv_utils, "_urlretrieve", refuse("torchvision _urlretrieve"))
        mp.setattr(tv_mnist, "download_and_extract_archive", refuse("torchvision download_and_extract_archive"))
        mp.setattr(tv_mnist.MNIST, "download", refuse("MNIST.download"))
        yield calls


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    with network_guard() as calls:
        yield calls


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a test write into ~/.cache: the default cache folder points into a temp dir."""
    monkeypatch.setenv("PYRO_FLOWVAE_CACHE", str(tmp_path_factory.mktemp("default_cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    found = _shared_data_dir()
    if found is None:
        pytest.skip(
            "shared data folder not found (expected ../shared/data next to the repository, or set "
            "PYRO_FLOWVAE_SHARED_DATA)"
        )
    return found


def _shared_subdir(shared_data: Path, name: str) -> Path:
    raw = shared_data / name / "raw"
    if not all((raw / f).is_file() for f in MNIST_GZ):
        pytest.skip(f"{raw} does not hold the four original {name} *-ubyte.gz files")
    return raw


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``folder`` with its size, mtime and mode: to prove nothing was written."""
    out = {}
    for p in [folder, *sorted(folder.rglob("*"))]:
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="session")
def mnist_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable root with copies of the original MNIST and Fashion-MNIST .gz files (nothing extracted)."""
    root = tmp_path_factory.mktemp("data_root")
    for name in ("MNIST", "FashionMNIST"):
        src = _shared_subdir(shared_data, name)
        dst = root / name / "raw"
        dst.mkdir(parents=True)
        for f in MNIST_GZ:
            shutil.copyfile(src / f, dst / f)  # copyfile: the copies are writable, unlike the originals
    return root


@pytest.fixture(scope="session")
def mnist_first_load(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSplits, list[str]]:
    """The first load from .gz files only (extracts them), with the network blocked; and the attempts."""
    with network_guard() as calls:
        data = load_data("mnist", root=str(mnist_root), cache_dir=str(tmp_path_factory.mktemp("unused_cache")))
    return data, calls


@pytest.fixture(scope="session")
def mnist_dynamic(mnist_first_load: tuple[DataSplits, list[str]]) -> DataSplits:
    return mnist_first_load[0]


@pytest.fixture(scope="session")
def mnist_grey(mnist_root: Path, mnist_first_load: tuple[DataSplits, list[str]]) -> DataSplits:
    return load_data("mnist", root=str(mnist_root), binarize="none")


@pytest.fixture
def read_only_mnist_root(shared_data: Path, tmp_path: Path) -> Iterator[Path]:
    """A root of our own whose MNIST/raw holds copies of the four original .gz files and has no write permission
    bits: read-only to the loaders (see ``is_writable_dir``) whether or not ../shared is writable here, and even
    for root."""
    source = _shared_subdir(shared_data, "MNIST")
    root = tmp_path / "read_only_root"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_GZ:
        shutil.copyfile(source / f, raw / f)
    folders = (raw, raw.parent, root)
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield root
    finally:
        for folder in reversed(folders):
            folder.chmod(0o755)
