"""A user's own .npy / .npz arrays: splitting, flattening, image shapes and the errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_flowvae.data import load_data
from pyro_flowvae.errors import DataError


def _rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(r) for r in x.tolist())


def test_single_npy_is_split_80_10_10(tmp_path):
    x = np.random.default_rng(0).random((50, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_data("npz", path=str(tmp_path / "x.npy"), binarize="none")
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((40, 7), (5, 7), (5, 7))
    assert data.image_shape is None and data.data_dim == 7 and data.binarize == "none"
    # every row lands in exactly one split, and each split keeps the file order
    together = torch.cat([data.train, data.valid, data.test])
    assert _rows(together) == _rows(torch.from_numpy(x))
    index = {tuple(r): i for i, r in enumerate(torch.from_numpy(x).tolist())}
    for split in (data.train, data.valid, data.test):
        order = [index[tuple(r)] for r in split.tolist()]
        assert order == sorted(order)
    # deterministic given the seed, different for another seed
    again = load_data("npz", path=str(tmp_path / "x.npy"), binarize="none")
    assert torch.equal(again.valid, data.valid)
    other = load_data("npz", path=str(tmp_path / "x.npy"), binarize="none", seed=1)
    assert not torch.equal(other.valid, data.valid)


def test_given_splits_are_used_and_missing_ones_carved(tmp_path):
    rng = np.random.default_rng(1)
    train, valid, test = rng.random((30, 4)), rng.random((6, 4)), rng.random((3, 4))
    np.savez(tmp_path / "all.npz", train=train, valid=valid, test=test, labels=np.arange(30))
    data = load_data("npz", path=str(tmp_path / "all.npz"), binarize=None)
    assert torch.equal(data.train, torch.from_numpy(train).float())
    assert torch.equal(data.valid, torch.from_numpy(valid).float())
    assert torch.equal(data.test, torch.from_numpy(test).float())
    np.savez(tmp_path / "tv.npz", train=train, valid=valid)
    data = load_data("npz", path=str(tmp_path / "tv.npz"), binarize=None)
    assert (data.train.shape[0], data.valid.shape[0], data.test.shape[0]) == (27, 6, 3)
    assert torch.equal(data.valid, torch.from_numpy(valid).float())


def test_images_are_flattened_and_their_shape_inferred(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.random((20, 5, 6))
    np.savez(tmp_path / "gray.npz", images=gray)  # a single array of any name
    data = load_data("npz", path=str(tmp_path / "gray.npz"), binarize="none")
    assert data.image_shape == (1, 5, 6) and data.data_dim == 30
    assert _rows(torch.cat([data.train, data.valid, data.test])) == _rows(
        torch.from_numpy(gray.reshape(20, 30)).float()
    )

    chw = rng.random((20, 2, 4, 3))
    np.save(tmp_path / "chw.npy", chw)
    data = load_data("npz", path=str(tmp_path / "chw.npy"), binarize="none")
    assert data.image_shape == (2, 4, 3) and data.data_dim == 24

    mono = rng.random((20, 6, 6, 1))  # channel-last: moved to (C, H, W) before flattening
    np.save(tmp_path / "mono.npy", mono)
    assert load_data("npz", path=str(tmp_path / "mono.npy"), binarize="none").image_shape == (1, 6, 6)

    hwc = rng.random((20, 8, 8, 3))
    np.savez(tmp_path / "hwc.npz", train=hwc[:16], valid=hwc[16:18], test=hwc[18:])
    data = load_data("npz", path=str(tmp_path / "hwc.npz"), binarize="none")
    assert data.image_shape == (3, 8, 8)
    assert torch.equal(data.train[0], torch.from_numpy(np.moveaxis(hwc[0], -1, 0).ravel()).float())


def test_dynamic_and_static_binarization_of_user_data(tmp_path):
    x = np.random.default_rng(3).random((100, 10))
    np.save(tmp_path / "x.npy", x)
    dyn = load_data("npz", path=str(tmp_path / "x.npy"))  # the default, "dynamic"
    assert dyn.binarize == "dynamic" and len(dyn.train.unique()) > 2
    assert set(dyn.valid.unique().tolist()) <= {0.0, 1.0}
    static = load_data("npz", path=str(tmp_path / "x.npy"), binarize="static")
    assert torch.equal(static.train, (dyn.train > 0.5).float())
    np.save(tmp_path / "b.npy", (x > 0.5).astype(np.uint8))
    assert load_data("npz", path=str(tmp_path / "b.npy")).binarize == "none"  # already binary


def test_real_valued_data_cannot_be_binarized(tmp_path):
    np.save(tmp_path / "x.npy", np.linspace(-3, 3, 200).reshape(20, 10))
    with pytest.raises(DataError) as info:
        load_data("npz", path=str(tmp_path / "x.npy"), binarize="dynamic")
    message = str(info.value)
    assert "needs values in [0, 1]" in message and 'data.binarize = "none"' in message
    assert load_data("npz", path=str(tmp_path / "x.npy"), binarize="none").train.min() < 0


def test_nan_and_inf_are_reported_with_their_position(tmp_path):
    x = np.random.default_rng(4).random((20, 3))
    x[[2, 5], [1, 0]] = np.nan
    np.savez(tmp_path / "nan.npz", train=x, valid=x[:2], test=x[:2])
    with pytest.raises(
        DataError, match=r"the train split has 2 non-finite value\(s\) \(2 NaN, 0 inf\).*row 2, column 1"
    ):
        load_data("npz", path=str(tmp_path / "nan.npz"), binarize="none")
    y = np.ones((4, 3))
    y[3, 2] = np.inf
    np.savez(tmp_path / "inf.npz", train=np.ones((8, 3)), valid=y, test=np.ones((2, 3)))
    with pytest.raises(
        DataError, match=r"the valid split has 1 non-finite value\(s\) \(0 NaN, 1 inf\).*row 3, column 2"
    ):
        load_data("npz", path=str(tmp_path / "inf.npz"), binarize="none")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="needs data.path"):
        load_data("npz")
    with pytest.raises(DataError, match="not found"):
        load_data("npz", path=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    with pytest.raises(DataError, match=r"shape \(10,\); expected one example per row"):
        load_data("npz", path=str(tmp_path / "flat.npy"))
    np.savez(tmp_path / "two.npz", a=np.ones((10, 2)), b=np.ones((10, 2)))
    with pytest.raises(DataError, match=r"holds arrays \['a', 'b'\]; expected one named 'train'"):
        load_data("npz", path=str(tmp_path / "two.npz"))
    np.savez(tmp_path / "mismatch.npz", train=np.ones((10, 2)), valid=np.ones((3, 5)))
    with pytest.raises(DataError, match="same shape per example"):
        load_data("npz", path=str(tmp_path / "mismatch.npz"))
    np.save(tmp_path / "few.npy", np.ones((5, 2)))
    with pytest.raises(DataError, match="5 rows are too few"):
        load_data("npz", path=str(tmp_path / "few.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickles are refused"):
        load_data("npz", path=str(tmp_path / "obj.npy"))
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="expected real numbers"):
        load_data("npz", path=str(tmp_path / "str.npy"))
