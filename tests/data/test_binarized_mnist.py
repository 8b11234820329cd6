"""Binarized MNIST (Larochelle & Murray 2011) from an .npz: the shared file and generated ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_flowvae.data import load_data
from pyro_flowvae.errors import DataError


def test_shared_file_counts(shared_data):
    if not (shared_data / "binarized_mnist" / "binarized_mnist.npz").is_file():
        pytest.skip("the shared folder has no binarized_mnist/binarized_mnist.npz")
    data = load_data("binarized_mnist", root=str(shared_data))  # binarize="dynamic" asked: becomes "none"
    assert (data.name, data.binarize, data.image_shape) == ("binarized_mnist", "none", (1, 28, 28))
    assert data.train.shape == (50000, 784) and data.valid.shape == (10000, 784)
    assert data.test.shape == (10000, 784) and data.train.dtype == torch.float32
    counts = [int(x.sum()) for x in (data.train, data.valid, data.test)]
    assert counts == [5_118_041, 1_028_036, 1_038_896]
    assert set(data.train[:1000].unique().tolist()) == {0.0, 1.0}


def _binary(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.random(shape) < 0.3).astype(np.uint8)


@pytest.fixture
def small_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train": _binary(rng, 20, 784), "valid": _binary(rng, 5, 784), "test": _binary(rng, 6, 784)}
    np.savez_compressed(tmp_path / "binarized_mnist.npz", **arrays)
    return tmp_path / "binarized_mnist.npz", arrays


def test_small_file_by_root_and_by_path(small_npz, tmp_path):
    file, arrays = small_npz
    for kwargs in ({"root": str(tmp_path)}, {"path": str(file)}):
        for binarize in ("dynamic", "static", "none", None):
            data = load_data("binarized_mnist", binarize=binarize, **kwargs)
            assert data.binarize == "none"
            for split in ("train", "valid", "test"):
                assert torch.equal(getattr(data, split), torch.from_numpy(arrays[split]).float())


def test_nested_folder_and_limit(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "binarized_mnist").mkdir()
    images = {k: _binary(rng, 8, 28, 28) for k in ("train", "valid", "test")}  # (N, 28, 28) is accepted
    np.savez(tmp_path / "binarized_mnist" / "binarized_mnist.npz", **images)
    data = load_data("binarized_mnist", root=str(tmp_path), limit=3)
    assert data.train.shape == (3, 784) and data.valid.shape == (8, 784)
    assert torch.equal(data.train[1], torch.from_numpy(images["train"][1].ravel()).float())


def test_missing_file_names_the_paths_tried(tmp_path):
    with pytest.raises(DataError) as info:
        load_data("binarized_mnist", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "binarized_mnist.npz") in message
    assert str(tmp_path / "binarized_mnist" / "binarized_mnist.npz") in message
    assert "train, valid, test" in message and "data.path" in message


def test_missing_key(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "b.npz", train=_binary(rng, 4, 784), valid=_binary(rng, 4, 784))
    with pytest.raises(DataError, match=r"has arrays \['train', 'valid'\].*missing: \['test'\]"):
        load_data("binarized_mnist", path=str(tmp_path / "b.npz"))


def test_wrong_shape(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "b.npz", train=_binary(rng, 4, 100), valid=_binary(rng, 4, 784), test=_binary(rng, 4, 784))
    with pytest.raises(DataError, match=r"array 'train' has shape \(4, 100\), expected \(N, 784\)"):
        load_data("binarized_mnist", path=str(tmp_path / "b.npz"))


def test_non_binary_values(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {k: _binary(rng, 4, 784) for k in ("train", "valid", "test")}
    arrays["valid"][2, 7] = 255
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(DataError, match=r"array 'valid' must hold only 0 and 1.*first: 255 at row 2, column 7"):
        load_data("binarized_mnist", path=str(tmp_path / "b.npz"))


def test_npy_and_garbage_files(tmp_path):
    np.save(tmp_path / "b.npy", np.zeros((3, 784), dtype=np.uint8))
    with pytest.raises(DataError, match="single .npy array"):
        load_data("binarized_mnist", path=str(tmp_path / "b.npy"))
    (tmp_path / "bad.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match="could not read"):
        load_data("binarized_mnist", path=str(tmp_path / "bad.npz"))
