"""The training loop: resume equals an uninterrupted run, checkpoints are atomic, NaN stops cleanly."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_flowvae import runs
from pyro_flowvae.errors import CheckpointError, ConfigError, FlowVAEError, OutputError, TrainingDivergedError
from pyro_flowvae.infer import checkpoint as checkpoint_module
from pyro_flowvae.infer.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import tiny_config


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("flow", "extra"),
    [("mean_field", {}), ("iaf", {"train.optimizer": "adamax", "train.lr_schedule": "cosine", "train.lr": 5e-3})],
)
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_npz, flow, extra):
    config = tiny_config(tiny_npz, {"guide.flow": flow, "train.epochs": 3, "train.kl_warmup_epochs": 1.5, **extra})
    straight = runs.train(config, tmp_path / "straight")
    first = runs.train(runs.as_config(config, ["train.epochs=1"]), tmp_path / "resumed")
    assert len(first.history) == 1
    resumed = runs.train(config, tmp_path / "resumed", resume=True)
    assert [r["valid_elbo"] for r in resumed.history] == [r["valid_elbo"] for r in straight.history]
    last = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert states_equal(last["vae"], load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["vae"])
    assert last["run_state"]["epoch"] == 3 and len((tmp_path / "resumed" / "log.jsonl").read_text().splitlines()) == 3
    again = runs.train(config, tmp_path / "resumed", resume=True)  # nothing left to train: re-scores only
    assert again.metrics["epochs"] == 3 and math.isfinite(again.metrics["train_examples_per_s"])
    assert again.metrics["test_elbo"] == pytest.approx(resumed.metrics["test_elbo"], abs=1.0)


def test_resume_with_another_config_names_the_differing_keys(tmp_path, tiny_npz):
    runs.train(tiny_config(tiny_npz, {"train.epochs": 1}), tmp_path / "run")
    other = tiny_config(tiny_npz, {"train.epochs": 2, "guide.flow": "planar", "model.latent_dim": 3})
    with pytest.raises(
        CheckpointError,
        match=r"(?s)different config.*guide\.flow: checkpoint has 'mean_field', "
        r"config has 'planar'.*model\.latent_dim: checkpoint has 2, config has 3",
    ):
        runs.train(other, tmp_path / "run", resume=True)
    with pytest.raises(FlowVAEError, match=r"already holds a run .*pass --resume"):
        runs.train(tiny_config(tiny_npz), tmp_path / "run")
    with pytest.raises(FlowVAEError, match=r"holds no checkpoint\.pt to resume from"):
        runs.train(tiny_config(tiny_npz), tmp_path / "empty", resume=True)


def test_nan_loss_mid_training_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path, tiny_npz, monkeypatch):
    from pyro_flowvae.models.nets import Decoder

    original = Decoder.forward
    calls = {"n": 0}
    steps_per_epoch = 5  # 160 training rows / batch 32

    def poisoned(self, z):
        calls["n"] += 1
        out = original(self, z)
        # the untrained model's validation, epoch 1 and its validation, then 2 good steps
        if self.training and calls["n"] > 1 + steps_per_epoch + 1 + 2:
            out = out * float("nan")
        return out

    monkeypatch.setattr(Decoder, "forward", poisoned)
    config = tiny_config(tiny_npz, {"train.epochs": 3, "train.log_every": 2})
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, step 3 .*checkpoint\.pt, is intact"):
        runs.train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["run_state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["vae"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "config": {}})

    def dies_midway(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_midway)
    with pytest.raises(OutputError, match=r"disk full writing .*checkpoint\.pt: .*its previous content is intact"):
        save_checkpoint(path, {"epoch": 2, "config": {}})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_early_stopping_and_kl_warmup_are_recorded(tmp_path, tiny_npz):
    config = tiny_config(
        tiny_npz, {"train.epochs": 30, "train.lr": 1e-9, "train.patience": 2, "train.kl_warmup_epochs": 2.0}
    )
    result = runs.train(config, tmp_path / "run")
    assert result.metrics["stopped_early"] and result.metrics["epochs"] < 30
    weights = [r["kl_weight"] for r in result.history]
    assert weights[0] < weights[1] <= 1.0 and weights[-1] == 1.0
    assert (tmp_path / "run" / "best.pt").is_file()


def test_train_beta_weights_the_latent_terms_and_never_the_reported_elbo(tmp_path, tiny_npz):
    """train.beta = 0.5: the warm-up rises to 0.5 and patience counts from there (the run stops early); the
    training objective is the beta-weighted bound (above the ELBO, the KL being halved), while the validation
    ELBO is the plain one: at lr 1e-9 the weights stay put and it matches the beta = 1 run's."""
    common = {"train.epochs": 30, "train.lr": 1e-9, "train.patience": 2, "train.kl_warmup_epochs": 2.0}
    half = runs.train(tiny_config(tiny_npz, {**common, "train.beta": 0.5}), tmp_path / "half")
    full = runs.train(tiny_config(tiny_npz, common), tmp_path / "full")
    weights = [r["kl_weight"] for r in half.history]
    assert weights[0] < weights[1] <= 0.5 and max(weights) == 0.5 and weights[-1] == 0.5
    assert half.metrics["stopped_early"] and half.metrics["epochs"] < 30
    late = [(h, f) for h, f in zip(half.history, full.history) if h["kl_weight"] == 0.5 and f["kl_weight"] == 1.0]
    assert late and all(h["train_elbo"] > f["train_elbo"] for h, f in late)
    assert [r["valid_elbo"] for r in half.history[:3]] == pytest.approx([r["valid_elbo"] for r in full.history[:3]])
    with pytest.raises(ConfigError, match=r"train\.beta = 0\.5 weights the latent terms"):
        runs.as_config(tiny_config(tiny_npz, {"train.beta": 0.5, "train.annealing": "temperature"}))


