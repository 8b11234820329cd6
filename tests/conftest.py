"""Shared fixtures: Pyro's own test conventions (fresh param store, fixed seed, validation on)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def shared_data_dir() -> Path | None:
    """../shared/data beside the repository (or $PYRO_FLOWVAE_SHARED_DATA), if present."""
    env = os.environ.get("PYRO_FLOWVAE_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A writable copy of the shared MNIST raw files (skips when ../shared/data is absent)."""
    shared = shared_data_dir()
    if shared is None or not (shared / "MNIST" / "raw").is_dir():
        pytest.skip("../shared/data/MNIST is absent")
    root = tmp_path_factory.mktemp("mnist_root")
    shutil.copytree(shared / "MNIST", root / "MNIST")
    return root


def make_binary_npz(path: Path, n: int = 240, dim: int = 12, seed: int = 0) -> Path:
    """A small binary data set with structure (two prototypes plus flips), so a VAE can learn something."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((2, dim)) < 0.5
    labels = rng.integers(0, 2, n)
    flips = rng.random((n, dim)) < 0.1
    x = np.logical_xor(prototypes[labels], flips).astype(np.float32)
    np.savez(path, train=x[: n * 2 // 3], valid=x[n * 2 // 3 : n * 5 // 6], test=x[n * 5 // 6 :])
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return make_binary_npz(tmp_path / "tiny.npz")


def tiny_config(npz: Path, overrides: dict | None = None) -> dict:
    """A seconds-long config on the tiny data set; overrides are dotted keys."""
    config = {
        "data": {"name": "npz", "path": str(npz)},
        "model": {"latent_dim": 2, "hidden": [16], "likelihood": "bernoulli"},
        "guide": {"flow": "mean_field", "num_flows": 2},
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-2, "progress": False, "log_every": 3},
        "eval": {"iw_samples": 20, "sample_chunk": 10, "data_chunk": 16},
    }
    for key, value in (overrides or {}).items():
        section, name = key.split(".", 1)
        config[section][name] = value
    return config
