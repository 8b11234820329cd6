"""Data-parallel SVI under torchrun: PyTorch DistributedDataParallel, sharded data, split evaluation."""

from __future__ import annotations

import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from pyro_flowvae.config import Config, EvalConfig
from pyro_flowvae.data import DataSplits, check_data
from pyro_flowvae.errors import ConfigError, FlowVAEError, TrainingDivergedError
from pyro_flowvae.infer.annealing import ScaleLatents, kl_weight
from pyro_flowvae.infer.checkpoint import load_checkpoint
from pyro_flowvae.infer.evaluate import importance_figures, latent_statistics, spread_subset
from pyro_flowvae.infer.importance import MIN_PARETO_SAMPLES, ImportanceEstimate, estimate_log_likelihood
from pyro_flowvae.infer.svi import build_elbo, build_optimizer, release_grads
from pyro_flowvae.infer.trainer import (
    BEST,
    CHECKPOINT,
    TrainResult,
    elbo_per_datapoint,
    epoch_record,
    resolve_device,
    write_run_files,
)
from pyro_flowvae.vae import FlowVAE

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "DistributedError",
    "torchrun_world_size",
    "init_distributed",
    "cleanup",
    "on_main",
    "step_seed",
    "shard_sampler",
    "parameter_spread",
    "distributed_elbo",
    "distributed_log_likelihood",
    "distributed_evaluate",
    "DistributedTrainer",
]

T = TypeVar("T")
BACKENDS = ("auto", "gloo", "nccl")
#: seconds a collective may wait for the other ranks before it fails (torch's own default is 10 to 30 minutes)
DEFAULT_TIMEOUT_S = 600.0
#: the random streams of :func:`step_seed`, each seeded independently
STREAMS = {"latent": 0, "binarize": 1, "valid": 2, "eval": 3}
#: rows per seeded chunk of the validation ELBO (as :func:`~pyro_flowvae.infer.trainer.elbo_per_datapoint`)
VALID_CHUNK = 1000

#: buffers (flow masks, permutations) never change: DDP syncs them once, at construction, not every forward
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}  # older torch: buffers equal anyway (same seed), as parameter_spread checks
)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_COMM_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "processgroup", "broken pipe")


class DistributedError(FlowVAEError):
    """A rank lost its peers: another rank died, or a collective waited longer than the process group's timeout."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    ``backend`` is None for a plain single process (no process group: every collective is a no-op);
    under torchrun it is ``"nccl"`` or ``"gloo"``, even for a job of one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.backend is not None

    @property
    def comm_device(self) -> torch.device:
        """Where this module's own collectives run: the GPU under NCCL, the CPU under gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def torchrun_world_size() -> int | None:
    """``WORLD_SIZE`` as torchrun sets it, or None when this process was not launched by torchrun.

    The CLI picks :class:`DistributedTrainer` when this is not None (``torchrun --nproc_per_node=1`` included,
    which runs DDP over one process)."""
    value = os.environ.get("WORLD_SIZE")
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={value!r} is not an integer; launch with torchrun, which sets it") from None
    if size < 1:
        raise ConfigError(f"WORLD_SIZE={size} must be >= 1; launch with torchrun, which sets it")
    return size


