"""The benchmark scripts run (tiny settings) and their figures behave as the README says."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from pyro_flowvae import runs
from tests.conftest import REPO, tiny_config


def load(name):
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_iw_curve_rises_with_k_and_bounds_the_elbo(tmp_path, tiny_npz):
    runs.train(tiny_config(tiny_npz, {"guide.flow": "planar"}), tmp_path / "run")
    bench = load("iw_curve")
    result = bench.main(
        bench.parse_args([str(tmp_path / "run"), "--ks", "1,30,300", "--no-write", "--test-limit", "40"])
    )
    log_px = [r["log_px"] for r in result["rows"]]
    assert log_px[0] == pytest.approx(result["rows"][0]["elbo"])  # K = 1: the bound is the ELBO
    assert log_px[0] < log_px[1] < log_px[2]
    assert result["rows"][0]["pareto_k_share_above_0_7"] is None and result["rows"][2]["pareto_k_share_above_0_7"] >= 0


@pytest.mark.slow
def test_mnist_guides_benchmark_smoke(mnist_root, tmp_path):
    bench = load("mnist_guides")
    args = ["--data-root", str(mnist_root), "--smoke", "--out", str(tmp_path / "cmp"), "--guides", "mean_field,iaf:1"]
    result = bench.main(bench.parse_args(args))
    assert [r["guide"] for r in result["rows"]] == ["mean_field", "iaf"]
    assert all(r["test_log_px"] >= r["test_elbo"] for r in result["rows"])
    assert "CPU" in result["machine"] or "CUDA" in result["machine"]
