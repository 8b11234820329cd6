"""MNIST and Fashion-MNIST on the real files: offline extraction, splits, binarization, read-only roots."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST, FashionMNIST

from pyro_flowvae.data import DATASETS, DataSplits, load_data
from pyro_flowvae.data.torchvision_sets import extraction_root
from pyro_flowvae.errors import DataError

from .conftest import MNIST_GZ, snapshot

# reference counts of the shared files (shared/data/README.md)
MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
EXTRACTED = [f.removesuffix(".gz") for f in MNIST_GZ]


class TestMNIST:
    def test_first_load_extracts_in_place_without_network(self, mnist_first_load, mnist_root):
        _, calls = mnist_first_load
        assert calls == []
        raw = mnist_root / "MNIST" / "raw"
        assert all((raw / f).is_file() for f in EXTRACTED)
        assert not list(raw.glob("*.part"))

    def test_splits_shapes_and_values(self, mnist_dynamic):
        data = mnist_dynamic
        assert (data.name, data.binarize, data.image_shape, data.data_dim) == (
            "mnist",
            "dynamic",
            (1, 28, 28),
            784,
        )
        assert data.train.shape == (50000, 784) and data.valid.shape == (10000, 784)
        assert data.test.shape == (10000, 784)
        assert all(x.dtype == torch.float32 for x in (data.train, data.valid, data.test))
        # dynamic: train keeps the grey levels, valid and test were binarized once
        assert data.train.min() == 0 and data.train.max() == 1
        assert len(data.train[:100].unique()) > 2
        for x in (data.valid, data.test):
            assert set(x.unique().tolist()) == {0.0, 1.0}

    def test_splits_follow_the_official_order(self, mnist_root, mnist_grey):
        official = MNIST(str(mnist_root), train=True)
        grey = official.data.reshape(60000, 784).float() / 255
        assert torch.equal(mnist_grey.train, grey[:50000])
        assert torch.equal(mnist_grey.valid, grey[50000:])
        test = MNIST(str(mnist_root), train=False).data.reshape(10000, 784).float() / 255
        assert torch.equal(mnist_grey.test, test)
        assert official.targets.bincount().tolist() == MNIST_TRAIN_LABEL_COUNTS

    def test_valid_and_test_binarized_once_with_the_seed(self, mnist_root, mnist_dynamic, mnist_grey):
        again = load_data("mnist", root=str(mnist_root), seed=0)
        assert torch.equal(again.valid, mnist_dynamic.valid) and torch.equal(again.test, mnist_dynamic.test)
        other = load_data("mnist", root=str(mnist_root), seed=1)
        assert not torch.equal(other.valid, mnist_dynamic.valid)
        # a Bernoulli draw of each grey level: as bright as the grey images on average, 1 only where grey > 0
        assert abs(mnist_dynamic.valid.mean() - mnist_grey.valid.mean()) < 2e-3
        assert abs(mnist_dynamic.test.mean() - mnist_grey.test.mean()) < 2e-3
        assert not (mnist_dynamic.valid[mnist_grey.valid == 0] == 1).any()
        assert not torch.equal(mnist_dynamic.valid, (mnist_grey.valid > 0.5).float())

    def test_static_thresholds_every_split(self, mnist_root, mnist_grey):
        data = load_data("mnist", root=str(mnist_root), binarize="static")
        assert data.binarize == "static"
        for split in ("train", "valid", "test"):
            assert torch.equal(getattr(data, split), (getattr(mnist_grey, split) > 0.5).float())

    def test_limit_keeps_the_first_training_examples(self, mnist_root, mnist_grey):
        data = load_data("mnist", root=str(mnist_root), limit=123, binarize="none")
        assert data.train.shape == (123, 784)
        assert torch.equal(data.train, mnist_grey.train[:123])
        assert torch.equal(data.valid, mnist_grey.valid) and torch.equal(data.test, mnist_grey.test)

    def test_valid_size(self, mnist_root, mnist_grey):
        data = load_data("mnist", root=str(mnist_root), valid_size=5000, binarize="none")
        assert data.train.shape[0] == 55000 and data.valid.shape[0] == 5000
        assert torch.equal(data.valid, mnist_grey.valid[5000:])
        with pytest.raises(DataError, match=r"valid_size must be in \[0, 59999\]"):
            load_data("mnist", root=str(mnist_root), valid_size=60000)

    def test_wrong_level_root_gets_a_hint(self, mnist_root, no_network):
        with pytest.raises(DataError, match=r"Found MNIST files in .*MNIST.raw"):
            load_data("mnist", root=str(mnist_root / "MNIST"))
        assert no_network == []


def test_fashion_mnist(mnist_root, no_network):
    data = load_data("fashion_mnist", root=str(mnist_root), limit=1000, binarize="none")
    assert no_network == []
    assert data.name == "fashion_mnist" and data.train.shape == (1000, 784)
    assert data.valid.shape == (10000, 784) and data.test.shape == (10000, 784)
    official = FashionMNIST(str(mnist_root), train=True)
    assert official.targets.bincount().tolist() == [6000] * 10
    assert torch.equal(data.train, official.data[:1000].reshape(1000, 784).float() / 255)


def extracted_in(cache: Path) -> Path:
    """The one extraction folder (``cache/<source key>/MNIST/raw``) the loaders made in ``cache``."""
    (found,) = cache.glob("*/MNIST/raw")
    return found


def test_read_only_copy_is_not_written(read_only_mnist_root, tmp_path, no_network):
    """A raw folder without write permission bits counts as read-only, even when running as root; its files are
    extracted once into the cache, keyed by the source, and reused."""
    root, cache = read_only_mnist_root, tmp_path / "cache"
    before = snapshot(root)
    data = load_data("mnist", root=str(root), cache_dir=str(cache), binarize="none", limit=10)
    assert snapshot(root) == before and data.train.shape == (10, 784)
    raw = extracted_in(cache)
    assert raw == extraction_root(cache, root / "MNIST" / "raw", MNIST) / "MNIST" / "raw"
    assert all((raw / f).is_file() for f in EXTRACTED)
    mtimes = [(raw / f).stat().st_mtime_ns for f in EXTRACTED]
    again = load_data("mnist", root=str(root), cache_dir=str(cache), binarize="none", limit=10)
    assert torch.equal(again.train, data.train)
    assert [(raw / f).stat().st_mtime_ns for f in EXTRACTED] == mtimes  # reused, not extracted again
    assert no_network == []


def _corrupted_copy(root: Path, dest: Path) -> Path:
    """A copy of ``root``'s MNIST .gz files under ``dest`` whose training images are corrupted (the same size, other
    bytes); its MNIST/raw folder."""
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_GZ:
        shutil.copyfile(root / "MNIST" / "raw" / f, raw / f)
    with open(raw / "train-images-idx3-ubyte.gz", "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\x00" * 64)
    return raw


def test_a_warm_cache_never_hides_a_corrupted_root(read_only_mnist_root, tmp_path, no_network):
    """The cache of a good root is warm; a second read-only root whose .gz is corrupted, with the same cache_dir,
    is refused by its MD5 sum instead of being served the first root's extraction."""
    cache = tmp_path / "cache"
    load_data("mnist", root=str(read_only_mnist_root), cache_dir=str(cache), limit=10)
    bad = _corrupted_copy(read_only_mnist_root, tmp_path / "bad_root")
    bad.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is not the original MNIST file.*MD5"):
            load_data("mnist", root=str(tmp_path / "bad_root"), cache_dir=str(cache), limit=10)
    finally:
        bad.chmod(0o755)
    assert len(list(cache.glob("*/MNIST/raw"))) == 1  # nothing was extracted for the corrupted root


