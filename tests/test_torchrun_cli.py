"""The CLI under torchrun: two gloo processes train one run directory that rank 0 writes, and agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tomli_w

from pyro_flowvae import runs
from tests.conftest import REPO, tiny_config


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_and_rank_zero_writes(tmp_path, tiny_npz):
    config_path = tmp_path / "tiny.toml"
    config = tiny_config(tiny_npz, {"train.epochs": 2, "train.device": "cpu"})
    config_path.write_text(tomli_w.dumps(config))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pyro_flowvae", "train", str(config_path), "--out", str(out), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["param_spread"] == 0.0 for r in log)
    assert {p.name for p in out.iterdir()} >= {"config.toml", "checkpoint.pt", "best.pt", "metrics.json"}
    # the same global batch in one process reaches a comparable model (the noise differs per rank)
    single = runs.train(config, tmp_path / "single").metrics
    assert abs(metrics["test_elbo"] - single["test_elbo"]) < 0.1 * abs(single["test_elbo"])


@pytest.mark.slow
def test_torchrun_trains_a_gpvae_on_healing_mnist(tmp_path, mnist_root):
    """A sequence model under torchrun: the shipped GP-VAE config at a small size, two gloo processes, rank 0
    writing the run directory, the ranks' weights equal after every epoch."""
    out = tmp_path / "hmnist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    small = {
        "data.root": str(mnist_root), "data.cache_dir": str(tmp_path / "cache"), "data.options.num_train": 64,
        "data.options.num_valid": 16, "data.options.num_test": 16, "data.options.num_frames": 5,
        "model.latent_dim": 4, "model.hidden": "[32]", "train.epochs": 2, "train.batch_size": 16,
        "train.device": "cpu", "eval.iw_samples": 4, "eval.impute_samples": 4,
    }  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pyro_flowvae", "train", "examples/configs/hmnist_gpvae.toml", "--out", str(out), "--quiet",
        *(arg for key, value in small.items() for arg in ("--set", f"{key}={value}")),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["data"] == "healing_mnist" and metrics["prior"] == "gp"
    assert metrics["test_mse_missing"] < 1.5 * metrics["baselines"]["mean_imputation"]["mse"]  # a model, not noise
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["param_spread"] == 0.0 for r in log)
    assert log[-1]["valid_elbo"] > log[0]["valid_elbo"]
    assert (out / "imputations.png").is_file()