@pytest.mark.parametrize(("elbo", "particles"), [("trace", 3), ("mean_field", 2), ("jit", 1)])
def test_every_elbo_trains_through_the_trainer_with_warm_up(tmp_path, tiny_npz, elbo, particles):
    config = tiny_config(
        tiny_npz,
        {"train.elbo": elbo, "train.num_particles": particles, "train.kl_warmup_epochs": 1.0, "train.epochs": 3},
    )
    result = runs.train(config)
    assert result.history[-1]["kl_weight"] == 1.0
    assert result.history[-1]["valid_elbo"] > result.history[0]["valid_elbo"]
    assert result.metrics["test_log_px"] >= result.metrics["test_elbo"]


@pytest.mark.parametrize("restore_best", [True, False])
def test_returned_weights_follow_restore_best_with_or_without_a_run_directory(tmp_path, tiny_npz, restore_best):
    """With a run directory or without, the run returns the best-validation weights (restore_best) or the
    last epoch's; the two ways of running agree."""
    overrides = {"train.epochs": 4, "train.lr": 0.5, "train.clip_norm": None, "train.restore_best": restore_best}
    config = tiny_config(tiny_npz, overrides)
    with_dir = runs.train(config, tmp_path / "run")
    assert with_dir.metrics["best_epoch"] < 4  # so best and last differ, and the test can tell them apart
    pyro.clear_param_store()
    without_dir = runs.train(config, None)
    for key, value in with_dir.vae.state_dict().items():
        assert torch.equal(value, without_dir.vae.state_dict()[key]), key
    kept = torch.load(tmp_path / "run" / ("best.pt" if restore_best else "checkpoint.pt"), weights_only=False)["vae"]
    for key, value in with_dir.vae.state_dict().items():
        assert torch.equal(value, kept[key]), key


