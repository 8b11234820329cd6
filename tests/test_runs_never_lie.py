"""Runs that never lie: divergence, resume, compare and evaluate as a user lives with them, through the CLI.

Each test drives one class of failure the way a user meets it and asserts the message (the problem and the fix),
the exit code, and that nothing already on disk was lost.
"""

from __future__ import annotations

import errno
import json
import re

import numpy as np
import pytest
import torch

from pyro_flowvae.cli import main
from pyro_flowvae.config import Config
from tests.conftest import REPO, make_binary_npz, tiny_config


def write_config(tmp_path, npz, overrides=None, name="config.toml"):
    path = tmp_path / name
    Config.from_dict(tiny_config(npz, overrides)).save(path)
    return path


def train(config, out, *extra):
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def no_traceback(err):
    assert "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------- divergence


def test_a_finite_divergence_stops_the_run_and_exits_non_zero(tmp_path, tiny_npz, capsys):
    """lr = 1e6 sends the ELBO to about -1e28, finite: the run must stop, write no checkpoint and not report a
    test ELBO (it used to exit 0 with test_elbo = -2.7e36)."""
    config = write_config(tmp_path, tiny_npz, {"train.epochs": 3})
    out = tmp_path / "run"
    assert train(config, out, *sets("train.lr=1e6")) == 2
    err = no_traceback(capsys.readouterr().err)
    assert re.search(r"the validation ELBO became -?[0-9.e+]+ after epoch 1, below .*train\.divergence_factor", err)
    assert "no epoch had ended before the divergence, so there is no checkpoint" in err and "smaller train.lr" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]


def test_a_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path, tiny_npz, capsys):
    """Two good epochs, then resumed at lr = 1e6: the run stops, checkpoint.pt and best.pt stay those of epoch 2
    (finite), and the resume that caused it is refused nothing (train.lr may change on resume)."""
    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "run"
    assert train(config, out) == 0
    kept = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "best.pt", "metrics.json")}
    capsys.readouterr()
    assert train(out / "config.toml", out, "--resume", *sets("train.epochs=6", "train.lr=1e6")) == 2
    err = no_traceback(capsys.readouterr().err)
    assert "after epoch 3" in err and f"{out / 'checkpoint.pt'}, is intact" in err
    assert {name: (out / name).read_bytes() for name in kept} == kept
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["run_state"]["epoch"] == 2
    assert all(np.isfinite(r["valid_elbo"]) for r in state["run_state"]["history"])


def test_early_stopping_is_announced(tmp_path, tiny_npz, capsys):
    config = write_config(tmp_path, tiny_npz, {"train.epochs": 40, "train.patience": 1, "train.lr": 1e-7})
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs"] < 40
    err = capsys.readouterr().err
    assert re.search(
        rf"early stopping after epoch {metrics['epochs']} of train\.epochs = 40: no better validation ELBO for "
        r"train\.patience = 1 epochs .* at epoch \d+, is the one scored",
        err,
    )


# -------------------------------------------------------------------------------------------------------------- resume


def test_resume_refuses_other_data_of_the_same_shape(tmp_path, capsys):
    npz = make_binary_npz(tmp_path / "data.npz")
    config = write_config(tmp_path, npz)
    out = tmp_path / "run"
    assert train(config, out) == 0
    make_binary_npz(npz, seed=1)  # regenerated: the same width, other rows
    capsys.readouterr()
    assert train(out / "config.toml", out, "--resume", *sets("train.epochs=3")) == 2
    err = no_traceback(capsys.readouterr().err)
    assert "was trained on data of other content (the same shape)" in err and "data_fingerprint" in err
    make_binary_npz(npz, dim=14)  # another width
    assert train(out / "config.toml", out, "--resume", *sets("train.epochs=3")) == 2
    err = capsys.readouterr().err
    assert "data_dim: checkpoint has 12, the data have 14" in err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2  # nothing was overwritten


