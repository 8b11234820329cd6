"""On the real MNIST files from ../shared/data (skipped when absent): the README's command, per shipped config."""

from __future__ import annotations

import json

import pytest

from pyro_flowvae.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("guide", ["mean_field", "planar", "iaf"])
def test_one_short_epoch_on_mnist_per_shipped_config(guide, mnist_root, tmp_path):
    run = tmp_path / guide
    args = [
        "train", str(REPO / "examples" / "configs" / f"mnist_{guide}.toml"), "--out", str(run),
        "--set", f"data.root={mnist_root}", "--set", "data.limit=2000", "--set", "train.epochs=1",
        "--set", "eval.iw_samples=100", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["guide"] == guide and metrics["num_train"] == 2000 and metrics["num_test"] == 10000
    assert metrics["test_log_px"] >= metrics["test_elbo"]
    # one epoch on 2000 images is far from converged, but far better than chance (784 log 2 = 543 nats)
    assert -300 < metrics["test_elbo"] < -100, metrics["test_elbo"]


def test_static_binarized_mnist_from_the_shared_npz(tmp_path):
    from tests.conftest import shared_data_dir

    shared = shared_data_dir()
    if shared is None or not (shared / "binarized_mnist" / "binarized_mnist.npz").is_file():
        pytest.skip("../shared/data/binarized_mnist is absent")
    run = tmp_path / "bmnist"
    args = [
        "train", str(REPO / "examples" / "configs" / "mnist_iaf.toml"), "--out", str(run),
        "--set", "data.name=binarized_mnist", "--set", f"data.root={shared}", "--set", "data.limit=1000",
        "--set", "train.epochs=1", "--set", "eval.iw_samples=30", "--set", "eval.test_limit=500", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "binarized_mnist" and metrics["num_train"] == 1000 and metrics["num_test"] == 500
    assert metrics["test_log_px"] >= metrics["test_elbo"] > -400
