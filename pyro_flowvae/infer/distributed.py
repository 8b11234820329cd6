"""Data-parallel SVI under torchrun: PyTorch DistributedDataParallel, sharded data, split evaluation."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from pyro_flowvae.errors import ConfigError, FlowVAEError
from pyro_flowvae.evaluation.importance import (
    MIN_PARETO_SAMPLES,
    ImportanceEstimate,
    elbo_per_datapoint,
    estimate_log_likelihood,
)

__all__ = [
    "BACKENDS",
    "DEVICES",
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
    "resolve_device",
    "is_comm_failure",
    "first_line",
    "all_reduce",
    "broadcast_object",
    "NO_BUFFER_SYNC",
    "seeded",
]

T = TypeVar("T")
BACKENDS = ("auto", "gloo", "nccl")
#: ``train.device``: ``auto`` is CUDA when available (:func:`resolve_device`)
DEVICES = ("auto", "cpu", "cuda")
#: seconds a collective may wait for the other ranks before it fails (torch's own default is 10 to 30 minutes)
DEFAULT_TIMEOUT_S = 600.0
#: the random streams of :func:`step_seed`, each seeded independently
STREAMS = {"latent": 0, "binarize": 1, "valid": 2, "eval": 3}
#: rows per seeded chunk of the validation ELBO (as :func:`~pyro_flowvae.evaluation.importance.elbo_per_datapoint`)
VALID_CHUNK = 1000

#: buffers (flow masks, permutations) never change: DDP syncs them once, at construction, not every forward
NO_BUFFER_SYNC = (
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


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but CUDA is not available here; use train.device = 'auto'")
    return torch.device(name)


def torchrun_world_size() -> int | None:
    """``WORLD_SIZE`` as torchrun sets it, or None when this process was not launched by torchrun.

    The training loop runs DistributedDataParallel when this is not None (``torchrun --nproc_per_node=1``
    included, which runs DDP over one process)."""
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
                f"rank {rank} of {world_size} could not join the process group at {where}: {first_line(error)}. "
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


def all_reduce(x: Tensor, info: DistInfo, op: Any = None) -> Tensor:
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
    widest = all_reduce(torch.tensor([local.element_size() if local.numel() else 0]), info, dist.ReduceOp.MAX)
    dtype = torch.float64 if int(widest) >= 8 else torch.float32
    width = max(max(counts), 1)
    padded = torch.zeros((width, *local.shape[1:]), dtype=torch.float64, device=info.comm_device)
    padded[: local.shape[0]] = local.to(info.comm_device, torch.float64)
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(local.device, dtype)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
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
    error = broadcast_object(error, info)
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
    high = all_reduce(flat, info, dist.ReduceOp.MAX)
    low = all_reduce(flat, info, dist.ReduceOp.MIN)
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
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG seeded to ``seed``; the caller's RNG state is restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------------------
# evaluation split across ranks


@torch.no_grad()
def distributed_elbo(
    vae: nn.Module,
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
        with seeded(step_seed(seed, index, epoch, "valid"), x.device):
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
    r""":func:`~pyro_flowvae.evaluation.importance.estimate_log_likelihood` with the data split across ranks.

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
        with seeded(step_seed(seed, index, 0, "eval"), data.device):
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


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def is_comm_failure(error: BaseException) -> bool:
    """A failed collective: torch's DistError family, or a RuntimeError raised by gloo or NCCL."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _COMM_MARKERS)
