"""Data-parallel training with DDP: two gloo processes of the one training loop against one process stepping on
the global batch, for an image VAE and for a GP-VAE.

The two ranks are separate processes given torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), running :func:`worker` below; the reference runs in the test process. Each rank writes what it
saw to ``out/rank<r>.pt`` and its output to ``out/rank<r>.log``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import time
import warnings
from pathlib import Path

import pyro
import pytest
import torch

from pyro_flowvae import runs
from pyro_flowvae.data.batching import batch_args
from pyro_flowvae.errors import CheckpointError, ConfigError
from pyro_flowvae.evaluation.importance import estimate_log_likelihood
from pyro_flowvae.infer import distributed as D
from pyro_flowvae.infer import trainer as T
from pyro_flowvae.infer.annealing import ScaleLatents, kl_weight
from pyro_flowvae.infer.checkpoint import load_checkpoint
from pyro_flowvae.infer.optim import build_optimizer
from pyro_flowvae.infer.svi import build_elbo
from pyro_flowvae.models.nets import Decoder
from pyro_flowvae.models.vae import FlowVAE
from tests.conftest import make_binary_npz, tiny_config

WORLD = 2
#: the process group's timeout in the failure tests: a stalled rank must be given up on after this long
SHORT_TIMEOUT_S = 4.0
LAUNCH_TIMEOUT_S = 90


def sgd(params, train, flow_params=()):
    """Plain SGD: its update is linear in the gradient, so a wrongly scaled all-reduce shows (Adam would hide it);
    the flow's parameters at train.lr * train.flow_lr_scale, as build_optimizer has them."""
    flow_ids = {id(p) for p in flow_params}
    groups = [
        {"params": [p for p in params if id(p) not in flow_ids]},
        {"params": [p for p in params if id(p) in flow_ids], "lr": train.lr * train.flow_lr_scale},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=train.lr)


def configs(npz: Path) -> dict[str, dict]:
    base = {"guide.flow": "iaf", "train.kl_warmup_epochs": 1.0, "train.log_every": 2}
    return {
        "sgd": tiny_config(npz, {**base, "train.lr": 0.05, "train.clip_norm": 0.5}),  # clipping active in places
        "adam": tiny_config(npz, base),
        # JitTrace_ELBO after one epoch of warm-up on Trace_ELBO: DDP's hooks fire through torch.jit graphs too
        "jit": tiny_config(npz, {**base, "guide.flow": "planar", "train.elbo": "jit", "train.lr": 0.05}),
        # a GP-VAE with a banded guide on the airline windows (x, mask, times batches), a cosine schedule
        "gp": {
            "data": {"name": "airline", "options": {"window": 24, "horizon": 6, "stride": 2}},
            "model": {"latent_dim": 2, "hidden": [8], "likelihood": "gaussian", "prior": "gp"},
            "gp": {"kernel": "periodic + linear", "lengthscale": [0.6], "jitter": 0.05},
            "guide": {"covariance": "banded"},
            "train": {
                "epochs": 3,
                "batch_size": 16,
                "lr": 3e-3,
                "lr_schedule": "cosine",
                "log_every": 2,
                "kl_warmup_epochs": 1.0,
                "progress": False,
                "device": "cpu",
            },
            "eval": {"iw_samples": 10, "impute_samples": 10},
        },  # fmt: skip
    }


def fit(config, data, run_dir=None, info=None, resume=False):
    return runs.fit_model(runs.as_config(config), data, run_dir, info, resume=resume)


# ----------------------------------------------------------------------------------------------------------
# the rank processes