def init_distributed(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment, or return a single-process :class:`DistInfo`.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``init_method="env://"``).
    ``backend="auto"`` is NCCL when the training device is CUDA (each process then owns ``cuda:LOCAL_RANK``) and
    gloo on the CPU. ``device`` is ``train.device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    Every collective (gradient all-reduce, gathers, the rendezvous itself) fails after ``timeout_s`` seconds
    without an answer, so a rank that died or hangs makes the others fail instead of waiting forever.
    When ``WORLD_SIZE`` is unset, nothing is initialised: one process, no process group.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.backend = {backend!r} is not valid; choose one of: {', '.join(BACKENDS)}")
    if not (isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) and timeout_s > 0):
        raise ConfigError(f"distributed.timeout_s = {timeout_s!r} must be a number of seconds > 0, e.g. 600")
    world_size = torchrun_world_size()
    if world_size is None:
        return DistInfo(device=resolve_device(device), timeout_s=float(timeout_s))
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ and name != "LOCAL_RANK"]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; launch with "
            "torchrun (torchrun --nproc_per_node=N -m pyro_flowvae train ...), which sets them all"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size}); launch with torchrun")
    on_cuda = resolve_device(device).type == "cuda"
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if backend == "nccl" and not on_cuda:
        raise ConfigError(
            "distributed.backend = 'nccl' needs CUDA devices, but training runs on the CPU here; "
            "use distributed.backend = 'gloo' (or 'auto') on CPUs"
        )
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this machine shows {torch.cuda.device_count()} CUDA device(s); "
                "start at most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
            )
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ConfigError(
                f"a process group of size {dist.get_world_size()} (rank {dist.get_rank()}) is already initialised, "
                f"but the environment says WORLD_SIZE={world_size}, RANK={rank}; call cleanup() first"
            )
        backend = str(dist.get_backend())
    else:
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), init_method="env://")
        except (RuntimeError, dist.DistError) as error:
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise DistributedError(
                f"rank {rank} of {world_size} could not join the process group at {where}: {_first_line(error)}. "
                f"Every rank must start within distributed.timeout_s = {timeout_s:g} s and reach MASTER_ADDR; "
                "check that all ranks were launched (torchrun --nnodes/--rdzv-endpoint on each machine)"
            ) from error
    return DistInfo(rank, world_size, local_rank, target, backend, float(timeout_s))


