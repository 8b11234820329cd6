"""The ELBO a config chooses, computed on the device, and the training loss module built from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBOModule
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.trace_struct import Trace
from torch import Tensor, nn

from pyro_flowvae.infer.annealing import ScaleLatents

if TYPE_CHECKING:
    from pyro_flowvae.config import TrainConfig

__all__ = ["ELBOS", "build_elbo", "DeviceTrace_ELBO", "AnnealedELBO"]


class DeviceTrace_ELBO(Trace_ELBO):
    r""":class:`~pyro.infer.Trace_ELBO` whose :meth:`differentiable_loss` never leaves the device.

    Pyro's ``Trace_ELBO.differentiable_loss`` calls ``.item()`` on every site's log-density and on the loss
    (and tests the loss for NaN), several host-device synchronisations per step on CUDA. This subclass
    computes the same estimator, with the same value and the same gradient,

    .. math:: \hat{\mathcal{L}} = \frac1S \sum_s \Big[\sum_{\text{model sites}} \log p
              - \sum_{\text{guide sites}} \log q\Big]

    (value from the log-densities, gradient from Pyro's surrogate, score-function terms included), with
    tensors only. The training loop reads losses in bulk and checks them for NaN and infinity itself.
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


#: ``train.elbo``: Trace_ELBO (computed on the device), TraceMeanField_ELBO, JitTrace_ELBO
ELBOS: dict[str, type[ELBO]] = {"trace": DeviceTrace_ELBO, "mean_field": TraceMeanField_ELBO, "jit": JitTrace_ELBO}


def build_elbo(train: TrainConfig, name: str | None = None, max_plate_nesting: int = 1) -> ELBO:
    """``Trace_ELBO`` (as :class:`DeviceTrace_ELBO`), ``TraceMeanField_ELBO`` or ``JitTrace_ELBO`` with the
    configured particles."""
    cls = ELBOS[name or train.elbo]
    kwargs: dict[str, Any] = {
        "num_particles": train.num_particles,
        "vectorize_particles": train.vectorize_particles and train.num_particles > 1,
        "max_plate_nesting": max_plate_nesting,
    }
    if cls is JitTrace_ELBO:
        kwargs["ignore_jit_warnings"] = True
    return cls(**kwargs)


class AnnealedELBO(ELBOModule):
    r"""Pyro's ELBO as a module (``elbo(model, guide)``, :class:`pyro.infer.elbo.ELBOModule`) whose latent sites
    are weighted by the KL weight :math:`\beta` (:class:`~pyro_flowvae.infer.annealing.ScaleLatents`):

    .. math:: -\hat{\mathcal{L}}_\beta = -\sum_b \Big(\log p(x_b \mid z_b)
              + \beta \big[\log p(z_b) - \log q(z_b \mid x_b)\big]\Big).

    Its parameters are the model's and the guide's, so ``torch.optim`` and
    :class:`~torch.nn.parallel.DistributedDataParallel` take it as it is. ``warmup_elbo`` (default ``elbo``)
    scores the steps with :math:`\beta < 1`: ``JitTrace_ELBO`` would bake a changing weight into its trace.
    """

    def __init__(self, model: nn.Module, guide: nn.Module, elbo: ELBO, warmup_elbo: ELBO | None = None) -> None:
        super().__init__(model, guide, elbo)
        self.warmup_elbo = warmup_elbo if warmup_elbo is not None else elbo
        self.annealer = ScaleLatents(1.0)

    @property
    def kl_weight(self) -> float:
        return self.annealer.scale

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self.annealer.scale = value

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        elbo = self.elbo if self.annealer.scale == 1.0 else self.warmup_elbo
        with self.annealer:
            return elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