def test_a_run_directory_works_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """A relative data.path is stored resolved; moving the data elsewhere (same content) is no config difference."""
    work = tmp_path / "work"
    work.mkdir()
    make_binary_npz(work / "data.npz")
    config = write_config(work, "data.npz")
    monkeypatch.chdir(work)
    assert train("config.toml", "run") == 0
    assert Config.from_file(work / "run" / "config.toml").data.path == str(work / "data.npz")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "work/run", "--quiet"]) == 0
    assert train("work/run/config.toml", "work/run", "--resume", *sets("train.epochs=3")) == 0
    moved = tmp_path / "moved.npz"
    (work / "data.npz").rename(moved)
    assert train("work/run/config.toml", "work/run", "--resume", *sets("train.epochs=4", f"data.path={moved}")) == 0
    assert json.loads((work / "run" / "metrics.json").read_text())["epochs"] == 4
    assert config.is_file()


def test_resume_allows_eval_keys_and_a_new_lr_with_a_notice(tmp_path, tiny_npz, capsys):
    config = write_config(tmp_path, tiny_npz, {"train.lr_schedule": "step", "train.lr_step_epochs": 1})
    out = tmp_path / "run"
    assert train(config, out) == 0
    before = torch.load(out / "checkpoint.pt", weights_only=False)["optim"]["param_groups"]
    capsys.readouterr()
    overrides = sets("train.epochs=3", "train.lr=0.001", "eval.iw_samples=7", "eval.test_limit=10")
    assert train(out / "config.toml", out, "--resume", *overrides) == 0
    err = capsys.readouterr().err
    assert "notice: resumed with train.lr = 0.001 (the run was trained at 0.01)" in err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [("notice" in r) for r in log] == [False, False, True] and "scaled by 0.1" in log[2]["notice"]
    after = torch.load(out / "checkpoint.pt", weights_only=False)["optim"]["param_groups"]
    # step schedule (gamma 0.5 per epoch): epoch 3 runs at the old lr of epoch 3, times 0.1
    for old, new in zip(before, after):
        assert new["lr"] == pytest.approx(old["lr"] * 0.5 * 0.1) and new["initial_lr"] == pytest.approx(
            old["initial_lr"] * 0.1
        )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iw_samples"] == 7 and metrics["num_test"] == 10
    # keys that shape the model or its training path are still refused, by name
    assert train(out / "config.toml", out, "--resume", *sets("train.epochs=4", "train.batch_size=16")) == 2
    assert "train.batch_size: checkpoint has 32, config has 16" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------- compare


def test_compare_can_be_continued_after_an_interruption(tmp_path, tiny_npz, capsys, monkeypatch):
    from pyro_flowvae.infer.trainer import Trainer

    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "cmp"
    args = ["compare", str(config), "--guides", "mean_field,iaf:1", "--out", str(out), "--quiet"]
    save = Trainer._save

    def save_then_interrupt(self, state, *rest):
        save(self, state, *rest)
        if self.run_dir.name == "iaf_1" and state.epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save", save_then_interrupt)
        assert main(args) == 130
    err = capsys.readouterr().err
    assert "continue with the same command and --resume" in err
    finished = (out / "mean_field" / "checkpoint.pt").read_bytes()
    assert main(args) == 2  # a re-run without --resume is refused, and says how to go on
    assert "pass --resume to continue it" in no_traceback(capsys.readouterr().err)
    assert main([*args, "--resume"]) == 0
    assert (out / "mean_field" / "checkpoint.pt").read_bytes() == finished  # reused, not trained again
    iaf_log = [json.loads(line) for line in (out / "iaf_1" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in iaf_log] == [1, 2]  # resumed after its first epoch
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [(r["guide"], r["num_flows"]) for r in rows] == [("mean_field", 0), ("iaf", 1)]


def test_compare_resume_reuses_a_finished_guide_only_for_the_figures_asked_for(tmp_path, tiny_npz, capsys):
    """A finished guide is reused only when its data and the settings that make its figures are the comparison's:
    other data of the same shape, another eval.* or train.lr are named, not silently reported as the old rows."""
    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "cmp"
    args = ["compare", str(config), "--guides", "mean_field", "--out", str(out), "--quiet"]
    assert main(args) == 0
    finished = (out / "mean_field" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*args, "--resume", *sets("train.progress=false")]) == 0  # a key that changes no figure: reused
    assert (out / "mean_field" / "checkpoint.pt").read_bytes() == finished
    rows = (out / "comparison.json").read_bytes()
    for override, named in [("eval.iw_samples=7", "eval.iw_samples"), ("train.lr=0.0005", "train.lr")]:
        assert main([*args, "--resume", *sets(override)]) == 2
        err = no_traceback(capsys.readouterr().err)
        assert named in err and "pyro-flowvae evaluate" in err
    other = make_binary_npz(tmp_path / "other.npz", seed=3)  # the same width, other images
    assert main([*args, "--resume", *sets(f"data.path={other}")]) == 2
    assert "data_fingerprint" in no_traceback(capsys.readouterr().err)
    assert (out / "comparison.json").read_bytes() == rows  # nothing recorded for the refused comparisons