def cleanup() -> None:
    """Leave the process group, if one was initialised (a no-op otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def step_seed(seed: int, rank: int, step: int, stream: str = "latent") -> int:
    """A 64-bit seed for one draw of one stream, a function of ``(seed, stream, rank, step)`` only.

    Training reseeds the latent noise (``stream="latent"``) and dynamic binarization (``"binarize"``) of each
    rank at each global step, so ranks draw different noise and a resumed run draws exactly what the
    uninterrupted run would have, with no per-rank RNG state to save. Evaluation seeds each data chunk with
    ``rank`` = the chunk's index (``"valid"``, ``"eval"``), so its figures do not depend on the number of ranks.
    Mixed through :class:`numpy.random.SeedSequence`, so nearby seeds give unrelated streams.
    """
    if stream not in STREAMS:
        raise ConfigError(f"unknown random stream {stream!r}; choose one of: {', '.join(STREAMS)}")
    entropy = [int(seed), STREAMS[stream], int(rank), int(step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def shard_sampler(num_examples: int, info: DistInfo, seed: int) -> DistributedSampler:
    """This rank's shard of a shuffled epoch: a :class:`~torch.utils.data.DistributedSampler` over row indices.

    Each epoch (``set_epoch``) shuffles all rows with ``seed + epoch``, drops the last ``num_examples % world_size``
    of the shuffled rows (different rows each epoch) and gives rank r the rows ``r, r + W, r + 2W, ...``; the k-th
    local batch of every rank together form the k-th global batch of one permutation.
    """
    return DistributedSampler(
        range(num_examples), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
    )


# ----------------------------------------------------------------------------------------------------------
# collectives (no-ops without a process group)


def _all_reduce(x: Tensor, info: DistInfo, op: Any = None) -> Tensor:
    if not info.distributed:
        return x
    y = x.to(info.comm_device).clone()
    dist.all_reduce(y, op=op if op is not None else dist.ReduceOp.SUM)
    return y.to(x.device)


def _gather_rows(local: Tensor, counts: list[int], info: DistInfo) -> Tensor:
    """Concatenate every rank's rows in rank order; ``counts[r]`` rows come from rank r (counts known to all).

    The rows travel as float64 (no precision lost) and come back float64 if any rank computed in float64,
    else float32, so that a rank with no rows (fewer chunks than ranks) agrees with the others."""
    if not info.distributed:
        return local
    widest = _all_reduce(torch.tensor([local.element_size() if local.numel() else 0]), info, dist.ReduceOp.MAX)
    dtype = torch.float64 if int(widest) >= 8 else torch.float32
    width = max(max(counts), 1)
    padded = torch.zeros((width, *local.shape[1:]), dtype=torch.float64, device=info.comm_device)
    padded[: local.shape[0]] = local.to(info.comm_device, torch.float64)
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(local.device, dtype)


def _broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0, device=info.comm_device)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T | None:
    """Run ``fn`` on rank 0 only (preparing the run directory, downloading data) while the other ranks wait.

    Returns ``fn()`` on rank 0 and None elsewhere. A :class:`~pyro_flowvae.errors.FlowVAEError` raised by ``fn``
    is raised on every rank, so the job stops with rank 0's message instead of the others waiting for it until
    the timeout. Without a process group it just calls ``fn``.
    """
    if not info.distributed:
        return fn()
    value, error = None, None
    if info.is_main:
        try:
            value = fn()
        except FlowVAEError as raised:
            error = raised
    error = _broadcast_object(error, info)
    if error is not None:
        raise error
    return value


def parameter_spread(module: nn.Module, info: DistInfo) -> float:
    """The largest difference between ranks of any parameter or buffer entry: 0.0 exactly when every rank
    holds the same weights (two all-reduces, max and min, of all of them; 0.0 for a single process)."""
    tensors = [t.detach().reshape(-1).float() for t in (*module.parameters(), *module.buffers())]
    if not info.distributed or not tensors:
        return 0.0
    flat = torch.cat(tensors)
    high = _all_reduce(flat, info, dist.ReduceOp.MAX)
    low = _all_reduce(flat, info, dist.ReduceOp.MIN)
    return float((high - low).max())


def _chunk_ranges(n: int, chunk: int, info: DistInfo) -> tuple[list[tuple[int, int, int]], list[int]]:
    """This rank's chunks ``(index, start, stop)`` of ``n`` rows cut every ``chunk`` rows (the same cut for any
    number of ranks; consecutive chunks per rank), and the number of rows of every rank."""
    num_chunks = -(-n // chunk)
    bounds = [num_chunks * r // info.world_size for r in range(info.world_size + 1)]
    counts = [min(bounds[r + 1] * chunk, n) - min(bounds[r] * chunk, n) for r in range(info.world_size)]
    mine = [(c, c * chunk, min((c + 1) * chunk, n)) for c in range(bounds[info.rank], bounds[info.rank + 1])]
    return mine, counts


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG seeded to ``seed``; the caller's RNG state is restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------------------
# evaluation split across ranks


@torch.no_grad()
def distributed_elbo(
    vae: FlowVAE,
    x: Tensor,
    num_samples: int = 1,
    seed: int = 0,
    dist_info: DistInfo | None = None,
    chunk: int = VALID_CHUNK,
    epoch: int = 0,
) -> Tensor:
    r"""The ELBO of each row of x, :math:`\frac1S\sum_s [\log p(x, z_s) - \log q(z_s \mid x)]`, shape (N,),
    the same on every rank.

    The rows are cut into chunks of ``chunk``; each rank scores its consecutive chunks, chunk c with the torch
    RNG seeded by ``step_seed(seed, c, epoch, "valid")``, and the rows are gathered in order. The result
    therefore does not depend on the number of ranks. Put the networks in ``eval()`` mode first.
    """
    info = dist_info or DistInfo()
    mine, counts = _chunk_ranges(x.shape[0], chunk, info)
    parts = []
    for index, start, stop in mine:
        with _seeded(step_seed(seed, index, epoch, "valid"), x.device):
            parts.append(elbo_per_datapoint(vae, x[start:stop], num_samples=num_samples, batch_size=chunk))
    local = torch.cat(parts) if parts else torch.zeros(0, device=x.device)
    return _gather_rows(local, counts, info)


def distributed_log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    data: Tensor,
    *args: Any,
    num_samples: int,
    sample_chunk: int = 500,
    data_chunk: int = 100,
    pareto_k: bool = True,
    seed: int = 0,
    dist_info: DistInfo | None = None,
    progress: bool = False,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    **kwargs: Any,
) -> ImportanceEstimate:
    r""":func:`~pyro_flowvae.infer.importance.estimate_log_likelihood` with the data split across ranks.

    .. math::

        \log \hat p(x_b) = \log \frac{1}{K} \sum_{k=1}^{K}
            \frac{p(x_b, z_{kb})}{q(z_{kb} \mid x_b)}, \qquad z_{kb} \sim q(z \mid x_b)

    (the IWAE bound of Burda, Grosse & Salakhutdinov, ICLR 2016, arXiv:1509.00519). The rows are cut into
    chunks of ``data_chunk``; each rank scores its consecutive chunks, chunk c with the torch RNG seeded by
    ``step_seed(seed, c, 0, "eval")``, and log p(x), the ELBO and the Pareto-k of every row are gathered in
    order on every rank. The figures are those of a single process running the same chunks with the same
    seeds, whatever the number of ranks; the caller's RNG state is left as it was.
    """
    info = dist_info or DistInfo()
    if not isinstance(data, Tensor) or data.dim() < 1 or data.shape[0] < 1:
        got = f"shape {tuple(data.shape)}" if isinstance(data, Tensor) else type(data).__name__
        raise FlowVAEError(f"data must be a tensor with at least one datapoint along dim 0, got {got}")
    if isinstance(data_chunk, bool) or not isinstance(data_chunk, int) or data_chunk < 1:
        raise FlowVAEError(f"data_chunk must be an integer >= 1, got {data_chunk!r}")
    with_k = pareto_k and num_samples >= MIN_PARETO_SAMPLES
    mine, counts = _chunk_ranges(data.shape[0], data_chunk, info)
    chunks = tqdm(mine, desc="log p(x)", unit="chunk", disable=not (progress and info.is_main))
    log_px, elbo, ks = [], [], []
    for index, start, stop in chunks:
        with _seeded(step_seed(seed, index, 0, "eval"), data.device):
            estimate = estimate_log_likelihood(
                model,
                guide,
                data[start:stop],
                *args,
                num_samples=num_samples,
                sample_chunk=sample_chunk,
                data_chunk=stop - start,
                pareto_k=pareto_k,
                data_plate=data_plate,
                max_plate_nesting=max_plate_nesting,
                **kwargs,
            )
        log_px.append(estimate.log_px)
        elbo.append(estimate.elbo)
        if with_k:
            ks.append(estimate.pareto_k)

    def gather(parts: list[Tensor]) -> Tensor:
        local = torch.cat(parts) if parts else torch.zeros(0, device=data.device)
        return _gather_rows(local, counts, info)

    log_px_t = gather(log_px)
    return ImportanceEstimate(
        log_px=log_px_t,
        elbo=gather(elbo),
        pareto_k=gather(ks).to(log_px_t.dtype) if with_k else None,
        num_samples=num_samples,
    )


def distributed_evaluate(
    vae: FlowVAE,
    x: Tensor,
    config: EvalConfig,
    dist_info: DistInfo | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The figures of :func:`~pyro_flowvae.infer.evaluate.evaluate` (same keys), with the importance sampling
    split across ranks by :func:`distributed_log_likelihood`; every rank returns the same dict. The KL per
    latent dimension and the active units are computed on every rank with the RNG seeded by ``seed`` (they
    cost a small fraction of the importance sampling)."""
    info = dist_info or DistInfo()
    x = x[spread_subset(x.shape[0], config.test_limit).to(x.device)]
    vae.eval()
    with pyro.validation_enabled(False):
        estimate = distributed_log_likelihood(
            vae.model,
            vae.guide,
            x,
            num_samples=config.iw_samples,
            sample_chunk=config.sample_chunk,
            data_chunk=config.data_chunk,
            pareto_k=True,
            seed=seed,
            dist_info=info,
            progress=progress,
        )
        with _seeded(step_seed(seed, 0, 1, "eval"), x.device):
            latent = latent_statistics(vae, x)
    return {**importance_figures(estimate), **latent}