def worker(scenario: str, out: str) -> None:
    """Run one rank of ``scenario``; torchrun's variables are in the environment."""
    torch.set_num_threads(1)
    out_dir = Path(out)
    rank = int(os.environ["RANK"])
    timeout = SHORT_TIMEOUT_S if scenario in ("die", "stall") else 60.0
    info = D.init_distributed("gloo", timeout_s=timeout)
    npz = out_dir / "tiny.npz"
    cfg = {name: runs.as_config(c) for name, c in configs(npz).items()}
    data = runs.load_run_data(cfg["adam"])
    gp_data = runs.load_run_data(cfg["gp"])

    def run_dir(name: str) -> Path:
        # rank 0 gets the run directory; rank 1 a read-only one of its own, which must stay empty
        path = out_dir / (name if rank == 0 else f"{name}_rank{rank}")
        path.mkdir(exist_ok=True)
        if rank:
            path.chmod(0o500)
        return path

    result: dict = {"rank": rank}
    if scenario == "train":
        original = T.build_optimizer
        T.build_optimizer = sgd
        try:
            sgd_run = fit(cfg["sgd"], data, run_dir("sgd"), info)
            jit_run = fit(cfg["jit"], data, None, info)
        finally:
            T.build_optimizer = original
        straight = fit(cfg["adam"], data, run_dir("straight"), info)
        part = cfg["adam"].with_overrides({"train.epochs": 1})
        fit(part, data, run_dir("resumed"), info)
        resumed = fit(cfg["adam"], data, run_dir("resumed"), info, resume=True)
        gp_straight = fit(cfg["gp"], gp_data, run_dir("gp"), info)
        fit(cfg["gp"].with_overrides({"train.epochs": 1}), gp_data, run_dir("gp_resumed"), info)
        gp_resumed = fit(cfg["gp"], gp_data, run_dir("gp_resumed"), info, resume=True)
        estimate = D.distributed_log_likelihood(
            straight.vae.model, straight.vae.guide, data.test, num_samples=30, sample_chunk=16, data_chunk=16,
            seed=7, dist_info=info,
        )  # fmt: skip
        few = D.distributed_log_likelihood(  # one chunk for two ranks: rank 1 scores nothing
            straight.vae.model, straight.vae.guide, data.test[:10], num_samples=30, data_chunk=16, seed=7,
            dist_info=info,
        )  # fmt: skip
        wrong = cfg["adam"].with_overrides({"guide.flow": "planar"})
        try:  # rank 0 reads the checkpoint and finds another config: every rank must stop with its message
            fit(wrong, data, run_dir("straight"), info, resume=True)
        except CheckpointError as error:
            result["resume_error"] = str(error)

        def only_on_rank_0() -> None:
            assert rank == 0, "on_main ran its function on another rank"
            raise ConfigError(f"rank {rank} found a problem")

        try:
            D.on_main(only_on_rank_0, info)
        except ConfigError as error:
            result["on_main_error"] = str(error)
        result.update(
            sgd_history=sgd_run.history,
            sgd_best=sgd_run.vae.state_dict(),
            sgd_best_epoch=sgd_run.best_epoch,
            sgd_extra=sgd_run.extra,
            straight_best=straight.vae.state_dict(),
            straight_history=straight.history,
            resumed_best=resumed.vae.state_dict(),
            resumed_history=resumed.history,
            log_px=estimate.log_px,
            elbo=estimate.elbo,
            pareto_k=estimate.pareto_k,
            few_log_px=few.log_px,
            jit_history=jit_run.history,
            jit_best=jit_run.vae.state_dict(),
            jit_best_epoch=jit_run.best_epoch,
            gp_last=gp_straight.vae.state_dict(),
            gp_history=gp_straight.history,
            gp_resumed_last=gp_resumed.vae.state_dict(),
            gp_resumed_history=gp_resumed.history,
        )
    else:  # rank 1 dies (or hangs) at global step 3, in the middle of epoch 1; rank 0 must not wait forever

        def failing_kl_weight(step: int, *args: object) -> float:
            if rank == 1 and step == 3:
                if scenario == "die":
                    os._exit(3)
                time.sleep(10 * LAUNCH_TIMEOUT_S)
            return kl_weight(step, *args)

        T.kl_weight = failing_kl_weight
        start = time.perf_counter()
        try:
            fit(cfg["adam"], data, run_dir("failing"), info)
        except D.DistributedError as error:
            result.update(error=str(error), seconds=time.perf_counter() - start)
    torch.save(result, out_dir / f"rank{rank}.pt")
    D.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(scenario: str, out: str, rank: int, port: int) -> None:
    """The entry point of one rank process: torchrun's environment, output to out/rank<r>.log, then the worker."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    log = os.open(Path(out) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    worker(scenario, out)


def launch(scenario: str, out: Path) -> list[multiprocessing.Process]:
    """Start WORLD rank processes as torchrun would; wait for rank 0, then for the others, killing stragglers.

    The processes fork from a forkserver that has imported torch, Pyro and this package once, so each launch
    costs milliseconds instead of an interpreter start per rank (seconds on this 2-core machine).
    """
    make_binary_npz(out / "tiny.npz")
    port = free_port()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    procs = [context.Process(target=_rank_main, args=(scenario, str(out), r, port)) for r in range(WORLD)]
    for proc in procs:
        proc.start()
    try:
        procs[0].join(LAUNCH_TIMEOUT_S)
        for proc in procs[1:]:
            proc.join(0 if scenario == "stall" else LAUNCH_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()  # only the rank processes this test started
                proc.join()
    return procs


def rank_output(out: Path, rank: int) -> dict:
    path = out / f"rank{rank}.pt"
    if not path.is_file():
        log = (out / f"rank{rank}.log").read_text()
        pytest.fail(f"rank {rank} wrote no result; its output:\n{log[-3000:]}")
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch("train", out)
    return out, [rank_output(out, r) for r in range(WORLD)]


# ----------------------------------------------------------------------------------------------------------
# the single-process reference: one process, the global batch, the ranks' noise


def reference_run(config, data, make_optim, epochs):
    """Parameters after each epoch of a single process stepping on the global batch.

    Global batch t is the union of the ranks' t-th local batches (the same DistributedSampler shards); the
    rows of rank r draw their latent noise with the torch RNG seeded by step_seed(seed, r, t). The loss is the
    plain sum of the ranks' ELBO losses, one backward pass, clip_grad_norm_, one optimizer step: no DDP, no
    scaling. Written without the Trainer, so that it checks it.
    """
    train = config.train
    pyro.clear_param_store()
    pyro.set_rng_seed(train.seed)
    vae = config.task.build_model(config, config.task.meta(data))
    params = list(vae.parameters())
    optim = make_optim(params, train, vae.guide.flow.parameters())
    annealer = ScaleLatents(1.0)
    model, guide = annealer(vae.model), annealer(vae.guide)
    # one ELBO per rank, as each rank has its own (JitTrace_ELBO compiles on its first call, which draws extra
    # noise); Trace_ELBO while the KL weight is below 1 when train.elbo = "jit", as the trainer does
    elbos = [build_elbo(train) for _ in range(WORLD)]
    warm_up_elbo = build_elbo(train, "trace")
    infos = [D.DistInfo(rank=r, world_size=WORLD) for r in range(WORLD)]
    samplers = [D.shard_sampler(data.train.shape[0], info, train.seed) for info in infos]
    local = train.batch_size // WORLD
    steps = -(-samplers[0].num_samples // local)
    warmup = round(train.kl_warmup_epochs * steps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, epochs) if train.lr_schedule == "cosine" else None
    t, states, train_elbos = 0, [], []
    with pyro.validation_enabled(False):
        for epoch in range(1, epochs + 1):
            shards = []
            for sampler in samplers:
                sampler.set_epoch(epoch)
                shards.append(torch.tensor(list(sampler)))
            total, seen = 0.0, 0
            for k in range(steps):
                annealer.scale = beta = kl_weight(t, warmup, train.kl_start)
                loss = 0.0
                for r, shard in enumerate(shards):
                    torch.manual_seed(D.step_seed(train.seed, r, t))
                    rows = data.train.index_select(0, shard[k * local : (k + 1) * local])
                    elbo = warm_up_elbo if train.elbo == "jit" and beta < 1.0 else elbos[r]
                    loss = loss + elbo.differentiable_loss(model, guide, *batch_args(rows))
                    seen += rows.shape[0]
                loss.backward()
                if train.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.clip_norm)
                optim.step()
                optim.zero_grad()
                total += loss.item()
                t += 1
            if schedule is not None:
                schedule.step()
            states.append({k: v.detach().clone() for k, v in vae.state_dict().items()})
            train_elbos.append(-total / seen)
    return states, train_elbos


def untimed(history):
    return [{k: v for k, v in record.items() if k not in ("seconds", "examples_per_s")} for record in history]


def assert_states_close(actual, expected, **tol):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}", **tol)


def assert_states_equal(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


# Float32 sums taken in another order (gloo's all-reduce against one backward pass over both shards) differ
# in the last bits; ten steps keep that far below the 1e-5 tolerance, while a gradient that is off by a
# factor (the average instead of the sum) or noise that is not the ranks' moves the weights by > 1e-3.
TOL = {"rtol": 1e-5, "atol": 1e-6}


# ----------------------------------------------------------------------------------------------------------
# two processes


def test_two_ranks_agree_and_equal_one_process_on_the_global_batch(two_ranks):
    out, (rank0, rank1) = two_ranks
    config = runs.as_config(configs(out / "tiny.npz")["sgd"])
    data = runs.load_run_data(config)
    states, train_elbos = reference_run(config, data, sgd, config.train.epochs)

    last = load_checkpoint(out / "sgd" / "checkpoint.pt")["vae"]  # rank 0's weights after the last step
    assert_states_close(last, states[-1], **TOL)
    assert_states_equal(rank0["sgd_best"], rank1["sgd_best"])  # what each rank returned: the same weights
    assert rank0["sgd_best_epoch"] == rank1["sgd_best_epoch"]
    assert_states_close(rank0["sgd_best"], states[rank0["sgd_best_epoch"] - 1], **TOL)
    # loss trajectory: the ranks' summed losses are the global batch's
    history = rank0["sgd_history"]
    assert history == rank1["sgd_history"]
    assert [r["train_elbo"] for r in history] == pytest.approx(train_elbos, rel=1e-5)
    assert [r["param_spread"] for r in history] == [0.0] * len(history)
    assert rank0["sgd_extra"]["init_param_spread"] == 0.0 and rank0["sgd_extra"]["local_batch_size"] == 16
    # the validation ELBO split over the ranks is what one process computes on the whole split
    vae = FlowVAE.from_config(config, data.data_dim).eval()
    for record, state in zip(history, states):
        vae.load_state_dict(state)
        with pyro.validation_enabled(False):
            valid = D.distributed_elbo(vae, data.valid, 1, config.train.seed, epoch=record["epoch"])
        assert record["valid_elbo"] == pytest.approx(float(valid.mean()), rel=1e-5)


def test_jit_elbo_under_ddp_equals_one_process(two_ranks):
    out, (rank0, rank1) = two_ranks
    config = runs.as_config(configs(out / "tiny.npz")["jit"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
        states, train_elbos = reference_run(config, runs.load_run_data(config), sgd, config.train.epochs)
    assert_states_equal(rank0["jit_best"], rank1["jit_best"])
    assert_states_close(rank0["jit_best"], states[rank0["jit_best_epoch"] - 1], **TOL)
    assert [r["train_elbo"] for r in rank0["jit_history"]] == pytest.approx(train_elbos, rel=1e-5)


def test_adam_run_matches_one_process_and_resumes_under_torchrun(two_ranks):
    out, (rank0, rank1) = two_ranks
    config = runs.as_config(configs(out / "tiny.npz")["adam"])
    states, _ = reference_run(config, runs.load_run_data(config), build_optimizer, config.train.epochs)
    straight = load_checkpoint(out / "straight" / "checkpoint.pt")
    assert_states_close(straight["vae"], states[-1], **TOL)
    assert straight["world_size"] == WORLD and straight["run_state"]["epoch"] == config.train.epochs
    # one epoch, then --resume for the second: the same weights, bit for bit, as the uninterrupted run
    resumed = load_checkpoint(out / "resumed" / "checkpoint.pt")
    assert_states_equal(resumed["vae"], straight["vae"])
    assert untimed(resumed["run_state"]["history"]) == untimed(straight["run_state"]["history"])
    assert resumed["run_state"]["global_step"] == straight["run_state"]["global_step"]
    assert_states_equal(rank1["resumed_best"], rank0["straight_best"])
    assert untimed(rank1["resumed_history"]) == untimed(rank0["straight_history"])
    assert len((out / "resumed" / "log.jsonl").read_text().splitlines()) == config.train.epochs


def test_gpvae_under_ddp_equals_one_process_and_resumes(two_ranks):
    """A sequence model (x, mask, times batches, banded guide, GP prior, cosine schedule) trains under torchrun
    as one process does on the global batch, and --resume continues it bit for bit."""
    out, (rank0, rank1) = two_ranks
    config = runs.as_config(configs(out / "tiny.npz")["gp"])
    states, train_elbos = reference_run(config, runs.load_run_data(config), build_optimizer, config.train.epochs)
    assert_states_equal(rank0["gp_last"], rank1["gp_last"])
    last = load_checkpoint(out / "gp" / "checkpoint.pt")
    assert_states_close(last["vae"], states[-1], **TOL)
    assert [r["train_elbo"] for r in rank0["gp_history"]] == pytest.approx(train_elbos, rel=1e-5)
    assert [r["lr"] for r in rank0["gp_history"]][-1] < config.train.lr  # the cosine schedule decayed it
    assert_states_equal(load_checkpoint(out / "gp_resumed" / "checkpoint.pt")["vae"], last["vae"])
    assert untimed(rank1["gp_resumed_history"]) == untimed(rank0["gp_history"])


def test_an_error_on_rank_0_stops_every_rank_with_its_message(two_ranks):
    _, ranks = two_ranks
    for rank in ranks:
        assert rank["on_main_error"] == "rank 0 found a problem"
        assert "guide.flow: checkpoint has 'iaf', config has 'planar'" in rank["resume_error"]


def test_only_rank_0_writes_files(two_ranks):
    out, _ = two_ranks
    for name in ("sgd", "straight", "resumed", "gp"):
        assert {p.name for p in (out / name).iterdir()} == {"checkpoint.pt", "best.pt", "log.jsonl"}
        assert list((out / f"{name}_rank1").iterdir()) == []  # read-only for rank 1: any write would have failed


def test_distributed_log_likelihood_equals_one_process_on_the_same_chunks(two_ranks):
    out, (rank0, rank1) = two_ranks
    config = runs.as_config(configs(out / "tiny.npz")["adam"])
    test = runs.load_run_data(config).test  # 40 rows: chunks of 16, 16 and 8, the first on rank 0
    vae = FlowVAE.from_config(config, test.shape[1])
    vae.load_state_dict(rank0["straight_best"])
    vae.eval()
    # the same estimator run chunk by chunk in this process, each chunk seeded as the ranks seed it
    expected = []
    for index, start in enumerate(range(0, 40, 16)):
        torch.manual_seed(D.step_seed(7, index, 0, "eval"))
        expected.append(
            estimate_log_likelihood(vae.model, vae.guide, test[start : start + 16], num_samples=30, sample_chunk=16)
        )
    for rank in (rank0, rank1):  # every rank holds every row
        torch.testing.assert_close(rank["log_px"], torch.cat([e.log_px for e in expected]), **TOL)
        torch.testing.assert_close(rank["elbo"], torch.cat([e.elbo for e in expected]), **TOL)
        torch.testing.assert_close(rank["pareto_k"], torch.cat([e.pareto_k for e in expected]), rtol=1e-4, atol=1e-4)
    single = D.distributed_log_likelihood(
        vae.model, vae.guide, test, num_samples=30, sample_chunk=16, data_chunk=16, seed=7
    )  # one process, no process group
    torch.testing.assert_close(single.log_px, rank0["log_px"], **TOL)
    few = D.distributed_log_likelihood(vae.model, vae.guide, test[:10], num_samples=30, data_chunk=16, seed=7)
    torch.testing.assert_close(rank1["few_log_px"], few.log_px, **TOL)  # rank 1 had no rows to score
    assert (rank0["log_px"] >= rank0["elbo"]).all()


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_lost_rank_fails_the_job_within_the_timeout(tmp_path, how):
    procs = launch(how, tmp_path)
    result = rank_output(tmp_path, 0)
    assert procs[0].exitcode == 0  # rank 0 caught the DistributedError and reported it
    if how == "die":
        assert procs[1].exitcode == 3
    assert result["seconds"] < SHORT_TIMEOUT_S + 10
    assert "rank 0 of 2 lost contact with the other ranks during a training step" in result["error"]
    assert "at epoch 1, step 4" in result["error"]
    assert f"distributed.timeout_s = {SHORT_TIMEOUT_S:g} s" in result["error"]
    assert result["error"].endswith(
        "No epoch had finished, so there is no checkpoint; restart the job once every rank can run"
    )  # noqa: E501
    if how == "stall":
        assert "timed out" in result["error"].lower()
    assert not (tmp_path / "failing" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------------------
# one process


def test_one_rank_under_ddp_equals_the_plain_single_process_path(tiny_npz, monkeypatch):
    """torchrun --nproc_per_node=1: DDP over a process group of one changes nothing."""
    config = runs.as_config(tiny_config(tiny_npz, {"guide.flow": "planar", "train.epochs": 1}))
    data = runs.load_run_data(config)
    plain = fit(config, data)
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    info = D.init_distributed("auto", timeout_s=30, device="cpu")
    try:
        assert (info.backend, info.world_size, info.is_main, info.device.type) == ("gloo", 1, True, "cpu")
        ddp = fit(config, data, None, info)
        assert D.parameter_spread(ddp.vae, info) == 0.0
    finally:
        D.cleanup()
    assert_states_equal(ddp.vae.state_dict(), plain.vae.state_dict())
    assert [r["train_elbo"] for r in ddp.history] == [r["train_elbo"] for r in plain.history]


def test_a_pyro_param_outside_the_modules_is_refused_at_the_first_step(tiny_npz, monkeypatch):
    """torch.optim trains the modules' parameters: a stray pyro.param would never move (and would escape DDP)."""
    config = runs.as_config(tiny_config(tiny_npz, {"train.epochs": 1}))
    original = Decoder.forward
    stray = lambda self, z: original(self, z) + pyro.param("stray", torch.zeros(()))  # noqa: E731
    monkeypatch.setattr(Decoder, "forward", stray)
    with pytest.raises(ConfigError, match=r"Pyro parameters outside its nn\.Modules \(stray\).*nn\.Parameter"):
        fit(config, runs.load_run_data(config))


