"""Property-style: the config loader and the data loaders fed malformed inputs (empty, truncated, wrong encoding,
wrong types and shapes) raise only this package's own errors, which the CLI turns into one message, or succeed.

The cases are drawn from a seeded generator, so a failure reproduces; each failure names its case.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pyro_flowvae.config import Config, flatten_config, load_config
from pyro_flowvae.data import load_data
from pyro_flowvae.data.airline import load_airline
from pyro_flowvae.data.binarized_mnist import load_binarized_mnist
from pyro_flowvae.errors import FlowVAEError
from tests.conftest import REPO, make_binary_npz

RNG_SEED = 20261203
#: values of every wrong kind, substituted for each key in turn
BAD_VALUES = ["", "none", "x" * 300, -1, 0, 2**63, -1e308, 1e308, float("nan"), float("inf"), True, [], [[]], [-1],
              ["a"], {}, {"a": 1}, 0.5, "1e-3"]  # fmt: skip


def only_our_errors(case, call, *args, **kwargs):
    """Run ``call(*args, **kwargs)``; an error other than FlowVAEError fails the test, naming ``case``."""
    try:
        call(*args, **kwargs)
    except FlowVAEError:
        pass
    except Exception as error:  # noqa: BLE001 - this is the property under test
        pytest.fail(f"{case}: {type(error).__name__} escaped: {error}")


# ---------------------------------------------------------------------------------------------------------- configs


def test_every_key_with_every_wrong_kind_of_value():
    keys = [k for k in flatten_config(Config()) if not k.startswith("data.options")]
    keys += ["guide.options.iaf", "guide.options.iaf.hidden_dims", "guide.options.spline.count_bins", "data.options"]
    for key in keys:
        for value in BAD_VALUES:
            only_our_errors(f"{key} = {value!r}", load_config, None, {key: value})


def test_config_files_cut_short_or_garbled(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    sources = sorted((REPO / "examples" / "configs").glob("*.toml"))
    assert len(sources) >= 5
    path = tmp_path / "config.toml"
    for source in sources:
        data = source.read_bytes()
        cuts = rng.integers(0, len(data), 12)
        variants = [data[:cut] for cut in cuts]
        variants += [bytes(rng.integers(0, 256, 64, dtype=np.uint8)), b"", b"\xff\xfe" + data, data.replace(b"=", b"")]
        for _ in range(4):  # flip bytes in place
            garbled = bytearray(data)
            for at in rng.integers(0, len(data), 8):
                garbled[at] = int(rng.integers(0, 256))
            variants.append(bytes(garbled))
        for i, variant in enumerate(variants):
            path.write_bytes(variant)
            only_our_errors(f"{source.name}, variant {i}", load_config, path)
    only_our_errors("a folder as the config file", load_config, tmp_path)
    only_our_errors("a missing config file", load_config, tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------------------------------ arrays


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _malformed_arrays(rng) -> list[tuple[str, dict]]:
    good = (rng.random((30, 6)) < 0.5).astype(np.float32)
    return [
        ("1-D", {"train": good[:, 0]}),
        ("no rows", {"train": good[:0]}),
        ("no columns", {"train": good[:, :0]}),
        ("strings", {"train": np.array([["a", "b"]] * 30)}),
        ("complex", {"train": good.astype(np.complex64)}),
        ("widths differ", {"train": good, "valid": good[:, :4], "test": good}),
        ("NaN", {"train": np.where(good > 0, np.nan, 0.0)}),
        ("inf", {"train": np.where(good > 0, np.inf, 0.0)}),
        ("two unnamed arrays", {"a": good, "b": good}),
        ("too few rows to carve", {"train": good[:3]}),
        ("scalar", {"train": np.float32(1.0)}),
        ("empty valid", {"train": good, "valid": good[:0], "test": good}),
    ]


def test_npz_files_malformed_truncated_or_not_arrays(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    path = tmp_path / "data.npz"
    for name, arrays in _malformed_arrays(rng):
        path.write_bytes(_npz_bytes(**arrays))
        only_our_errors(f"npz with {name}", load_data, "npz", path=str(path))
    good = make_binary_npz(tmp_path / "good.npz").read_bytes()
    for cut in sorted(set(rng.integers(0, len(good), 25).tolist())):
        path.write_bytes(good[:cut])
        only_our_errors(f"npz cut at byte {cut} of {len(good)}", load_data, "npz", path=str(path))
    for i in range(5):
        path.write_bytes(bytes(rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8)))
        only_our_errors(f"random bytes {i}", load_data, "npz", path=str(path))
    npy = tmp_path / "data.npy"
    np.save(npy, np.array([{"pickled": 1}], dtype=object), allow_pickle=True)
    only_our_errors("a pickled .npy", load_data, "npz", path=str(npy))
    only_our_errors("a folder as data.path", load_data, "npz", path=str(tmp_path))


def test_binarized_mnist_files_of_the_wrong_shape_or_values(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    images = (rng.random((20, 784)) < 0.3).astype(np.uint8)
    cases = {
        "grey values": {"train": images * 0.5, "valid": images, "test": images},
        "27x27": {"train": images[:, :729].reshape(20, 27, 27), "valid": images, "test": images},
        "missing test": {"train": images, "valid": images},
        "no rows": {"train": images[:0], "valid": images, "test": images},
        "strings": {"train": np.array([["0"] * 784] * 2), "valid": images, "test": images},
    }
    path = tmp_path / "binarized_mnist.npz"
    for name, arrays in cases.items():
        path.write_bytes(_npz_bytes(**arrays))
        only_our_errors(f"binarized MNIST with {name}", load_binarized_mnist, path=path)
        only_our_errors(f"load_data, {name}", load_data, "binarized_mnist", root=str(tmp_path))
    good = _npz_bytes(train=images, valid=images, test=images)
    for cut in sorted(set(rng.integers(0, len(good), 15).tolist())):
        path.write_bytes(good[:cut])
        only_our_errors(f"binarized MNIST cut at byte {cut}", load_binarized_mnist, path=path)


# -------------------------------------------------------------------------------------------------------- CSV series


def test_airline_files_empty_garbled_or_not_utf8(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    good = (Path(load_airline.__code__.co_filename).parent / "files" / "airline-passengers.csv").read_bytes()
    path = tmp_path / "airline.csv"
    variants = [b"", b"\n\n", b"Month,Passengers\n", b"Month,Passengers\n1949-01\n", b"a,b\n1949-01,many\n",
                b"\xff\xfe" + good, good.replace(b",", b";")]  # fmt: skip
    variants += [good[:cut] for cut in rng.integers(0, len(good), 10)]
    for i, variant in enumerate(variants):
        path.write_bytes(variant)
        only_our_errors(f"airline variant {i}: {variant[:30]!r}", load_airline, path)
    only_our_errors("a folder as the airline file", load_airline, tmp_path)


# ---------------------------------------------------------------------------------------------- MNIST's own files


def test_mnist_gz_and_extracted_files_cut_short(mnist_root, tmp_path):
    """Truncated .gz files fail their MD5 check; truncated extracted files are named; neither escapes raw."""
    rng = np.random.default_rng(RNG_SEED)
    for i, cut in enumerate(rng.integers(1, 1 << 20, 3)):
        root = tmp_path / f"gz{i}"
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (mnist_root / "MNIST" / "raw").glob("*.gz"):
            data = gz.read_bytes()
            (raw / gz.name).write_bytes(data[: int(cut)] if gz.name.startswith("train-images") else data)
        only_our_errors(f"train-images .gz cut at {cut}", load_data, "mnist", root=str(root), limit=5)
    root = tmp_path / "extracted"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (mnist_root / "MNIST" / "raw").glob("*.gz"):
        (raw / gz.name).write_bytes(gz.read_bytes())
    load_data("mnist", root=str(root), limit=5)  # extracts in place
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        whole = (raw / name).read_bytes()
        for cut in (0, 3, 16, len(whole) // 2):
            (raw / name).write_bytes(whole[:cut])
            only_our_errors(f"{name} cut at {cut}", load_data, "mnist", root=str(root), limit=5)
        (raw / name).write_bytes(whole)
