"""The pyro-flowvae command end to end on tiny data, and what bad input gets."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from pyro_flowvae.cli import main
from pyro_flowvae.config import Config
from tests.conftest import REPO, tiny_config

RUN_FILES = {
    "config.toml",
    "checkpoint.pt",
    "best.pt",
    "log.jsonl",
    "elbo_curve.png",
    "samples.png",
    "reconstructions.png",
    "metrics.json",
}
METRIC_KEYS = {
    "test_elbo",
    "test_log_px",
    "iw_samples",
    "train_examples_per_s",
    "epochs",
    "guide",
    "num_params",
    "device",
    "seed",
    "versions",
    "pareto_k_share_above_0_7",
    "kl_per_dim",
    "active_units",
}


@pytest.fixture
def image_npz(tmp_path):
    """Binary 4x5 'images' with two prototypes, so the run directory gets image grids."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((2, 4, 5)) < 0.5
    x = np.logical_xor(prototypes[rng.integers(0, 2, 300)], rng.random((300, 4, 5)) < 0.1).astype(np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, train=x[:200], valid=x[200:250], test=x[250:])
    return path


def write_config(tmp_path, npz, overrides=None):
    path = tmp_path / "config.toml"
    Config.from_dict(tiny_config(npz, overrides)).save(path)
    return path


