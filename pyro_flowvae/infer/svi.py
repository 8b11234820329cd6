"""The SVI pieces a config chooses: the ELBO, the optimizer, and a step that leaves the loss on the device."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.optim
from pyro import poutine
from pyro.infer import ELBO, SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import zero_grads
from torch import Tensor

from pyro_flowvae.config import TrainConfig

__all__ = ["build_elbo", "build_optimizer", "DeviceSVI"]

_ELBOS: dict[str, type[ELBO]] = {"trace": Trace_ELBO, "mean_field": TraceMeanField_ELBO, "jit": JitTrace_ELBO}


def build_elbo(train: TrainConfig, name: str | None = None, max_plate_nesting: int = 1) -> ELBO:
    """``Trace_ELBO`` (or ``TraceMeanField_ELBO``, ``JitTrace_ELBO``) with the configured particles."""
    cls = _ELBOS[name or train.elbo]
    kwargs: dict[str, Any] = {
        "num_particles": train.num_particles,
        "vectorize_particles": train.vectorize_particles and train.num_particles > 1,
        "max_plate_nesting": max_plate_nesting,
    }
    if cls is JitTrace_ELBO:
        kwargs["ignore_jit_warnings"] = True
    return cls(**kwargs)


def build_optimizer(train: TrainConfig) -> pyro.optim.PyroOptim:
    """Adam with per-parameter gradient-norm clipping, or Pyro's ClippedAdam."""
    if train.optimizer == "clipped_adam":
        args: dict[str, Any] = {"lr": train.lr}
        if train.clip_norm is not None:
            args["clip_norm"] = train.clip_norm
        return pyro.optim.ClippedAdam(args)
    clip = {"clip_norm": train.clip_norm} if train.clip_norm is not None else None
    return pyro.optim.Adam({"lr": train.lr}, clip_args=clip)


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose :meth:`step` returns the loss as a detached tensor.

    ``SVI.step`` returns a Python float, which costs a device-to-host synchronisation every step on CUDA.
    This step does the same work (differentiable loss, backward, optimizer on the params seen in the
    trace, zero grads) and leaves the loss on the device, so the training loop can read losses in bulk.
    """

    def __init__(self, model: Any, guide: Any, optim: pyro.optim.PyroOptim, loss: ELBO) -> None:
        super().__init__(model, guide, optim, loss)
        self.elbo = loss

    def step(self, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        with poutine.trace(param_only=True) as param_capture:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        loss.backward()
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        self.optim(params)
        zero_grads(params)
        return loss.detach()