# ----------------------------------------------------------------------------------------------------------
# training


class _DifferentiableLoss(nn.Module):
    """The module DDP wraps: its forward is the ELBO's differentiable loss on the local batch, so the backward
    pass runs through DDP's gradient hooks."""

    def __init__(self, vae: FlowVAE, annealer: ScaleLatents, elbos: dict[str, ELBO]) -> None:
        super().__init__()
        self.vae = vae
        self._model = annealer(vae.model)
        self._guide = annealer(vae.guide)
        self._elbos = elbos

    def forward(self, x: Tensor, elbo: str) -> Tensor:
        return self._elbos[elbo].differentiable_loss(self._model, self._guide, x)


class DistributedTrainer:
    r"""Data-parallel :class:`~pyro_flowvae.infer.trainer.Trainer`: the same config, run by every rank of a
    torchrun job, trained with PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel`.

    - **Parameters** are initialised from ``train.seed`` on every rank (``init_param_spread`` in the result's
      ``extra`` says whether they agreed) and DDP broadcasts rank 0's at the start; ``param_spread`` in every
      epoch record (and ``log.jsonl``) is the largest difference between ranks of any weight, 0.0 when the
      ranks agree exactly, as they must.
    - **Data**: ``train.batch_size`` is the *global* batch B; each of the W ranks takes B / W rows per step
      from its :func:`shard_sampler` shard (B must be a multiple of W). An epoch is
      :math:`\lceil \lfloor N / W \rfloor / (B / W) \rceil` steps.
    - **Gradient**: each rank computes Pyro's differentiable ELBO loss on its rows (a sum over them) and
      back-propagates W times it; DDP all-reduces the gradients, averaging over ranks, so every rank holds

      .. math:: \nabla_\theta \Big(-\sum_{b \in \text{global batch}} \widehat{\mathrm{ELBO}}(x_b)\Big),

      the gradient a single process computes on the global batch (the convention of
      :class:`~pyro_flowvae.infer.trainer.Trainer`). ``train.lr``, ``train.clip_norm`` (per parameter, after the
      all-reduce) and ``train.optimizer`` therefore mean what they mean in a single process with batch B; the
      optimizer is :func:`~pyro_flowvae.infer.svi.build_optimizer`'s, one per rank, kept in step by the identical
      gradients.
    - **Noise**: the latent draws (and dynamic binarization) of rank r at global step t are seeded by
      :func:`step_seed` ``(train.seed, r, t)``: different on every rank, and reproduced exactly on resume.
    - **Validation** (:func:`distributed_elbo`) is split across ranks and gathered; its value does not depend on W.
    - **Files**: only rank 0 writes ``checkpoint.pt``, ``best.pt`` (atomically, the single-process format, plus
      ``world_size``) and ``log.jsonl``; ``on_epoch`` is called on rank 0 only. ``fit(resume=True)``: rank 0 reads
      the checkpoint and broadcasts it, so the run directory need only be visible to rank 0.
    - **Failures**: a NaN loss on any rank stops every rank with :class:`TrainingDivergedError`; a dead or stalled
      rank makes the others fail with :class:`DistributedError` within ``dist_info.timeout_s``.

    Every ``train.elbo`` works, ``"jit"`` included (DDP's gradient hooks fire through the traced graph). With
    ``dist_info.backend`` None (no process group) it trains in one process, with the same noise scheme.

    [1] Shen Li et al. PyTorch Distributed: Experiences on Accelerating Data Parallel Training. VLDB 2020.
    [arXiv:2006.15704]
    """

    def __init__(
        self,
        config: Config,
        data: DataSplits,
        run_dir: str | Path | None = None,
        dist_info: DistInfo | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if getattr(config, "is_sequence", False):
            raise ConfigError(
                f"data-parallel training covers the image VAEs so far, but data.name = {config.data.name!r} builds "
                "a sequence model (GP-VAE); train it in one process (without torchrun)"
            )
        self.config = config
        self.info = dist_info or DistInfo(device=resolve_device(config.train.device))
        self.device = self.info.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_epoch = on_epoch
        world, batch = self.info.world_size, config.train.batch_size
        if batch % world:
            raise ConfigError(
                f"train.batch_size = {batch} is the global batch and must split evenly over the {world} ranks; "
                f"set it to a multiple of {world}, e.g. {-(-batch // world) * world}"
            )
        if data.train.shape[0] < world:
            raise ConfigError(
                f"the training split has {data.train.shape[0]} rows, fewer than the {world} ranks; "
                "use more data or fewer processes (--nproc_per_node)"
            )
        likelihood = config.model.likelihood
        dynamic = data.binarize == "dynamic"
        check_data(data.train, likelihood=likelihood, split="train", binarize_dynamic=dynamic)
        check_data(data.valid, likelihood=likelihood, data_dim=data.data_dim, split="valid")
        check_data(data.test, likelihood=likelihood, data_dim=data.data_dim, split="test")
        self.data = data.to(self.device)
        self.local_batch_size = batch // world
        self._saved = False
        self._where = {"phase": "start-up", "epoch": 0, "step": 0}
        self._outside: list[str] | None = None
        self._vae: nn.Module = nn.Module()

    # ------------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train every rank in lockstep; returns, on every rank, the same :class:`TrainResult`, whose model has
        the best-validation weights (kept in memory, so also without a run directory, unlike the single-process
        Trainer, which restores them from ``best.pt``)."""
        try:
            return self._fit(resume)
        except RuntimeError as error:
            if self.info.distributed and _is_comm_failure(error):
                raise DistributedError(self._comm_message(error)) from error
            raise

    def _fit(self, resume: bool) -> TrainResult:
        cfg, train, info = self.config, self.config.train, self.info
        pyro.clear_param_store()  # pyro.module keeps stale parameters of an earlier model with the same names
        pyro.set_rng_seed(train.seed)  # the same initial weights on every rank
        vae = FlowVAE.from_config(cfg, self.data.data_dim).to(self.device)
        self._vae, self._outside = vae, None
        self._where["phase"] = "the initial check that ranks agree"
        init_spread = parameter_spread(vae, info)
        optim = build_optimizer(train)
        annealer = ScaleLatents(1.0)
        history: list[dict[str, Any]] = []
        start_epoch, best_valid, best_epoch, global_step = 1, -math.inf, 0, 0
        best_state: dict[str, Tensor] | None = None
        patience_left = train.patience

        if resume:
            self._where["phase"] = "loading the checkpoint"
            state, best_vae = self._load_for_resume()
            vae.load_state_dict(state["vae"])
            optim.set_state(state["optim"])
            history = state["history"]
            start_epoch = state["epoch"] + 1
            best_valid, best_epoch, global_step = state["best_valid_elbo"], state["best_epoch"], state["global_step"]
            if state["config"]["train"].get("patience") == train.patience:
                patience_left = state["patience_left"]  # early stopping resumes where it was
            if best_vae is not None:
                best_state = {k: v.to(self.device) for k, v in best_vae.items()}
            self._saved = True

        n_train = self.data.train.shape[0]
        sampler = shard_sampler(n_train, info, train.seed)
        b = self.local_batch_size
        steps_per_epoch = -(-sampler.num_samples // b)
        warmup_steps = round(train.kl_warmup_epochs * steps_per_epoch)
        dynamic = self.data.binarize == "dynamic"
        elbo_names = {train.elbo} | ({"trace"} if train.elbo == "jit" and warmup_steps else set())
        elbos = {name: build_elbo(train, name) for name in elbo_names}
        loss_module: nn.Module = _DifferentiableLoss(vae, annealer, elbos)
        if info.distributed:
            self._where["phase"] = "wrapping the model in DistributedDataParallel"
            loss_module = DistributedDataParallel(
                loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None, **_NO_BUFFER_SYNC
            )
        binarize_gen = torch.Generator(device=self.device) if dynamic else None
        stopped_early = False

        for epoch in range(start_epoch, train.epochs + 1):
            vae.train()
            sampler.set_epoch(epoch)
            shard = torch.as_tensor(list(sampler), dtype=torch.long, device=self.device)
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{train.epochs}",
                disable=None if (train.progress and info.is_main) else True,
                leave=False,
                dynamic_ncols=True,
            )
            pending: list[Tensor] = []
            pending_sizes: list[int] = []
            epoch_loss, epoch_seen, epoch_seconds = 0.0, 0, 0.0
            first_pending_step = 1
            tick = time.perf_counter()
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
                for step in range(1, steps_per_epoch + 1):
                    self._where.update(phase="a training step (gradient all-reduce)", epoch=epoch, step=step)
                    batch = self.data.train.index_select(0, shard[(step - 1) * b : step * b])
                    if binarize_gen is not None:
                        binarize_gen.manual_seed(step_seed(train.seed, info.rank, global_step, "binarize"))
                        batch = torch.bernoulli(batch, generator=binarize_gen)
                    torch.manual_seed(step_seed(train.seed, info.rank, global_step, "latent"))
                    beta = kl_weight(global_step, warmup_steps, train.kl_start)
                    annealer.scale = beta
                    elbo = "trace" if train.elbo == "jit" and beta < 1.0 else train.elbo
                    pending.append(self._step(loss_module, optim, batch, elbo))
                    pending_sizes.append(batch.shape[0] * info.world_size)
                    global_step += 1
                    if len(pending) < train.log_every and step < steps_per_epoch:
                        continue
                    self._where["phase"] = "summing the losses of the ranks"
                    # one host sync and one all-reduce per log interval: the global batches' losses
                    losses = _all_reduce(torch.stack(pending), info).tolist()
                    epoch_seconds += time.perf_counter() - tick
                    for offset, (loss, size) in enumerate(zip(losses, pending_sizes)):
                        if not math.isfinite(loss):
                            bar.close()
                            self._diverged(epoch, first_pending_step + offset, loss, beta)
                        epoch_loss += loss
                        epoch_seen += size
                    bar.update(len(losses))
                    bar.set_postfix(
                        elbo=f"{-epoch_loss / epoch_seen:.2f}",
                        ex_s=f"{epoch_seen / epoch_seconds:.0f}",
                        kl_w=f"{beta:.2f}",
                    )
                    pending, pending_sizes, first_pending_step = [], [], step + 1
                    tick = time.perf_counter()
            bar.close()

            self._where.update(phase="the validation ELBO", step=steps_per_epoch)
            vae.eval()
            with pyro.validation_enabled(False):
                valid = distributed_elbo(vae, self.data.valid, cfg.eval.valid_samples, train.seed, info, epoch=epoch)
            valid_elbo = float(valid.mean())
            # the slowest rank sets the pace: every rank reports its time
            seconds = float(_all_reduce(torch.tensor([epoch_seconds], dtype=torch.float64), info, dist.ReduceOp.MAX))
            self._where["phase"] = "the check that ranks agree"
            spread = parameter_spread(vae, info)
            improved = valid_elbo > best_valid
            if improved:
                best_valid, best_epoch = valid_elbo, epoch
                patience_left = train.patience
                best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            elif patience_left is not None:
                patience_left -= 1
            record = {
                **epoch_record(epoch, global_step, epoch_loss, epoch_seen, seconds, valid_elbo, beta),
                "world_size": info.world_size,
                "param_spread": spread,
            }
            history.append(record)
            if spread != 0.0 and info.is_main:
                warnings.warn(
                    f"after epoch {epoch} the ranks' weights differ by up to {spread:.3g}; DDP keeps them equal "
                    "only if every rank runs the same code on the same kind of device",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._where["phase"] = "rank 0 writing the checkpoint"
            self._save(vae, optim, history, epoch, best_valid, best_epoch, global_step, improved, patience_left)
            if self.on_epoch is not None and info.is_main:
                self.on_epoch(record)
            if patience_left is not None and patience_left <= 0:
                stopped_early = True
                break

        if best_state is not None and self.config.train.restore_best:
            vae.load_state_dict(best_state)
        return TrainResult(
            vae=vae,
            history=history,
            best_epoch=best_epoch,
            best_valid_elbo=best_valid,
            examples_per_s=sum(r["examples"] for r in history) / max(sum(r["seconds"] for r in history), 1e-9),
            stopped_early=stopped_early,
            device=str(self.device),
            extra={
                "world_size": info.world_size,
                "rank": info.rank,
                "backend": info.backend,
                "local_batch_size": self.local_batch_size,
                "init_param_spread": init_spread,
            },
        )

    def _step(self, loss_module: nn.Module, optim: pyro.optim.PyroOptim, batch: Tensor, elbo: str) -> Tensor:
        """One SVI step: the local loss through DDP's forward, W times it backward (DDP averages the gradients
        over the W ranks: their sum results), then the optimizer on the parameters the trace saw."""
        with poutine.trace(param_only=True) as capture:
            loss = loss_module(batch, elbo)
        if self._outside is None:  # first step: DDP averages the gradients of the modules' parameters only
            self._outside = self._params_outside_modules(capture.trace)
        (loss * self.info.world_size).backward()
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        optim(params)
        release_grads(params)
        return loss.detach()

    def _params_outside_modules(self, trace: poutine.Trace) -> list[str]:
        inside = {id(p) for p in self._vae.parameters()}
        outside = sorted(n for n, site in trace.nodes.items() if id(site["value"].unconstrained()) not in inside)
        if outside and self.info.distributed:
            raise ConfigError(
                f"the model or guide has Pyro parameters outside its nn.Modules ({', '.join(outside)}); "
                "DistributedDataParallel averages only module parameters, so the ranks would drift apart. "
                "Make them nn.Parameter attributes of a module (registered with pyro.module)"
            )
        return outside

    # ------------------------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.run_dir is None:
            raise ValueError("this trainer has no run directory")
        return self.run_dir / name

    def _kept(self) -> str:
        if self.run_dir is not None and self._saved:
            return f"The checkpoint of the last finished epoch, {self._path(CHECKPOINT)}, is intact"
        if self.run_dir is not None:
            return "No epoch had finished, so there is no checkpoint"
        return "There is no run directory, so nothing was saved"

    def _diverged(self, epoch: int, step: int, value: float, beta: float) -> None:
        raise TrainingDivergedError(
            f"the loss became {value} at epoch {epoch}, step {step} (KL weight {beta:.3g}; summed over the "
            f"{self.info.world_size} ranks); {self._kept()[0].lower()}{self._kept()[1:]}. "
            "Try a smaller train.lr, a train.clip_norm, a longer train.kl_warmup_epochs, or fewer flows"
        )

    def _comm_message(self, error: BaseException) -> str:
        w, info = self._where, self.info
        at = f" at epoch {w['epoch']}, step {w['step']}" if w["epoch"] else ""
        return (
            f"rank {info.rank} of {info.world_size} lost contact with the other ranks during {w['phase']}{at}: "
            f"{_first_line(error)}. Another rank has died (its own output says why) or has not answered within "
            f"the process group's timeout, distributed.timeout_s = {info.timeout_s:g} s. {self._kept()}; "
            + ("restart the job with --resume" if self._saved else "restart the job")
            + " once every rank can run"
        )

    def _load_for_resume(self) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
        """Rank 0 reads checkpoint.pt (checked against the config) and best.pt and sends them to every rank;
        an error on rank 0 is raised on every rank."""

        def read() -> tuple[dict[str, Any], dict[str, Tensor] | None]:
            state = load_checkpoint(self._path(CHECKPOINT), self.config, map_location="cpu")
            best = self._path(BEST)
            return state, torch.load(best, map_location="cpu", weights_only=False)["vae"] if best.is_file() else None

        return _broadcast_object(on_main(read, self.info), self.info)

    def _save(
        self,
        vae: FlowVAE,
        optim: pyro.optim.PyroOptim,
        history: list[dict[str, Any]],
        epoch: int,
        best_valid: float,
        best_epoch: int,
        global_step: int,
        improved: bool,
        patience_left: int | None,
    ) -> None:
        if self.run_dir is None:
            return
        self._saved = True
        if not self.info.is_main:
            return
        state = {
            "config": self.config.to_dict(),
            "data_dim": self.data.data_dim,
            "image_shape": self.data.image_shape,
            "epoch": epoch,
            "global_step": global_step,
            "best_valid_elbo": best_valid,
            "best_epoch": best_epoch,
            "patience_left": patience_left,
            "history": history,
            "vae": vae.state_dict(),
            "optim": optim.get_state(),
            # a single-process Trainer can resume this checkpoint: it needs RNG states of its own layout
            "rng": _rng_state(self.device, step_seed(self.config.train.seed, 0, global_step, "binarize")),
            "world_size": self.info.world_size,
        }
        write_run_files(self.run_dir, state, improved)


def _rng_state(device: torch.device, seed: int) -> dict[str, Any]:
    """RNG states in the layout of the single-process Trainer's checkpoints."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _is_comm_failure(error: BaseException) -> bool:
    """A failed collective: torch's DistError family, or a RuntimeError raised by gloo or NCCL."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _COMM_MARKERS)