def test_without_torchrun_init_is_a_single_process_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend, info.is_main, info.distributed) == (0, 1, None, True, False)
    assert D.torchrun_world_size() is None
    assert D.parameter_spread(torch.nn.Linear(2, 2), info) == 0.0


def test_launch_errors_name_the_fix(monkeypatch, tiny_npz):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match=r"MASTER_ADDR, MASTER_PORT are not; launch with torchrun"):
        D.init_distributed()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"'nccl' needs CUDA devices.*use distributed.backend = 'gloo'"):
            D.init_distributed(backend="nccl")
    with pytest.raises(ConfigError, match=r"distributed.backend = 'mpi' is not valid; choose one of: auto, gloo"):
        D.init_distributed(backend="mpi")
    with pytest.raises(ConfigError, match=r"timeout_s = 0 must be a number of seconds > 0"):
        D.init_distributed(timeout_s=0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE='two' is not an integer"):
        D.init_distributed()

    config = runs.as_config(tiny_config(tiny_npz, {"train.batch_size": 30}))
    data = runs.load_run_data(config)
    four = D.DistInfo(rank=0, world_size=4, backend="gloo")
    uneven = r"batch_size = 30 is the global batch and must split evenly over the 4 ranks; .* multiple of 4, e\.g\. 32$"
    with pytest.raises(ConfigError, match=uneven):
        fit(config, data, None, four)


def test_the_seeded_chunked_evaluation_has_the_figures_of_plain_importance_sampling(tiny_npz):
    """evaluate() seeds each chunk (so ranks can share the work); the estimator is the plain one all the same."""
    from pyro_flowvae.evaluation.images import evaluate

    overrides = {"train.epochs": 1, "eval.iw_samples": 1000, "eval.sample_chunk": 500}
    config = runs.as_config(tiny_config(tiny_npz, overrides))
    data = runs.load_run_data(config)
    vae = fit(config, data).vae.eval()
    ours = evaluate(vae, data.test, config.eval, seed=3)
    with pyro.validation_enabled(False):
        plain = estimate_log_likelihood(vae.model, vae.guide, data.test, num_samples=1000, sample_chunk=500).summary()
    # other random draws of the same estimators: the Monte Carlo error of a mean over 40 rows of K = 1000
    # draws is about 0.005 nats here, the spread of the rows (the *_stderr) about 0.07
    assert math.isclose(ours["test_log_px"], plain["log_px"], abs_tol=0.03)
    assert math.isclose(ours["test_elbo"], plain["elbo"], abs_tol=0.03)
    assert ours["num_test"] == 40 and evaluate(vae, data.test, config.eval, seed=3) == ours  # seeded: repeatable
