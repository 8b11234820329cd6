"""The training loop: one for every model and guide, for one process and for a torchrun job.

Each step is Pyro's ELBO as a module (:class:`~pyro_flowvae.infer.svi.AnnealedELBO`) on a minibatch, its
backward pass, :func:`torch.nn.utils.clip_grad_norm_` and a ``torch.optim`` step; with a process group the loss
module is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, without one every collective is a no-op.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import JitTrace_ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyro_flowvae._atomic import atomic_write
from pyro_flowvae.config import Config
from pyro_flowvae.data.batching import batch_args
from pyro_flowvae.errors import ConfigError, TrainingDivergedError
from pyro_flowvae.infer.annealing import kl_weight
from pyro_flowvae.infer.checkpoint import load_checkpoint, save_checkpoint
from pyro_flowvae.infer.distributed import (
    NO_BUFFER_SYNC,
    DistInfo,
    DistributedError,
    all_reduce,
    broadcast_object,
    distributed_elbo,
    first_line,
    is_comm_failure,
    on_main,
    parameter_spread,
    resolve_device,
    shard_sampler,
    step_seed,
)
from pyro_flowvae.infer.optim import build_optimizer, build_scheduler, load_scheduler_state, step_scheduler
from pyro_flowvae.infer.svi import AnnealedELBO, build_elbo

__all__ = ["Trainer", "TrainResult", "RunState", "epoch_record", "training_step", "CHECKPOINT", "BEST", "LOG"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "log.jsonl"


@dataclass
class RunState:
    """Where a run stands after an epoch: with the weights, optimizer and schedule, all ``checkpoint.pt`` holds."""

    epoch: int = 0
    global_step: int = 0
    best_valid_elbo: float = -math.inf
    best_epoch: int = 0
    patience_left: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the validation ELBO of the untrained model, the reference of ``train.divergence_factor``
    initial_valid_elbo: float | None = None


def epoch_record(
    epoch: int, step: int, loss: float, seen: int, seconds: float, valid_elbo: float, kl_weight: float
) -> dict[str, Any]:
    """The line ``log.jsonl`` holds for an epoch (ELBOs in nats per datapoint)."""
    return {
        "epoch": epoch,
        "step": step,
        "train_elbo": -loss / max(seen, 1),
        "valid_elbo": valid_elbo,
        "kl_weight": kl_weight,
        "examples": seen,
        "examples_per_s": seen / max(seconds, 1e-9),
        "seconds": seconds,
    }


def training_step(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    args: tuple,
    clip_norm: float | None,
    loss_scale: int = 1,
) -> Tensor:
    """One optimisation step, as a plain PyTorch loop takes it: the loss (``loss_module(*args)``), its backward
    pass (times ``loss_scale``: the number of DDP ranks, whose gradients DDP averages), the global gradient
    norm clipped to ``clip_norm`` by :func:`torch.nn.utils.clip_grad_norm_`, the optimizer step, and the
    gradients set to None. Returns the loss, detached, on the device: nothing here waits for the device."""
    value = loss_module(*args)
    (value * loss_scale if loss_scale != 1 else value).backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value.detach()


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run left behind."""

    vae: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best_valid_elbo: float
    examples_per_s: float
    stopped_early: bool
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    r"""Trains ``vae`` (any module with Pyro callables ``vae.model`` and ``vae.guide``) on ``train_data``.

    - **Step**: the ELBO of the minibatch as :class:`~pyro_flowvae.infer.svi.AnnealedELBO` (Pyro's
      ``Trace_ELBO``, ``TraceMeanField_ELBO`` or ``JitTrace_ELBO`` per ``train.elbo``; the KL weight rising
      linearly over ``train.kl_warmup_epochs``), backward, :func:`~torch.nn.utils.clip_grad_norm_` at
      ``train.clip_norm`` over all parameters, ``train.optimizer`` from ``torch.optim``, gradients set to None.
      Losses stay on the device and are read every ``train.log_every`` steps, when a NaN or infinite loss stops
      the run with :class:`~pyro_flowvae.errors.TrainingDivergedError`.
    - **Epoch**: a :func:`~pyro_flowvae.infer.distributed.shard_sampler` permutation of the training rows
      (reshuffled by ``train.seed + epoch``), :math:`\lceil \lfloor N / W \rfloor / (B / W) \rceil` steps of the
      global batch B over W processes (W = 1 without torchrun); then the validation ELBO
      (:func:`~pyro_flowvae.infer.distributed.distributed_elbo`, the same for any W), the learning-rate schedule,
      a line in ``log.jsonl``, an atomic ``checkpoint.pt`` and, when the validation ELBO improved, ``best.pt``.
    - **Noise**: the latent draws (and dynamic binarization) of rank r at global step t are seeded by
      :func:`~pyro_flowvae.infer.distributed.step_seed` ``(train.seed, r, t)``, so a resumed run draws exactly
      what the uninterrupted one would have, with no RNG state to save.
    - **Processes**: with a process group (``dist_info``), DDP all-reduces the gradients; each rank scales its
      local loss by W so that every rank holds the gradient of the global batch's summed loss, the gradient a
      single process computes on the same batch. Only rank 0 writes the run directory; ``on_epoch`` runs on
      rank 0 only; a dead or stalled rank makes the others fail with
      :class:`~pyro_flowvae.infer.distributed.DistributedError` within the process group's timeout.

    ``meta`` (the data's dimension and shape) is stored in every checkpoint beside the config.
    """

    def __init__(
        self,
        vae: nn.Module,
        train_data: Any,
        valid_data: Any,
        config: Config,
        run_dir: str | Path | None = None,
        dist_info: DistInfo | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        dynamic_binarize: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.info = dist_info or DistInfo(device=resolve_device(config.train.device))
        self.device = self.info.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_epoch = on_epoch
        self.dynamic_binarize = dynamic_binarize
        self.meta = dict(meta or {})
        world, batch = self.info.world_size, config.train.batch_size
        if batch % world:
            raise ConfigError(
                f"train.batch_size = {batch} is the global batch and must split evenly over the {world} ranks; "
                f"set it to a multiple of {world}, e.g. {-(-batch // world) * world}"
            )
        if train_data.shape[0] < world:
            raise ConfigError(
                f"the training split has {train_data.shape[0]} rows, fewer than the {world} ranks; "
                "use more data or fewer processes (--nproc_per_node)"
            )
        self.local_batch_size = batch // world
        self.vae = vae.to(self.device)
        self.train_data = train_data.to(self.device)
        self.valid_data = valid_data.to(self.device)
        self._saved = False
        self._where = {"phase": "start-up", "epoch": 0, "step": 0}

    # ------------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train (continuing from ``checkpoint.pt`` with ``resume``); returns, on every rank, the same
        :class:`TrainResult`, whose module holds the best-validation weights (``train.restore_best``) or the
        last epoch's."""
        try:
            return self._fit(resume)
        except RuntimeError as error:
            if self.info.distributed and is_comm_failure(error):
                raise DistributedError(self._comm_message(error)) from error
            raise

    def _fit(self, resume: bool) -> TrainResult:
        train, info, vae = self.config.train, self.info, self.vae
        self._where["phase"] = "the initial check that ranks agree"
        init_spread = parameter_spread(vae, info)
        params = [p for p in vae.parameters() if p.requires_grad]
        flow = getattr(vae.guide, "flow", None)
        optimizer = build_optimizer(params, train, flow.parameters() if isinstance(flow, nn.Module) else ())
        scheduler = build_scheduler(optimizer, train)
        state = RunState(patience_left=train.patience)
        best_weights: dict[str, Tensor] | None = None
        notice: str | None = None
        if resume:
            self._where["phase"] = "loading the checkpoint"
            checkpoint, best_weights = self._load_for_resume()
            vae.load_state_dict(checkpoint["vae"])
            optimizer.load_state_dict(checkpoint["optim"])
            if scheduler is not None:
                load_scheduler_state(scheduler, checkpoint["scheduler"])
            state = RunState(**checkpoint["run_state"])
            if checkpoint["config"]["train"].get("patience") != train.patience:
                state.patience_left = train.patience  # a new patience starts counting afresh
            notice = self._apply_new_lr(checkpoint["config"]["train"]["lr"], optimizer, scheduler)
            if best_weights is not None:
                best_weights = {k: v.to(self.device) for k, v in best_weights.items()}
            self._saved = True

        sampler = shard_sampler(self.train_data.shape[0], info, train.seed)
        b = self.local_batch_size
        steps_per_epoch = -(-sampler.num_samples // b)
        warmup_steps = round(train.kl_warmup_epochs * steps_per_epoch)
        elbo = build_elbo(train)
        warmup_elbo = build_elbo(train, "trace") if isinstance(elbo, JitTrace_ELBO) and warmup_steps else None
        loss = AnnealedELBO(vae.model, vae.guide, elbo, warmup_elbo, annealing=train.annealing)
        module: nn.Module = loss
        # the flow stays at the identity while beta < 1 (train.hold_flows); a guide without a flow ignores it
        hold_flows = train.hold_flows and warmup_steps > 0 and hasattr(vae.guide, "flow_held")
        if info.distributed:
            self._where["phase"] = "wrapping the model in DistributedDataParallel"
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # held flows get no gradient during the warm-up: DDP must not wait for theirs
            module = DistributedDataParallel(
                loss, device_ids=device_ids, find_unused_parameters=hold_flows, **NO_BUFFER_SYNC
            )
        if state.initial_valid_elbo is None and not resume:
            self._where["phase"] = "the validation ELBO of the untrained model"
            state.initial_valid_elbo = self._valid_elbo(0)
        binarizer = torch.Generator(device=self.device) if self.dynamic_binarize else None
        self._check_params = True
        stopped_early = False

        for epoch in range(state.epoch + 1, train.epochs + 1):
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
            # Support checks would sync with the device every step; non-finite losses are reported below, with
            # the epoch and step, instead of Pyro's warning.
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                # JitTrace_ELBO rests on torch.jit.trace, which torch >= 2.9 flags as deprecated
                warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
                for step in range(1, steps_per_epoch + 1):
                    self._where.update(phase="a training step (gradient all-reduce)", epoch=epoch, step=step)
                    batch = self.train_data.index_select(0, shard[(step - 1) * b : step * b])
                    if binarizer is not None:
                        binarizer.manual_seed(step_seed(train.seed, info.rank, state.global_step, "binarize"))
                        batch = torch.bernoulli(batch, generator=binarizer)
                    torch.manual_seed(step_seed(train.seed, info.rank, state.global_step, "latent"))
                    beta = kl_weight(state.global_step, warmup_steps, train.kl_start, train.beta)
                    loss.kl_weight = beta
                    if hold_flows:
                        vae.guide.flow_held = beta < train.beta
                    pending.append(self._step(module, optimizer, params, batch_args(batch)))
                    pending_sizes.append(batch.shape[0] * info.world_size)
                    state.global_step += 1
                    if len(pending) < train.log_every and step < steps_per_epoch:
                        continue
                    self._where["phase"] = "summing the losses of the ranks"
                    # one host sync (and one all-reduce) per log interval: the global batches' losses
                    losses = all_reduce(torch.stack(pending), info).tolist()
                    epoch_seconds += time.perf_counter() - tick
                    for offset, (value, size) in enumerate(zip(losses, pending_sizes)):
                        if not math.isfinite(value):
                            bar.close()
                            self._diverged(
                                "the loss", value, f"at epoch {epoch}, step {first_pending_step + offset}", beta
                            )
                        epoch_loss += value
                        epoch_seen += size
                    bar.update(len(losses))
                    bar.set_postfix(
                        elbo=f"{-epoch_loss / epoch_seen:.2f}",  # running mean over the epoch
                        ex_s=f"{epoch_seen / epoch_seconds:.0f}",
                        kl_w=f"{beta:.2f}",
                    )
                    pending, pending_sizes, first_pending_step = [], [], step + 1
                    tick = time.perf_counter()
            bar.close()

            self._where.update(phase="the validation ELBO", step=steps_per_epoch)
            valid_elbo = self._valid_elbo(epoch)
            if not math.isfinite(valid_elbo):  # stop before this epoch's weights replace the last finite checkpoint
                self._diverged("the validation ELBO", valid_elbo, f"after epoch {epoch}", beta)
            floor = self._divergence_floor(state)
            if floor is not None and valid_elbo < floor:
                self._diverged(
                    "the validation ELBO",
                    valid_elbo,
                    f"after epoch {epoch}, below {floor:.4g}, {train.divergence_factor:g} times its magnitude below "
                    f"the untrained model's {state.initial_valid_elbo:.4g} (train.divergence_factor)",
                    beta,
                )
            # the slowest rank sets the pace: every rank reports its time
            seconds = float(all_reduce(torch.tensor([epoch_seconds], dtype=torch.float64), info, dist.ReduceOp.MAX))
            self._where["phase"] = "the check that ranks agree"
            spread = parameter_spread(vae, info)
            improved = math.isfinite(valid_elbo) and valid_elbo > state.best_valid_elbo
            if improved:
                state.best_valid_elbo, state.best_epoch = valid_elbo, epoch
                state.patience_left = train.patience
                if train.restore_best:
                    best_weights = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            elif state.patience_left is not None and beta >= train.beta:
                state.patience_left -= 1  # patience counts the epochs after the warm-up only
            record = {
                **epoch_record(epoch, state.global_step, epoch_loss, epoch_seen, seconds, valid_elbo, beta),
                "lr": optimizer.param_groups[0]["lr"],
                "world_size": info.world_size,
                "param_spread": spread,
            }
            if notice is not None:
                record["notice"], notice = notice, None  # the first epoch after a resume that changed train.lr
            step_scheduler(scheduler, valid_elbo)
            state.epoch = epoch
            state.history.append(record)
            if spread != 0.0 and info.is_main:
                warnings.warn(
                    f"after epoch {epoch} the ranks' weights differ by up to {spread:.3g}; DDP keeps them equal "
                    "only if every rank runs the same code on the same kind of device",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._where["phase"] = "rank 0 writing the checkpoint"
            self._save(state, optimizer, scheduler, improved)
            if self.on_epoch is not None and info.is_main:
                self.on_epoch(record)
            if state.patience_left is not None and state.patience_left <= 0:
                stopped_early = True
                break

        if hold_flows:
            vae.guide.flow_held = False  # a run that ends within its warm-up is scored with its (identity) flow
        if train.restore_best and best_weights is not None:
            vae.load_state_dict(best_weights)
        history = state.history
        return TrainResult(
            vae=vae,
            history=history,
            best_epoch=state.best_epoch,
            best_valid_elbo=state.best_valid_elbo,
            # over every epoch of the run, those before a resume included
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

    def _valid_elbo(self, epoch: int) -> float:
        """The validation ELBO per datapoint (epoch 0: the untrained model's), the same on every rank."""
        self.vae.eval()
        with pyro.validation_enabled(False):
            valid = distributed_elbo(
                self.vae, self.valid_data, self.config.eval.valid_samples, self.config.train.seed, self.info,
                epoch=epoch,
            )  # fmt: skip
        return float(valid.mean())

    def _divergence_floor(self, state: RunState) -> float | None:
        """The validation ELBO below which the run counts as diverged: the untrained model's ELBO minus
        ``train.divergence_factor`` times its magnitude (plus one nat); None when that ELBO is unknown."""
        start = state.initial_valid_elbo
        if start is None or not math.isfinite(start):
            return None
        return start - self.config.train.divergence_factor * (abs(start) + 1.0)

    def _apply_new_lr(self, old_lr: float, optimizer: torch.optim.Optimizer, scheduler: Any) -> str | None:
        """After a resume with another ``train.lr``: scale every parameter group's learning rate (and the
        schedule's base rates) by new / old, and return the notice that log.jsonl and the console show."""
        new_lr = self.config.train.lr
        if new_lr == old_lr:
            return None
        ratio = new_lr / old_lr
        for group in optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if scheduler is not None:
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        notice = (
            f"resumed with train.lr = {new_lr:g} (the run was trained at {old_lr:g}); every learning rate, the "
            f"schedule's included, scaled by {ratio:g}"
        )
        if self.info.is_main:
            print(f"notice: {notice}", file=sys.stderr, flush=True)
        return notice

    def _step(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], args: tuple
    ) -> Tensor:
        """One SVI step on the local batch; the first also checks that the optimizer sees every Pyro parameter."""
        clip, scale = self.config.train.clip_norm, self.info.world_size
        if not self._check_params:
            return training_step(module, optimizer, params, args, clip, scale)
        with poutine.trace(param_only=True) as capture:
            value = training_step(module, optimizer, params, args, clip, scale)
        self._check_params_are_module_params(capture.trace, params)
        self._check_params = False
        return value

    @staticmethod
    def _check_params_are_module_params(trace: poutine.Trace, params: list[nn.Parameter]) -> None:
        inside = {id(p) for p in params}
        outside = sorted(n for n, site in trace.nodes.items() if id(site["value"].unconstrained()) not in inside)
        if outside:
            raise ConfigError(
                f"the model or guide has Pyro parameters outside its nn.Modules ({', '.join(outside)}); the "
                "trainer optimizes the modules' parameters, so these would never be trained. Make them "
                "nn.Parameter attributes of a module (registered with pyro.module)"
            )

    # ------------------------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.run_dir is None:
            raise ValueError("this trainer has no run directory")
        return self.run_dir / name

    def _kept(self, diverged: bool = False) -> str:
        if self.run_dir is not None and self._saved:
            return f"the checkpoint of the last finished epoch, {self._path(CHECKPOINT)}, is intact"
        if self.run_dir is not None:
            ended = "ended before the divergence" if diverged else "finished"
            return f"no epoch had {ended}, so there is no checkpoint"
        return "there is no run directory, so nothing was saved"

    def _diverged(self, what: str, value: float, at: str, beta: float) -> None:
        ranks = f"; summed over the {self.info.world_size} ranks" if self.info.distributed else ""
        raise TrainingDivergedError(
            f"{what} became {value} {at} (KL weight {beta:.3g}{ranks}); {self._kept(diverged=True)}. "
            "Try a smaller train.lr, a train.clip_norm, a longer train.kl_warmup_epochs, or fewer flows"
        )

    def _comm_message(self, error: BaseException) -> str:
        w, info = self._where, self.info
        at = f" at epoch {w['epoch']}, step {w['step']}" if w["epoch"] else ""
        kept = self._kept()
        return (
            f"rank {info.rank} of {info.world_size} lost contact with the other ranks during {w['phase']}{at}: "
            f"{first_line(error)}. Another rank has died (its own output says why) or has not answered within "
            f"the process group's timeout, distributed.timeout_s = {info.timeout_s:g} s. {kept[0].upper()}{kept[1:]}; "
            + ("restart the job with --resume" if self._saved else "restart the job")
            + " once every rank can run"
        )

    def _load_for_resume(self) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
        """Rank 0 reads checkpoint.pt (checked against the config and the data) and best.pt and sends them to
        every rank; an error on rank 0 is raised on every rank."""

        def read() -> tuple[dict[str, Any], dict[str, Tensor] | None]:
            state = load_checkpoint(self._path(CHECKPOINT), self.config, map_location="cpu", meta=self.meta)
            best = self._path(BEST)
            best_weights = load_checkpoint(best, map_location="cpu")["vae"] if best.is_file() else None
            return state, best_weights

        return broadcast_object(on_main(read, self.info), self.info)

    def _save(self, state: RunState, optimizer: torch.optim.Optimizer, scheduler: Any, improved: bool) -> None:
        if self.run_dir is None:
            return
        self._saved = True
        if not self.info.is_main:
            return
        common = {"config": self.config.to_dict(), **self.meta}
        weights = self.vae.state_dict()
        if improved:
            save_checkpoint(self._path(BEST), {**common, "epoch": state.epoch, "vae": weights})
        checkpoint = {
            **common,
            "run_state": asdict(state),
            "vae": weights,
            "optim": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "world_size": self.info.world_size,
        }
        save_checkpoint(self._path(CHECKPOINT), checkpoint)
        atomic_write(self._path(LOG), lambda handle: handle.writelines(json.dumps(r) + "\n" for r in state.history))
