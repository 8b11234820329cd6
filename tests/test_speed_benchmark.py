"""benchmarks/speed.py runs (smoke settings), writes what it says, and compares like with like."""

from __future__ import annotations

import ast
import json
import statistics

import pytest
import torch

from tests.test_benchmarks import load

GUIDES = ["mean_field", "planar", "radial", "householder", "iaf", "spline"]


@pytest.fixture(scope="module")
def bench():
    return load("speed")


@pytest.fixture(scope="module")
def smoke_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            bench.parse_args(["--smoke", "--json", str(out / "speed.json"), "--plot", str(out / "p.png")])
        )
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_smoke_run_writes_the_json_and_the_plot(smoke_run):
    result, out = smoke_run
    written = json.loads((out / "speed.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (out / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("machine", "versions", "load_average_before", "load_average_after", "settings", "summary"):
        assert key in written, key
    assert "CPU" in written["machine"] or "CUDA" in written["machine"]
    assert written["versions"]["pyro"] and written["settings"]["threads"] >= 1 and written["settings"]["smoke"]


def test_side_by_side_has_every_family_with_both_implementations(smoke_run):
    result, _ = smoke_run
    rows = result["side_by_side"]
    assert [r["guide"] for r in rows] == GUIDES
    for r in rows:
        for impl in ("ours", "reference"):
            timing = r[impl]
            assert len(timing["times_s"]) == result["settings"]["repeats"]
            assert timing["median_s"] == statistics.median(timing["times_s"])
            assert timing["examples_per_s"] == pytest.approx(r["batch"] / timing["median_s"])
        assert r["ours_over_reference"] == pytest.approx(r["reference"]["median_s"] / r["ours"]["median_s"])
    summary = result["summary"]
    assert summary["min_ours_over_reference"] == min(r["ours_over_reference"] for r in rows)
    assert summary["ours_over_reference_met"] == (summary["min_ours_over_reference"] >= 0.95)
    large = result["side_by_side_large_batch"]
    assert [r["batch"] for r in large] == [result["settings"]["large_batch"]] * len(GUIDES)
    assert summary["min_ours_over_reference_large_batch"] == min(r["ours_over_reference"] for r in large)


@pytest.mark.parametrize("spec", ["mean_field", "planar:2", "iaf:1"])
def test_both_timed_steps_train_the_same_model(bench, spec):
    """What is timed is a training step: ours and the reference, from the same weights on the same batch, both
    lower the loss over 30 steps, to nearly the same value (their noise differs)."""
    args = bench.parse_args(["--smoke"])
    bench.apply_modes(args)
    ours, reference = bench.pair(args, spec, 32)
    losses = {}
    for item in (ours, reference):
        first = float(item.step(item.x))
        for _ in range(29):
            last = float(item.step(item.x))
        losses[item.key[1]] = (first, last)
    for first, last in losses.values():
        assert last < first - 1.0, losses
    assert losses["ours"][1] == pytest.approx(losses["reference"][1], rel=0.1)


def test_ours_and_the_reference_compute_the_same_loss_and_gradients(smoke_run):
    """Same weights, same noise: the float64 losses and gradients agree, for every family."""
    result, _ = smoke_run
    for r in result["side_by_side"]:
        check = r["loss_check"]
        assert check["dtype"] == "float64"
        assert check["loss_rel_diff"] < 1e-12, r["label"]
        assert check["grad_max_rel_diff"] < 1e-9, r["label"]


def test_the_loss_check_would_see_different_noise(bench):
    """The comparison can fail: a reference drawing other noise gives another loss."""
    args = bench.parse_args(["--smoke"])
    bench.apply_modes(args)
    config = bench.guide_config(args, "planar:2")
    vae, _ = bench.build_ours(config, args.data_dim, 0)
    model, _ = bench.build_reference(config, args.data_dim, vae.double())
    x = bench.random_batch(8, args.data_dim, 1, torch.float64)
    torch.manual_seed(1)
    same = model.loss(x)
    torch.manual_seed(2)
    other = model.loss(x)
    assert abs(same.item() - other.item()) > 1e-3 * abs(same.item())


def test_the_loss_check_sees_a_reference_with_other_weights(bench, monkeypatch):
    """The comparison can fail: nudge one weight of the reference and the check reports it."""
    args = bench.parse_args(["--smoke"])
    bench.apply_modes(args)
    build = bench.build_reference

    def nudged(config, data_dim, vae):
        model, step = build(config, data_dim, vae)
        with torch.no_grad():
            model.decoder[0].bias[0] += 1e-3
        return model, step

    monkeypatch.setattr(bench, "build_reference", nudged)
    check = bench.loss_check(args, "iaf:1")
    assert check["loss_rel_diff"] > 1e-9 and check["grad_max_rel_diff"] > 1e-6


def test_growth_curves_cover_the_requested_points(smoke_run):
    result, _ = smoke_run
    s = result["settings"]
    by_flows = {(r["guide"], r["num_flows"]) for r in result["growth_num_flows"]}
    assert by_flows == {(flow, k) for flow in s["growth_flows"] for k in s["ks"]}
    assert [r["batch"] for r in result["growth_batch"]] == s["batches"] * len(s["batch_guides"])
    for r in result["growth_num_flows"] + result["growth_batch"]:
        for impl in ("ours", "reference"):
            assert r[impl]["median_s"] == statistics.median(r[impl]["times_s"])
            assert len(r[impl]["times_s"]) == s["growth_repeats"]


def test_the_reference_imports_no_pyro(bench):
    source = (bench.ROOT / "benchmarks" / "torch_vae.py").read_text()
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert "pyro" not in modules and "pyro_flowvae" not in modules
    assert modules <= {"__future__", "math", "collections", "torch"}
