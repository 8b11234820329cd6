"""The training loop: SVI over minibatches with KL warm-up, validation, early stopping and checkpoints."""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_flowvae.atomic import atomic_write
from pyro_flowvae.config import Config
from pyro_flowvae.data import DataSplits, check_data, iterate_minibatches, num_minibatches
from pyro_flowvae.errors import TrainingDivergedError
from pyro_flowvae.infer.annealing import ScaleLatents, kl_weight
from pyro_flowvae.infer.checkpoint import load_checkpoint, save_checkpoint
from pyro_flowvae.infer.importance import log_importance_weights
from pyro_flowvae.infer.svi import DeviceSVI, build_elbo, build_optimizer
from pyro_flowvae.vae import build_vae

if TYPE_CHECKING:
    from pyro_flowvae.data.sequences import SequenceSplits

__all__ = [
    "Trainer",
    "TrainResult",
    "resolve_device",
    "elbo_per_datapoint",
    "batch_args",
    "epoch_record",
    "write_run_files",
]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "log.jsonl"


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from pyro_flowvae.errors import ConfigError

        raise ConfigError("train.device = 'cuda' but CUDA is not available here; use train.device = 'auto'")
    return torch.device(name)


def batch_args(batch: Any) -> tuple[Any, ...]:
    """The arguments model and guide take for a minibatch: ``(x,)`` for images, ``(x, mask, times)`` for
    a :class:`~pyro_flowvae.data.sequences.SequenceData`."""
    return tuple(batch.args()) if hasattr(batch, "args") else (batch,)


@torch.no_grad()
def elbo_per_datapoint(vae: nn.Module, x: Any, num_samples: int = 1, batch_size: int = 1000) -> torch.Tensor:
    """The ELBO of each row of x (a tensor or sequence data), averaged over ``num_samples`` draws of
    z ~ q(z|x); shape (N,)."""
    parts = []
    for start in range(0, x.shape[0], batch_size):
        chunk = batch_args(x[start : start + batch_size])
        log_w = log_importance_weights(vae.model, vae.guide, *chunk, num_samples=num_samples)
        parts.append(log_w.mean(0))
    return torch.cat(parts)


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


#: what best.pt keeps of a checkpoint
BEST_KEYS = ("config", "data_dim", "seq_len", "image_shape", "epoch", "vae")