def test_a_truncated_extracted_file_names_the_folder_to_clear(mnist_root, tmp_path, no_network):
    """Extracted files that were cut short (a full disk, a copy interrupted) are a DataError that says which files
    to delete, not a reshape error from deep inside torchvision; deleting them re-extracts the .gz files."""
    root = tmp_path / "root"
    shutil.copytree(mnist_root / "MNIST", root / "MNIST")
    load_data("mnist", root=str(root), limit=10)  # extracts in place (the root is writable)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: 1 << 20])
    with pytest.raises(DataError, match=r"truncated or corrupted\. Delete the \*-ubyte files there") as info:
        load_data("mnist", root=str(root), limit=10)
    assert str(root / "MNIST" / "raw") in str(info.value)
    for f in EXTRACTED:
        (root / "MNIST" / "raw" / f).unlink()
    assert load_data("mnist", root=str(root), limit=10).train.shape == (10, 784)


def _train_cli(root: Path, out: Path, *extra: str) -> int:
    from pyro_flowvae.cli import main

    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "mnist_mean_field.toml"
    sets = [f"data.root={root}", "data.limit=10", "train.epochs=1", *extra]
    return main(["train", str(config), "--out", str(out), "--quiet", *(a for s in sets for a in ("--set", s))])


def test_the_cli_names_a_corrupted_root_behind_a_warm_cache_and_a_truncated_extraction(
    read_only_mnist_root, mnist_root, tmp_path, no_network, capsys
):
    """Both data faults above, through ``pyro-flowvae train``: one message naming the file and the fix, exit code
    2, no traceback, and no run directory left behind."""
    cache = tmp_path / "cache"
    load_data("mnist", root=str(read_only_mnist_root), cache_dir=str(cache), limit=10)  # the cache is warm
    _corrupted_copy(read_only_mnist_root, tmp_path / "bad_root")
    capsys.readouterr()
    assert _train_cli(tmp_path / "bad_root", tmp_path / "run1", f"data.cache_dir={cache}") == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz is not the original MNIST file" in err and "Traceback" not in err
    root = tmp_path / "root"
    shutil.copytree(mnist_root / "MNIST", root / "MNIST")
    load_data("mnist", root=str(root), limit=10)  # extracts in place
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: 1 << 20])
    assert _train_cli(root, tmp_path / "run2") == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted. Delete the *-ubyte files there" in err and "Traceback" not in err
    assert not (tmp_path / "run1" / "checkpoint.pt").exists() and not (tmp_path / "run2" / "checkpoint.pt").exists()