def test_train_evaluate_sample_end_to_end(tmp_path, image_npz, capsys):
    config = write_config(tmp_path, image_npz, {"guide.flow": "planar"})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--set", "guide.num_flows=3", "--quiet"]) == 0
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["guide"] == "planar" and metrics["num_flows"] == 3 and metrics["epochs"] == 2
    assert metrics["test_log_px"] >= metrics["test_elbo"]  # the IW bound with the ELBO's own samples
    assert metrics["test_log_px"] < 0 and len(metrics["kl_per_dim"]) == 2
    assert "guide.num_flows" not in capsys.readouterr().err

    health = metrics["flow_health"]  # the flow-health record: 3 planar layers, the gap beside them
    assert [layer["layer"] for layer in health["layers"]] == [1, 2, 3] and (run / "flow_health.png").is_file()
    assert health["gap"] == pytest.approx(metrics["test_log_px"] - metrics["test_elbo"])
    capsys.readouterr()
    trained = (run / "metrics.json").read_bytes()
    assert main(["evaluate", str(run), "--iw-samples", "50", "--quiet"]) == 0
    assert (run / "metrics.json").read_bytes() == trained  # the figures of training are kept
    rescored = json.loads((run / "evaluate_eval.iw_samples=50.json").read_text())
    assert rescored["iw_samples"] == 50 and rescored["overrides"] == {"eval.iw_samples": 50}
    assert rescored["same_data_as_training"] is True
    printed = capsys.readouterr().out
    assert "wrote " + str(run / "evaluate_eval.iw_samples=50.json") in printed
    assert "flow health (planar" in printed and "saturated units (slope < 0.05)" in printed
    assert main(["sample", str(run), "--num", "9", "--out", str(tmp_path / "s.png")]) == 0
    png = (tmp_path / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    h, w = metrics_image_shape(run)
    assert (width, height) == (3 * (w + 2) + 2, 3 * (h + 2) + 2)  # 9 images: a 3 x 3 grid, 2-pixel padding


def metrics_image_shape(run):
    """(height, width) of the run's images, from its checkpoint."""
    from pyro_flowvae.infer.checkpoint import load_checkpoint

    return tuple(load_checkpoint(run / "checkpoint.pt")["image_shape"][-2:])


def test_compare_trains_each_guide_and_prints_one_table(tmp_path, image_npz, capsys):
    config = write_config(tmp_path, image_npz, {"train.epochs": 1})
    assert main(["compare", str(config), "--guides", "mean_field,iaf", "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| mean_field |" in table and "| iaf |" in table
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["guide"] for r in rows] == ["mean_field", "iaf"]
    assert (tmp_path / "cmp" / "iaf" / "metrics.json").is_file()


def bad_npz(tmp_path, name, values):
    path = tmp_path / f"{name}.npz"
    np.savez(path, train=values, valid=values, test=values)
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("unknown_flow", r"unknown flow 'planr'; choose guide\.flow from: householder, iaf, mean_field"),
        ("bad_range", r"guide\.num_flows = -1 is out of range"),
        ("unknown_key", r"unknown key guide\.'num_flow' .*did you mean guide\.num_flows\?"),
        ("grey_under_bernoulli", r"bernoulli.*\{0, 1\}.*data\.binarize.*continuous_bernoulli"),
        ("nan_data", r"NaN"),
        ("missing_root", r"MNIST.*(data\.download|copy)"),
        ("existing_run", r"already holds a run"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_loses_nothing(tmp_path, tiny_npz, case, match, capsys):
    overrides = {
        "unknown_flow": ["guide.flow=planr"],
        "bad_range": ["guide.num_flows=-1"],
        "unknown_key": ["guide.num_flow=3"],
        "grey_under_bernoulli": [
            f"data.path={bad_npz(tmp_path, 'grey', np.full((40, 6), 0.5, np.float32))}",
            "data.binarize=none",
        ],
        "nan_data": [f"data.path={bad_npz(tmp_path, 'nan', np.full((40, 6), np.nan, np.float32))}"],
        "missing_root": ["data.name=mnist", f"data.root={tmp_path / 'nowhere'}"],
        "existing_run": [],
    }[case]
    config = write_config(tmp_path, tiny_npz)
    run = tmp_path / "run"
    if case == "existing_run":
        assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
        before = (run / "checkpoint.pt").read_bytes()
    code = main(["train", str(config), "--out", str(run), "--quiet", *sum([["--set", o] for o in overrides], [])])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-flowvae train: error:")

    assert re.search(match, err, flags=re.S), err
    if case == "existing_run":
        assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_mismatch_names_keys_through_the_cli(tmp_path, tiny_npz, capsys):
    config = write_config(tmp_path, tiny_npz, {"train.epochs": 1})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    code = main(
        [
            "train",
            str(config),
            "--out",
            str(run),
            "--resume",
            "--quiet",
            "--set",
            "model.latent_dim=3",
            "--set",
            "train.epochs=2",
        ]
    )
    assert code == 2
    assert "model.latent_dim: checkpoint has 2, config has 3" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("pyro-flowvae") is None, reason="package not installed (pip install -e .)")
def test_console_script_is_installed_and_answers():
    out = subprocess.run(["pyro-flowvae", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "evaluate", "sample", "compare", "config"):
        assert command in out


def test_module_entry_point_and_help_answer():
    out = subprocess.run(
        [sys.executable, "-m", "pyro_flowvae", "train", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert "--resume" in out and "--set KEY=VALUE" in out
    listing = subprocess.run(
        [sys.executable, "-m", "pyro_flowvae", "config"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "guide.flow (str, default 'mean_field')" in listing


def test_compare_guide_specs_set_layers_and_fail_before_training(tmp_path, image_npz, capsys):
    from pyro_flowvae.runs import as_config, parse_guide_specs

    base = as_config(tiny_config(image_npz, {"guide.num_flows": 0}))
    configs = parse_guide_specs(["mean_field", "planar:5", "iaf"], base)
    assert [(c.guide.flow, c.guide.num_flows) for c in configs] == [("mean_field", 0), ("planar", 5), ("iaf", 4)]
    config = write_config(tmp_path, image_npz)
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--guides", "mean_field,planr", "--out", str(out), "--quiet"]) == 2
    assert "unknown guide 'planr' in --guides" in capsys.readouterr().err
    assert not out.exists()  # nothing was trained before the bad entry was found


def test_evaluating_on_data_of_another_dimension_names_both(tmp_path, image_npz, tiny_npz, capsys):
    config = write_config(tmp_path, image_npz, {"train.epochs": 1})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--set", f"data.path={tiny_npz}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data_dim: checkpoint has 20, the data have 12" in err, err
    assert "score the run on data of the shape it was trained on" in err, err


def test_gaussian_likelihood_on_real_valued_user_data(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 2)) @ rng.normal(size=(2, 8)) + 0.1 * rng.normal(size=(300, 8))).astype(np.float32)
    path = tmp_path / "real.npy"
    np.save(path, x)
    config = tiny_config(path, {"data.binarize": "none", "model.likelihood": "gaussian", "train.epochs": 3})
    config_path = tmp_path / "c.toml"
    Config.from_dict(config).save(config_path)
    run = tmp_path / "run"
    assert main(["train", str(config_path), "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_train"] == 240 and metrics["test_log_px"] >= metrics["test_elbo"]
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert history[-1]["valid_elbo"] > history[0]["valid_elbo"]
    assert not (run / "samples.png").exists()  # no image shape for (N, 8) arrays: no image grids


def test_ctrl_c_says_only_what_is_there(tmp_path, image_npz, capsys, monkeypatch):
    """Interrupted in the first epoch: no checkpoint exists, and the message must not promise one."""
    from pyro_flowvae import runs

    config = write_config(tmp_path, image_npz, {"train.epochs": 1})
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runs, "train", interrupted)
        assert main(["train", str(config), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "holds no checkpoint; start the run again" in err and "intact" not in err
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0  # one finished epoch
    capsys.readouterr()
    monkeypatch.setattr(runs, "train", interrupted)
    assert main(["train", str(out / "config.toml"), "--out", str(out), "--resume", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint.pt'}, is intact: continue with pyro-flowvae train" in err and "--resume" in err


@pytest.mark.parametrize(
    ("guides", "message"),
    [
        ("", r"--guides names no guide; give at least one"),
        ("planar:3,iaf,planar:3", r"'planar:3' and 'planar:3' are the same guide"),
    ],
)
def test_compare_refuses_an_empty_or_repeated_guide_list(tmp_path, image_npz, capsys, guides, message):
    config = write_config(tmp_path, image_npz)
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--guides", guides, "--out", str(out), "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