# ------------------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_keeps_the_training_figures_and_refuses_model_overrides(tmp_path, tiny_npz, capsys):
    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "run"
    assert train(config, out) == 0
    trained = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--quiet", *sets("guide.flow=iaf")]) == 2
    err = no_traceback(capsys.readouterr().err)
    assert "evaluate scores the model a run trained and cannot change it: guide.flow" in err
    assert f"pyro-flowvae train {out / 'config.toml'} --out NEW_RUN --set guide.flow=iaf" in err
    other = make_binary_npz(tmp_path / "other.npz", seed=3)
    assert main(["evaluate", str(out), "--quiet", *sets(f"data.path={other}", "eval.iw_samples=9")]) == 0
    (written,) = out.glob("evaluate_*.json")
    scored = json.loads(written.read_text())
    assert scored["overrides"] == {"data.path": str(other), "eval.iw_samples": 9} and scored["iw_samples"] == 9
    assert scored["same_data_as_training"] is False
    assert f"wrote {written}" in capsys.readouterr().out
    assert (out / "metrics.json").read_bytes() == trained


# ---------------------------------------------------------------------------------------- bad files and OS failures


def _truncated(tmp_path, npz):
    path = tmp_path / "truncated.npz"
    path.write_bytes(npz.read_bytes()[:300])
    return path


def _empty(tmp_path, npz):
    path = tmp_path / "empty.npz"
    np.savez(path, train=np.zeros((0, 12), np.float32), valid=np.zeros((4, 12), np.float32))
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty_hidden", r"model\.hidden = \[\] is empty; give at least one value"),
        ("empty_lengthscale", r"gp\.lengthscale = \[\] is empty"),
        ("empty_array", r"array 'train' has shape \(0, 12\), which holds no values"),
        ("truncated_npz", r"could not read .*truncated\.npz as a \.npy or \.npz file"),
        ("not_utf8", r"is not UTF-8 text \(byte 0: invalid start byte\); TOML files are UTF-8"),
        ("config_is_a_folder", r"config file .* is a folder, not a file"),
        ("out_is_a_file", r"--out .*blocker is a file, not a folder"),
        ("out_under_a_file", r"not a directory \(ENOTDIR\) creating the run directory --out .*blocker/run: a part of"),
        ("unknown_option_key", r"unknown key\(s\) guide\.options\.iaf\.hidden_dim for flow 'iaf' \(did you mean "),
    ],
)
def test_bad_files_and_paths_get_one_message(tmp_path, tiny_npz, capsys, case, match):
    config = write_config(tmp_path, tiny_npz)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file in the way")
    out = tmp_path / "run"
    overrides = {
        "empty_hidden": ["model.hidden=[]"],
        "empty_lengthscale": ["gp.lengthscale=[]"],
        "empty_array": [f"data.path={_empty(tmp_path, tiny_npz)}"],
        "truncated_npz": [f"data.path={_truncated(tmp_path, tiny_npz)}"],
        "unknown_option_key": ["guide.flow=iaf", "guide.options.iaf.hidden_dim=[8]"],
    }.get(case, [])
    if case == "not_utf8":
        config = tmp_path / "latin1.toml"
        config.write_bytes(b"\xff\xfe[data]\n")
    if case == "config_is_a_folder":
        config = tmp_path
    if case == "out_is_a_file":
        out = blocker
    if case == "out_under_a_file":
        out = blocker / "run"
    assert train(config, out, *sets(*overrides)) == 2
    err = no_traceback(capsys.readouterr().err)
    assert err.startswith("pyro-flowvae train: error:") and re.search(match, err), err
    assert blocker.read_text() == "a file in the way"