class TestMissingFiles:
    def test_missing_root_names_the_path_and_the_fix(self, tmp_path, no_network):
        root = tmp_path / "nowhere"
        with pytest.raises(DataError) as info:
            load_data("mnist", root=str(root), cache_dir=str(tmp_path / "cache"))
        message = str(info.value)
        assert str(root / "MNIST" / "raw") in message
        assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
        assert "data.download = true" in message and "copy" in message
        assert no_network == []
        assert not root.exists() and not (tmp_path / "cache").exists()

    def test_fashion_mnist_missing(self, tmp_path, no_network):
        with pytest.raises(DataError, match=r"FashionMNIST.raw"):
            load_data("fashion_mnist", root=str(tmp_path))
        assert no_network == []

    def test_corrupt_gz_is_reported_not_downloaded(self, tmp_path, no_network):
        raw = tmp_path / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in MNIST_GZ:
            (raw / f).write_bytes(b"not the real file")
        with pytest.raises(DataError, match=r"MD5 sum differs"):
            load_data("mnist", root=str(tmp_path))
        assert no_network == []

    def test_download_only_when_asked(self, tmp_path, monkeypatch):
        asked = []

        def fake_download(self):
            asked.append(self.root)
            raise RuntimeError("offline in this test")

        monkeypatch.setattr(MNIST, "download", fake_download)
        with pytest.raises(DataError, match=r"downloading MNIST into .* failed: offline in this test"):
            load_data("mnist", root=str(tmp_path), download=True)
        assert asked == [str(tmp_path)]


def test_default_root_is_the_cache(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("PYRO_FLOWVAE_CACHE", str(tmp_path))
    with pytest.raises(DataError, match=re.escape(str(Path(tmp_path) / "mnist" / "MNIST" / "raw"))):
        load_data("mnist")


def test_unknown_name_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'cifar'; choose one of mnist, fashion_mnist"):
        load_data("cifar")
    assert DATASETS == ("mnist", "fashion_mnist", "binarized_mnist", "npz")
    with pytest.raises(DataError, match="data.binarize must be one of none, dynamic, static, got 'yes'"):
        load_data("mnist", root=str(tmp_path), binarize="yes")
    with pytest.raises(DataError, match="data.limit must be a positive integer"):
        load_data("mnist", root=str(tmp_path), limit=0)
    with pytest.raises(DataError, match="data.valid_size must be a non-negative integer"):
        load_data("mnist", root=str(tmp_path), valid_size=-1)


def test_data_splits_to_device(mnist_dynamic):
    moved = mnist_dynamic.to("cpu")
    assert isinstance(moved, DataSplits) and moved.binarize == "dynamic" and moved.image_shape == (1, 28, 28)
    assert "train=(50000, 784)" in repr(moved) and "tensor" not in repr(moved)