def test_a_gpvae_run_resumes_bit_for_bit(tmp_path):
    """The sequence task goes through the same loop: one epoch, then --resume, equals three straight epochs."""
    config = {
        "data": {"name": "airline", "options": {"window": 24, "horizon": 6, "stride": 3}},
        "model": {"latent_dim": 2, "hidden": [8], "likelihood": "gaussian", "prior": "gp"},
        "gp": {"kernel": "periodic + linear", "lengthscale": [0.6], "jitter": 0.05},
        "guide": {"covariance": "banded", "flow": "planar", "num_flows": 1},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "progress": False, "kl_warmup_epochs": 1.0},
        "eval": {"iw_samples": 4, "impute_samples": 8},
    }
    straight = runs.train(config, tmp_path / "straight")
    runs.train(runs.as_config(config, ["train.epochs=1"]), tmp_path / "resumed")
    resumed = runs.train(config, tmp_path / "resumed", resume=True)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in straight.history]
    assert states_equal(
        load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["vae"],
        load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["vae"],
    )
    assert straight.metrics["rmse"] == resumed.metrics["rmse"]  # the evaluation is seeded too


def test_learning_rate_schedules_follow_the_config(tiny_npz):
    step = runs.train(
        tiny_config(
            tiny_npz, {"train.epochs": 3, "train.lr_schedule": "step", "train.lr_step_epochs": 1, "train.lr_gamma": 0.5}
        )
    )
    assert [r["lr"] for r in step.history] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    cosine = runs.train(tiny_config(tiny_npz, {"train.epochs": 4, "train.lr_schedule": "cosine", "train.lr_min": 1e-3}))
    expected = [1e-3 + (1e-2 - 1e-3) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [r["lr"] for r in cosine.history] == pytest.approx(expected)
    constant = runs.train(tiny_config(tiny_npz, {"train.epochs": 2, "train.optimizer": "adamax"}))
    assert [r["lr"] for r in constant.history] == [1e-2, 1e-2]


def test_a_checkpoint_of_the_old_format_is_refused_with_what_to_do(tmp_path, tiny_npz):
    config = tiny_config(tiny_npz, {"train.epochs": 1})
    runs.train(config, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    state["format_version"] = 1
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint format 1, this pyro-flowvae reads format 5.*train it again"):
        runs.train(runs.as_config(config, ["train.epochs=2"]), tmp_path / "run", resume=True)
    # format 3 changed nothing for guides other than the banded GP-VAE guide: read as it is
    state["format_version"] = 3
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    assert len(runs.train(runs.as_config(config, ["train.epochs=2"]), tmp_path / "run", resume=True).history) == 2
    banded = {**state, "config": {**state["config"], "guide": {**state["config"]["guide"], "covariance": "banded"}}}
    torch.save(banded, tmp_path / "banded.pt")
    with pytest.raises(CheckpointError, match=r"format 3, .*format 4 bounds the banded GP-VAE guide's coupling"):
        load_checkpoint(tmp_path / "banded.pt")
    # format 5 changed the Householder and radial flows only: their format 4 weights are refused, others read
    state["format_version"] = 4
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    assert len(runs.train(runs.as_config(config, ["train.epochs=3"]), tmp_path / "run", resume=True).history) == 3
    for flow in ("householder", "radial"):
        for version in (3, 4):
            guide = {**state["config"]["guide"], "flow": flow}
            changed = {**state, "format_version": version, "config": {**state["config"], "guide": guide}}
            torch.save(changed, tmp_path / f"{flow}.pt")
            with pytest.raises(CheckpointError, match=rf"format {version}, .*format 5 moved Householder flows onto z0"):
                load_checkpoint(tmp_path / f"{flow}.pt")


def test_a_checkpoint_written_before_a_key_existed_resumes_with_its_default(tmp_path, tiny_npz):
    """Keys added since a checkpoint was written (train.beta, model.decoder_hidden, ...) default to the behaviour
    of before them, so they are no config difference; a key the checkpoint has and this version lacks is."""
    config = tiny_config(tiny_npz, {"train.epochs": 1})
    runs.train(config, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["config"]["train"]["beta"], state["config"]["train"]["divergence_factor"]
    del state["config"]["model"]["frame_encoder"]
    torch.save(state, path)
    assert len(runs.train(runs.as_config(config, ["train.epochs=2"]), tmp_path / "run", resume=True).history) == 2
    state = torch.load(path, weights_only=False)
    state["config"]["train"]["momentum"] = 0.9  # a key of some other version
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"train\.momentum: checkpoint has 0\.9, config has None"):
        runs.train(runs.as_config(config, ["train.epochs=3"]), tmp_path / "run", resume=True)


def test_resuming_on_data_of_another_width_names_the_difference(tmp_path):
    from tests.conftest import make_binary_npz

    npz = make_binary_npz(tmp_path / "data.npz", dim=12)
    config = tiny_config(npz, {"train.epochs": 1})
    runs.train(config, tmp_path / "run")
    make_binary_npz(npz, dim=10)  # the file at data.path changed under the run
    with pytest.raises(CheckpointError, match=r"another shape:\n  data_dim: checkpoint has 12, the data have 10"):
        runs.train(runs.as_config(config, ["train.epochs=2"]), tmp_path / "run", resume=True)


def test_a_non_finite_validation_elbo_stops_the_run_and_keeps_the_last_finite_checkpoint(
    tmp_path, tiny_npz, monkeypatch
):
    """Training losses can stay finite while the model gives the validation data probability 0: the run stops
    after that epoch, the checkpoint kept is the last finite one, and the CLI exits non-zero."""
    from pyro_flowvae.cli import main
    from pyro_flowvae.models.nets import Decoder

    original = Decoder.forward
    evaluations = {"n": 0}

    def broken_in_the_second_validation(self, z):
        out = original(self, z)
        if not self.training:
            evaluations["n"] += 1
            if evaluations["n"] == 3:  # after the untrained model's and epoch 1's: epoch 2's (one pass, 40 rows)
                return out * float("inf")
        return out

    monkeypatch.setattr(Decoder, "forward", broken_in_the_second_validation)
    config = tiny_config(tiny_npz, {"train.epochs": 3})
    stopped = r"the validation ELBO became (nan|-inf) after epoch 2 .*checkpoint\.pt, is intact"
    with pytest.raises(TrainingDivergedError, match=stopped):
        runs.train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["run_state"]["epoch"] == 1 and math.isfinite(state["run_state"]["history"][-1]["valid_elbo"])
    evaluations["n"] = 1  # the untrained model's validation passes, the first epoch's is broken: no checkpoint
    import tomli_w

    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(config))
    assert main(["train", str(path), "--out", str(tmp_path / "never"), "--quiet"]) == 2
    assert not (tmp_path / "never" / "checkpoint.pt").exists() and not (tmp_path / "never" / "best.pt").exists()


@pytest.mark.parametrize("hold", [True, False])
def test_held_flows_stay_at_their_initialisation_until_the_warm_up_ends(tmp_path, tiny_npz, hold):
    """train.hold_flows: while beta < 1 the flow is bypassed and untrained; it trains once beta = 1."""
    config = tiny_config(
        tiny_npz,
        {"guide.flow": "planar", "train.epochs": 1, "train.kl_warmup_epochs": 1.0, "train.hold_flows": hold},
    )
    pyro.set_rng_seed(0)
    fresh = runs.as_config(config).task.build_model(runs.as_config(config), {"data_dim": 12}).state_dict()
    pyro.set_rng_seed(0)
    warm = runs.train(config, tmp_path / "warm")
    head = "guide.flow.head.weight"
    assert torch.equal(warm.vae.state_dict()[head], fresh[head]) == hold
    longer = runs.train(runs.as_config(config, ["train.epochs=2"]), tmp_path / "warm", resume=True)
    assert not torch.equal(longer.vae.state_dict()[head], fresh[head])
    assert not longer.vae.guide.flow_held


@pytest.mark.parametrize("annealing", ["kl", "temperature"])
def test_iwae_and_both_annealings_train(tmp_path, tiny_npz, annealing):
    config = tiny_config(
        tiny_npz,
        {
            "guide.flow": "iaf",
            "train.elbo": "iwae",
            "train.num_particles": 4,
            "train.annealing": annealing,
            "train.kl_warmup_epochs": 1.0,
            "train.epochs": 6,
        },
    )
    result = runs.train(config)
    assert result.history[-1]["valid_elbo"] > result.history[0]["valid_elbo"] + 0.1
    assert result.metrics["test_log_px"] >= result.metrics["test_elbo"]