def write_run_files(run_dir: Path, state: dict[str, Any], improved: bool) -> None:
    """Atomically write ``checkpoint.pt`` (and ``best.pt`` when the validation ELBO ``improved``) and
    ``log.jsonl`` from a checkpoint ``state``."""
    if improved:
        save_checkpoint(run_dir / BEST, {k: state[k] for k in BEST_KEYS if k in state})
    save_checkpoint(run_dir / CHECKPOINT, state)
    atomic_write(run_dir / LOG, lambda handle: handle.writelines(json.dumps(r) + "\n" for r in state["history"]))


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run left behind."""

    vae: nn.Module  # a FlowVAE, or a GPVAE for sequence data
    history: list[dict[str, Any]]
    best_epoch: int
    best_valid_elbo: float
    examples_per_s: float
    stopped_early: bool
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains ``build_vae(config, ...)`` (a FlowVAE; a GPVAE for sequences) on ``data`` with :class:`pyro.infer.SVI`.

    Every epoch: SVI steps over shuffled minibatches (dynamically binarized when configured), the KL weight
    rising linearly over ``train.kl_warmup_epochs``; then the validation ELBO, a line in ``log.jsonl``,
    an atomic checkpoint (``checkpoint.pt``) and, when the validation ELBO improved, ``best.pt``.
    Losses stay on the device and are read every ``train.log_every`` steps, when a NaN or infinite loss
    stops the run with :class:`TrainingDivergedError` (the checkpoint of the last finished epoch is kept).
    """

    def __init__(
        self,
        config: Config,
        data: DataSplits | SequenceSplits,
        run_dir: str | Path | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.train.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_epoch = on_epoch
        likelihood = config.model.likelihood
        if config.is_sequence:
            from pyro_flowvae.data.series import check_sequence_splits

            check_sequence_splits(data, likelihood)
        else:
            dynamic = data.binarize == "dynamic"
            check_data(data.train, likelihood=likelihood, split="train", binarize_dynamic=dynamic)
            check_data(data.valid, likelihood=likelihood, data_dim=data.data_dim, split="valid")
            check_data(data.test, likelihood=likelihood, data_dim=data.data_dim, split="test")
        self.data = data.to(self.device)

    # ------------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, train = self.config, self.config.train
        pyro.clear_param_store()  # pyro.module keeps stale parameters of an earlier model with the same names
        pyro.set_rng_seed(train.seed)
        vae = build_vae(cfg, self.data.data_dim, getattr(self.data, "seq_len", None)).to(self.device)
        optim = build_optimizer(train)
        annealer = ScaleLatents(1.0)
        generator = torch.Generator(device=self.device).manual_seed(train.seed)
        history: list[dict[str, Any]] = []
        start_epoch, best_valid, best_epoch, global_step = 1, -math.inf, 0, 0

        if resume:
            # On the CPU: load_state_dict copies weights to the device, the optimizer moves its moments to
            # their parameters' device and keeps Adam's step counts on the CPU, and RNG states must be CPU bytes.
            state = load_checkpoint(self._path(CHECKPOINT), cfg, map_location="cpu")
            vae.load_state_dict(state["vae"])
            optim.set_state(state["optim"])
            history = state["history"]
            start_epoch = state["epoch"] + 1
            best_valid, best_epoch, global_step = (
                state["best_valid_elbo"],
                state["best_epoch"],
                state["global_step"],
            )
            _set_rng_state(state["rng"], generator)

        steps_per_epoch = num_minibatches(self.data.train.shape[0], train.batch_size, drop_last=False)
        warmup_steps = round(train.kl_warmup_epochs * steps_per_epoch)
        dynamic = self.data.binarize == "dynamic"
        # JitTrace_ELBO would bake the changing KL weight into its trace: warm up with Trace_ELBO instead
        elbo_names = {train.elbo} | ({"trace"} if train.elbo == "jit" and warmup_steps else set())
        svis = {
            name: DeviceSVI(annealer(vae.model), annealer(vae.guide), optim, build_elbo(train, name))
            for name in elbo_names
        }
        patience_left = train.patience
        if resume and state["config"]["train"].get("patience") == train.patience:
            patience_left = state["patience_left"]  # early stopping resumes where it was
        stopped_early = False
        best_state: dict[str, torch.Tensor] | None = None

        for epoch in range(start_epoch, train.epochs + 1):
            vae.train()
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{train.epochs}",
                disable=None if train.progress else True,
                leave=False,
                dynamic_ncols=True,
            )
            pending: list[torch.Tensor] = []
            pending_sizes: list[int] = []
            epoch_loss, epoch_seen, epoch_seconds = 0.0, 0, 0.0
            first_pending_step = 1
            tick = time.perf_counter()
            batches = iterate_minibatches(
                self.data.train, train.batch_size, generator=generator, dynamic_binarize=dynamic
            )
            # Support checks would sync with the device every step; NaN losses are reported below, with
            # the epoch and step, instead of Pyro's warning.
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                # JitTrace_ELBO rests on torch.jit.trace, which torch >= 2.9 flags as deprecated
                warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
                for step, batch in enumerate(batches, start=1):
                    beta = kl_weight(global_step, warmup_steps, train.kl_start)
                    annealer.scale = beta
                    svi = svis["trace"] if train.elbo == "jit" and beta < 1.0 else svis[train.elbo]
                    pending.append(svi.step(*batch_args(batch)))
                    pending_sizes.append(batch.shape[0])
                    global_step += 1
                    if len(pending) < train.log_every and step < steps_per_epoch:
                        continue
                    losses = torch.stack(pending).tolist()  # the one host sync per log interval
                    epoch_seconds += time.perf_counter() - tick
                    for offset, (loss, size) in enumerate(zip(losses, pending_sizes)):
                        if not math.isfinite(loss):
                            bar.close()
                            self._diverged(epoch, first_pending_step + offset, loss, beta)
                        epoch_loss += loss
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

            vae.eval()
            with pyro.validation_enabled(False):
                valid_elbo = float(elbo_per_datapoint(vae, self.data.valid, cfg.eval.valid_samples).mean())
            improved = valid_elbo > best_valid
            if improved:
                best_valid, best_epoch = valid_elbo, epoch
                if self.run_dir is None and train.restore_best:  # no best.pt to come back to: keep a copy
                    best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
                patience_left = train.patience
            elif patience_left is not None:
                patience_left -= 1
            record = epoch_record(epoch, global_step, epoch_loss, epoch_seen, epoch_seconds, valid_elbo, beta)
            history.append(record)
            self._save(
                vae, optim, history, epoch, best_valid, best_epoch, global_step, generator, improved, patience_left
            )
            if self.on_epoch is not None:
                self.on_epoch(record)
            if patience_left is not None and patience_left <= 0:
                stopped_early = True
                break

        if train.restore_best:  # else the last epoch's weights, as they are
            if self.run_dir is not None and self._path(BEST).is_file():
                best = torch.load(self._path(BEST), map_location=self.device, weights_only=False)["vae"]
                vae.load_state_dict(best)
            elif best_state is not None:
                vae.load_state_dict(best_state)
        return TrainResult(
            vae=vae,
            history=history,
            best_epoch=best_epoch,
            best_valid_elbo=best_valid,
            # over every epoch of the run, those before a resume included
            examples_per_s=sum(r["examples"] for r in history) / max(sum(r["seconds"] for r in history), 1e-9),
            stopped_early=stopped_early,
            device=str(self.device),
        )

    # ------------------------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.run_dir is None:
            raise ValueError("this trainer has no run directory")
        return self.run_dir / name

    def _diverged(self, epoch: int, step: int, value: float, beta: float) -> None:
        kept = (
            f"the checkpoint of the last finished epoch, {self._path(CHECKPOINT)}, is intact"
            if self.run_dir is not None and self._path(CHECKPOINT).is_file()
            else "no epoch had finished, so there is no checkpoint"
        )
        raise TrainingDivergedError(
            f"the loss became {value} at epoch {epoch}, step {step} (KL weight {beta:.3g}); {kept}. "
            "Try a smaller train.lr, a train.clip_norm, a longer train.kl_warmup_epochs, or fewer flows"
        )

    def _save(
        self,
        vae: nn.Module,
        optim: pyro.optim.PyroOptim,
        history: list[dict[str, Any]],
        epoch: int,
        best_valid: float,
        best_epoch: int,
        global_step: int,
        generator: torch.Generator,
        improved: bool,
        patience_left: int | None,
    ) -> None:
        if self.run_dir is None:
            return
        state = {
            "config": self.config.to_dict(),
            "data_dim": self.data.data_dim,
            "seq_len": getattr(self.data, "seq_len", None),
            "image_shape": getattr(self.data, "image_shape", None),
            "epoch": epoch,
            "global_step": global_step,
            "best_valid_elbo": best_valid,
            "best_epoch": best_epoch,
            "patience_left": patience_left,
            "history": history,
            "vae": vae.state_dict(),
            "optim": optim.get_state(),
            "rng": _get_rng_state(generator),
        }
        write_run_files(self.run_dir, state, improved)


def _get_rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"].cpu())
