"""The benchmark scripts run (tiny settings) and their figures behave as the README says."""

from __future__ import annotations

import importlib.util
import shutil
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
    assert result["rows"][0]["pareto_k_share_above_0_7"] is None  # K = 1: no tail to fit
    share = result["rows"][2]["pareto_k_share_above_0_7"]  # a share of the 40 test images: a multiple of 1/40
    assert 0.0 <= share <= 1.0 and share * 40 == pytest.approx(round(share * 40), abs=1e-9)


@pytest.mark.slow
def test_mnist_guides_benchmark_smoke(mnist_root, tmp_path):
    bench = load("mnist_guides")
    args = ["--data-root", str(mnist_root), "--smoke", "--out", str(tmp_path / "cmp"), "--guides", "mean_field,iaf:1"]
    result = bench.main(bench.parse_args(args))
    assert [r["guide"] for r in result["rows"]] == ["mean_field", "iaf"]
    assert all(r["test_log_px"] >= r["test_elbo"] for r in result["rows"])
    assert "CPU" in result["machine"] or "CUDA" in result["machine"]


@pytest.fixture(scope="module")
def binarized_root():
    from tests.conftest import shared_data_dir

    shared = shared_data_dir()
    if shared is None or not (shared / "binarized_mnist" / "binarized_mnist.npz").is_file():
        pytest.skip("../shared/data/binarized_mnist is absent")
    return shared


@pytest.mark.slow
def test_likelihood_table_smoke_pairs_every_guide_with_mean_field_and_reuses_finished_runs(binarized_root, tmp_path):
    import torch

    bench = load("likelihood_table")
    argv = ["--data-root", str(binarized_root), "--smoke", "--out", str(tmp_path), "--guides", "mean_field,planar:2"]
    result = bench.main(bench.parse_args(argv))
    base, planar = result["rows"]
    assert [base["spec"], planar["spec"]] == ["mean_field", "planar:2"]
    assert all(r["test_log_px"] >= r["test_elbo"] and r["curve"] for r in result["rows"])
    assert result["config"]["model"]["hidden"] == [300, 300] and result["config"]["model"]["latent_dim"] == 40
    # both guides scored on the same images, per image: the gain is the mean of the paired differences
    runs = [tmp_path / "mean_field" / "mean_field", tmp_path / "planar_2" / "planar_2"]
    scores = [torch.load(next(d.glob("likelihood_scores_*.pt"))) for d in runs]
    assert torch.equal(scores[0]["indices"], scores[1]["indices"])
    diff = (scores[1]["log_px"] - scores[0]["log_px"]).double()
    assert planar["log_px_gain_over_mean_field"] == pytest.approx(float(diff.mean()))
    assert planar["log_px_gain_stderr"] == pytest.approx(float(diff.std() / diff.numel() ** 0.5))
    assert "elbo_gain_over_mean_field" not in base
    stamps = [(d / "checkpoint.pt").stat().st_mtime_ns for d in runs]
    again = bench.main(bench.parse_args(argv))  # finished guides are not trained or scored again
    assert [(d / "checkpoint.pt").stat().st_mtime_ns for d in runs] == stamps
    assert again["rows"][1]["test_log_px"] == planar["test_log_px"]
    with pytest.raises(SystemExit, match="mean_field"):
        bench.main(bench.parse_args([*argv[:-1], "planar:2,mean_field"]))


@pytest.mark.slow
def test_seed_experiment_smoke_runs_the_plain_svi_loop(binarized_root):
    bench = load("seed_experiment")
    result = bench.main(bench.parse_args(["--data-root", str(binarized_root), "--smoke", "--threads", "1"]))
    assert [r["guide"] for r in result["rows"]] == ["mean_field", "iaf"]
    for r in result["rows"]:
        assert r["steps"] == 20
        assert r["train_examples_per_s"] == pytest.approx(20 * 128 / r["train_seconds"])  # steps x batch / time
        assert r["test_log_px"] >= r["test_elbo"]


