"""The SVI pieces a config chooses: the ELBO, the optimizer, and a step that leaves the loss on the device."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.optim
from pyro import poutine
from pyro.infer import ELBO, SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_flowvae.config import TrainConfig

__all__ = ["build_elbo", "build_optimizer", "DeviceSVI", "DeviceTrace_ELBO", "release_grads"]


class DeviceTrace_ELBO(Trace_ELBO):
    r""":class:`~pyro.infer.Trace_ELBO` whose :meth:`differentiable_loss` never leaves the device.

    Pyro's ``Trace_ELBO.differentiable_loss`` calls ``.item()`` on every site's log-density and on the loss
    (and tests the loss for NaN), several host-device synchronisations per step on CUDA. This subclass
    computes the same estimator, with the same value and the same gradient,

    .. math:: \hat{\mathcal{L}} = \frac1S \sum_s \Big[\sum_{\text{model sites}} \log p
              - \sum_{\text{guide sites}} \log q\Big]

    (value from the log-densities, gradient from Pyro's surrogate, score-function terms included), with
    tensors only. The training loop reads losses in bulk and checks them for NaN itself.
    """

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        loss: Tensor | float = 0.0
        surrogate: Tensor | float = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = _loss_and_surrogate(model_trace, guide_trace)
            loss = loss + particle_loss / self.num_particles
            surrogate = surrogate + particle_surrogate / self.num_particles
        assert isinstance(surrogate, Tensor) and isinstance(loss, Tensor), "the model and guide drew no sample sites"
        return loss.detach() + (surrogate - surrogate.detach())


def _loss_and_surrogate(model_trace: Trace, guide_trace: Trace) -> tuple[Tensor, Tensor]:
    """Pyro's ``Trace_ELBO._differentiable_loss_particle`` without ``torch_item``: (-ELBO, -surrogate)."""
    elbo: Any = 0.0
    surrogate: Any = 0.0
    log_r = None
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo + site["log_prob_sum"]
            surrogate = surrogate + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function_term, entropy_term = site["score_parts"]
        elbo = elbo - site["log_prob_sum"]
        if not is_identically_zero(entropy_term):
            surrogate = surrogate - entropy_term.sum()
        if not is_identically_zero(score_function_term):
            if log_r is None:
                log_r = _compute_log_r(model_trace, guide_trace)
            surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
    return -elbo, -surrogate


_ELBOS: dict[str, type[ELBO]] = {"trace": DeviceTrace_ELBO, "mean_field": TraceMeanField_ELBO, "jit": JitTrace_ELBO}


def build_elbo(train: TrainConfig, name: str | None = None, max_plate_nesting: int = 1) -> ELBO:
    """``Trace_ELBO`` (as :class:`DeviceTrace_ELBO`), ``TraceMeanField_ELBO`` or ``JitTrace_ELBO`` with the
    configured particles."""
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


def release_grads(params: Any) -> None:
    """Drop the gradients after an optimizer step (``p.grad = None``), where Pyro's ``zero_grads`` allocates a
    zero tensor per parameter: the next backward writes fresh gradients, so the values are the same (0 + g = g
    exactly) at one allocation and one fill less per parameter and step, as ``torch.optim``'s
    ``zero_grad(set_to_none=True)`` does."""
    for p in params:
        p.grad = None


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose :meth:`step` returns the loss as a detached tensor.

    ``SVI.step`` returns a Python float, which costs a device-to-host synchronisation every step on CUDA.
    This step does the same work (differentiable loss, backward, optimizer on the params seen in the
    trace, release the grads) and leaves the loss on the device, so the training loop can read losses in bulk.
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
        release_grads(params)
        return loss.detach()