def test_a_run_directory_without_write_permission_names_the_cause(tmp_path, tiny_npz, capsys, monkeypatch):
    """EACCES creating --out (the tests run as root, who may write anywhere, so the refusal is simulated where the
    run directory is made): one message naming the permission and the fix, exit code 2, no traceback."""
    from pathlib import Path

    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "locked" / "run"
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert train(config, out) == 2
    err = no_traceback(capsys.readouterr().err)
    assert "EACCES" in err and "choose a folder you may write to (--out), or fix its permissions" in err, err
    assert not out.exists()


def test_a_full_disk_while_writing_a_checkpoint_names_the_cause(tmp_path, tiny_npz, capsys, monkeypatch):
    """torch.save reports ENOSPC as a RuntimeError chained to the OSError; the message must name the real cause
    and keep the previous checkpoint."""
    import pyro_flowvae.infer.checkpoint as checkpoint_module

    config = write_config(tmp_path, tiny_npz)
    out = tmp_path / "run"
    assert train(config, out) == 0
    kept = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()

    def full_disk(obj, handle):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed") from error

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    assert train(out / "config.toml", out, "--resume", *sets("train.epochs=3")) == 2
    err = no_traceback(capsys.readouterr().err)
    cause = r"no space left on device \(ENOSPC\) writing \S+(best|checkpoint)\.pt: free space on that disk"
    assert re.search(cause, err), err
    assert (out / "checkpoint.pt").read_bytes() == kept
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_an_unforeseen_error_is_one_message_and_debug_shows_the_traceback(tmp_path, tiny_npz, capsys, monkeypatch):
    from pyro_flowvae import runs

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runs, "train", broken)
    config = write_config(tmp_path, tiny_npz)
    assert train(config, tmp_path / "run") == 1
    err = no_traceback(capsys.readouterr().err)
    assert "unexpected error: ZeroDivisionError: a bug" in err and "with --debug for the traceback" in err
    with pytest.raises(ZeroDivisionError):
        main(["train", str(config), "--out", str(tmp_path / "run"), "--debug"])
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "train", str(config), "--out", str(tmp_path / "run")])


def test_healing_mnist_with_nothing_missing_trains_and_scores(mnist_root, tmp_path, capsys):
    """missing_rate = 0 leaves nothing to impute: the run scores the ELBO and log p(x) and says the missing share
    is 0, instead of failing in evaluation on an internal argument."""
    overrides = sets(
        f"data.root={mnist_root}",
        "data.options.num_train=40",
        "data.options.num_valid=8",
        "data.options.num_test=8",
        "data.options.missing_rate=0",
        "model.latent_dim=2",
        "model.hidden=[16]",
        "train.epochs=1",
        "eval.iw_samples=4",
        "eval.impute_samples=2",
    )
    out = tmp_path / "run"
    config = REPO / "examples" / "configs" / "hmnist_gpvae.toml"
    assert main(["train", str(config), "--out", str(out), "--quiet", *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing_share"] == 0.0 and "test_mse_missing" not in metrics
    assert np.isfinite(metrics["test_log_px"])
    # a bad option is named as the config file writes it
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                str(config),
                "--out",
                str(tmp_path / "r2"),
                "--quiet",
                *overrides,
                "--set",
                "data.options.num_valid=0",
            ]
        )
        == 2
    )
    assert "error: data.options.num_valid must be an integer in [1, " in capsys.readouterr().err