@pytest.mark.slow
def test_iw_eval_smoke_memory_grows_with_the_chunk(binarized_root):
    bench = load("iw_eval")
    result = bench.main(bench.parse_args(["--data-root", str(binarized_root), "--smoke", "--guides", "mean_field"]))
    by_setting = {(r["k"], r["sample_chunk"]): r for r in result["rows"]}
    assert set(by_setting) == {(100, 25), (500, 25), (500, 500)}
    for r in result["rows"]:  # the rate is the work (datapoints x samples) over the time it took
        assert r["datapoint_samples_per_s"] == pytest.approx(r["num_test"] * r["k"] / r["seconds"])
    # a 20x larger sample chunk holds 20x the decoder outputs at once (20 x 500 x 784 floats, 30 MiB per tensor):
    # the peak must show it, by more than the few MiB the resident set moves by on its own
    small, large = by_setting[(500, 25)]["peak_extra_mib"], by_setting[(500, 500)]["peak_extra_mib"]
    assert large > small + 20, (small, large)


def test_guide_only_benchmark_keeps_the_decoder_and_starts_every_flow_at_mean_field(binarized_root, tmp_path):
    """With no guide steps, every flow (at its identity initialisation, on the decoder run's encoder) scores the
    mean-field ELBO on the same images to within 0.05 nats; after training, the decoder is still the decoder
    run's, bit for bit."""
    import torch

    bench = load("guide_only")
    argv = ["--data-root", str(binarized_root), "--smoke", "--out", str(tmp_path)]
    # (householder with an even K: its reflections start in equal pairs, the identity)
    flows = "planar:4,radial:2,householder:2,iaf:1,sylvester_orthogonal:2,sylvester_triangular:2"
    guides = ["--guides", f"mean_field,{flows}"]
    rows = bench.main([*argv, *guides, "--steps", "0"])
    assert rows[0]["guide"] == "mean_field" and rows[0]["elbo_gain_over_mean_field"] == 0.0
    assert all(abs(r["elbo_gain_over_mean_field"]) < 0.05 for r in rows)
    decoder_run = tmp_path / "decoder"
    _, trained, _ = runs.load_run(decoder_run, device="cpu")
    _, vae = bench.guide_vae("planar:4", decoder_run)
    assert all(not p.requires_grad for p in vae.model.parameters())
    reference = trained.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in vae.model.state_dict().items())


def test_airline_backtest_smoke_pools_the_origins_and_mixes_the_seeds_draws(tmp_path):
    """Smoke settings (one origin, one seed, 2 epochs): the ensemble of one seed is that seed (its draws are the
    ones behind its metrics.json), pooling one origin gives that origin's figures, and the targets are judged."""
    bench = load("gpvae")
    result = bench.main(bench.parse_args(["airline", "--smoke", "--out", str(tmp_path / "runs")]))
    (origin,) = result["per_origin"]
    (run,) = origin["runs"]
    assert origin["year"] == 1960 and origin["months"][0] == "1960-01" and len(origin["history"]) == 132
    assert origin["ensemble"]["rmse"] == pytest.approx(run["rmse"], rel=1e-9)
    assert origin["ensemble"]["mean"] == pytest.approx(run["mean"], rel=1e-9)
    overall = result["overall"]
    assert overall["sarima"]["rmse"] == pytest.approx(origin["baselines"]["sarima"]["rmse"], rel=1e-9)
    assert overall["gp_vae_ensemble"]["months"] == 12
    ratio = overall["gp_vae_ensemble"]["rmse"] / overall["sarima"]["rmse"]
    assert result["targets"]["ensemble_rmse_over_sarima"] == pytest.approx(ratio)
    assert "| GP-VAE, seed 0 |" in bench.format_airline(result)
    assert (tmp_path / "runs" / "airline_backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_hmnist_frames_variant_scores_the_hidden_frames(mnist_root, tmp_path):
    """--variant frames: the data hide 3 of 10 frames per sequence and every method gets an MSE on those frames."""
    bench = load("gpvae")
    args = ["hmnist", "--variant", "frames", "--data-root", str(mnist_root), "--smoke", "--out", str(tmp_path)]
    result = bench.main(bench.parse_args(args))
    assert result["variant"] == "frames" and result["data"]["missing"] == "frames"
    assert result["data"]["missing_frames"] == 3 and result["config"]["data"]["options"]["missing_rate"] == 0.4
    table = result["table"]
    assert set(table) == {"mean_imputation", "forward_imputation", "vae", "gp_vae", "gp_vae_planar"}
    assert all(0.0 <= row["mse_missing_frames"] <= 1.0 for row in table.values())
    assert "MSE (hidden frames)" in bench.format_hmnist(result)
    assert bench._result_name(bench.parse_args(args)) == "gpvae_hmnist_frames"
    assert result["runs"]["gp_vae_planar"]["guide"] == "planar" and result["runs"]["gp_vae_planar"]["num_flows"] == 8
    assert not any(run["reused"] for run in result["runs"].values())

    # the same --out again: the finished rows are reused, and a row whose run is gone is trained again
    shutil.rmtree(tmp_path / "gp_vae_planar")
    again = bench.main(bench.parse_args(args))
    assert {name: bool(run["reused"]) for name, run in again["runs"].items()} == {
        "vae": True, "gp_vae": True, "gp_vae_planar": False,
    }  # fmt: skip
    assert again["table"]["gp_vae"] == table["gp_vae"]


def test_the_gpvae_benchmarks_frame_wise_vae_encodes_each_frame_alone():
    """The baseline of the Healing MNIST tables is frame-wise in its encoder too (a temporal window of 1, as
    Fortuin et al.'s VAE): changing frame 6 moves the encoder's features of frame 6 only. With the GP-VAE's
    window of 3 it moves frames 5-7."""
    import torch

    from pyro_flowvae.config import load_config

    bench = load("gpvae")
    base = load_config(REPO / "examples" / "configs" / "hmnist_gpvae.toml")
    meta = {"data_dim": 784, "seq_len": 10, "image_shape": (1, 28, 28)}
    x = torch.rand(2, 10, 784).round()
    mask = torch.ones_like(x)
    bumped = x.clone()
    bumped[:, 6] = 1.0 - bumped[:, 6]
    for overrides, moved_frames in [(bench.FRAMEWISE, [6]), ({}, [5, 6, 7])]:
        torch.manual_seed(0)
        encoder = base.task.build_model(base.with_overrides(overrides), meta).guide.encoder
        with torch.no_grad():
            moved = (encoder(bumped, mask) - encoder(x, mask)).abs().amax(dim=(0, 2))
        assert torch.nonzero(moved).flatten().tolist() == moved_frames


def test_the_airline_interval_score_charges_width_and_misses_by_the_level():
    """Gneiting & Raftery's interval score: the width when the truth is inside, plus 2 / alpha times the miss
    outside; a band twice as wide as needed scores worse than a tight one that still covers."""
    bench = load("gpvae")
    rows = [{"truth": [10.0, 10.0, 10.0], "mean": [10.0] * 3, "lower": [9.0, 11.0, 5.0], "upper": [11.0, 12.0, 9.0]}]
    figures = bench.pooled(rows, level=0.9)
    # widths 2, 1, 4; misses 0, 1 below, 1 above; 2 / alpha = 20
    assert figures["interval_score"] == pytest.approx((2 + (1 + 20) + (4 + 20)) / 3)
    assert figures["coverage"] == pytest.approx(1 / 3)
    tight = bench.pooled([{"truth": [10.0], "mean": [10.0], "lower": [9.0], "upper": [11.0]}], level=0.9)
    wide = bench.pooled([{"truth": [10.0], "mean": [10.0], "lower": [8.0], "upper": [12.0]}], level=0.9)
    assert tight["coverage"] == wide["coverage"] == 1.0 and tight["interval_score"] < wide["interval_score"]
