"""The ELBO a config chooses, computed on the device, and the training loss module built from it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine
from pyro.infer import ELBO, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBOModule
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.poutine.trace_struct import Trace
from torch import Tensor, nn

from pyro_flowvae.infer.annealing import ScaleLatents

if TYPE_CHECKING:
    from pyro_flowvae.config import TrainConfig

__all__ = ["ELBOS", "ANNEALINGS", "build_elbo", "DeviceTrace_ELBO", "IWAE_ELBO", "AnnealedELBO"]


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


class IWAE_ELBO(RenyiELBO):
    r"""The importance-weighted bound of Burda et al. (2016), Pyro's ``RenyiELBO(alpha=0)``, as a differentiable loss:

    .. math:: -\mathcal{L}_K = -\sum_b \log \frac1K \sum_{k=1}^K \frac{p(x_b, z_{bk})}{q(z_{bk} \mid x_b)},
              \qquad z_{bk} \sim q(z \mid x_b),

    with K = ``num_particles`` (vectorized by default). :math:`\mathcal{L}_1` is the ELBO and
    :math:`\mathcal{L}_K` rises towards log p(x) with K. Pyro's ``RenyiELBO`` has ``loss_and_grads`` only; this
    adds the :meth:`differentiable_loss` the training loop calls, for reparameterized guides (every guide of
    this library). Site scales apply, so the KL weight of :class:`AnnealedELBO` acts on it too.

    [1] Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [arXiv:1509.00519]
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, vectorize_particles: bool = True) -> None:
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Tensor:
        log_weights = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_weight: Any = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_weight = log_weight + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not is_identically_zero(site["score_parts"].score_function):
                    raise NotImplementedError(
                        f"train.elbo = 'iwae' needs reparameterized guide sites; site {name!r} is not. Use "
                        "train.elbo = 'trace'"
                    )
                log_weight = log_weight - torch_sum(site["log_prob"], sum_dims)
            log_weights.append(log_weight)
        vectorized = self.vectorize_particles and self.num_particles > 1
        stacked = log_weights[0] if vectorized else torch.stack(log_weights)  # (K, *batch)
        return -(torch.logsumexp(stacked, dim=0) - math.log(self.num_particles)).sum()


#: ``train.elbo``: Trace_ELBO (computed on the device), TraceMeanField_ELBO, JitTrace_ELBO, the IWAE bound
ELBOS: dict[str, type[ELBO]] = {
    "trace": DeviceTrace_ELBO,
    "mean_field": TraceMeanField_ELBO,
    "jit": JitTrace_ELBO,
    "iwae": IWAE_ELBO,
}

#: ``train.annealing``: what the weight beta < 1 of the warm-up multiplies (see :class:`AnnealedELBO`)
ANNEALINGS = ("kl", "temperature")


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
    if cls is IWAE_ELBO:
        kwargs["vectorize_particles"] = train.vectorize_particles
    return cls(**kwargs)


class AnnealedELBO(ELBOModule):
    r"""Pyro's ELBO as a module (``elbo(model, guide)``, :class:`pyro.infer.elbo.ELBOModule`) annealed by a
    weight :math:`\beta \le 1`. With ``annealing="kl"`` (KL warm-up, Bowman et al. 2016, Sønderby et al. 2016)
    :math:`\beta` weights the latent sites of model and guide
    (:class:`~pyro_flowvae.infer.annealing.ScaleLatents`):

    .. math:: -\hat{\mathcal{L}}_\beta = -\sum_b \Big(\log p(x_b \mid z_b)
              + \beta \big[\log p(z_b) - \log q(z_b \mid x_b)\big]\Big);

    with ``annealing="temperature"`` (Rezende & Mohamed 2015, section 6) it weights every site of the model,
    :math:`\log p(x, z)`, and the entropy keeps weight 1 (``poutine.scale`` on the model only):

    .. math:: -\hat{\mathcal{L}}_\beta = -\sum_b \Big(\beta \log p(x_b, z_b) - \log q(z_b \mid x_b)\Big).

    Its parameters are the model's and the guide's, so ``torch.optim`` and
    :class:`~torch.nn.parallel.DistributedDataParallel` take it as it is. ``warmup_elbo`` (default ``elbo``)
    scores the steps with :math:`\beta < 1`: ``JitTrace_ELBO`` would bake a changing weight into its trace.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        warmup_elbo: ELBO | None = None,
        annealing: str = "kl",
    ) -> None:
        super().__init__(model, guide, elbo)
        if annealing not in ANNEALINGS:
            raise ValueError(f"annealing must be one of {ANNEALINGS}, got {annealing!r}")
        self.warmup_elbo = warmup_elbo if warmup_elbo is not None else elbo
        self.annealing = annealing
        self.annealer = ScaleLatents(1.0)

    @property
    def kl_weight(self) -> float:
        return self.annealer.scale

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self.annealer.scale = value

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        beta = self.annealer.scale
        if beta == 1.0:
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        if self.annealing == "temperature":
            model = poutine.scale(self.model, scale=beta)
            return self.warmup_elbo.differentiable_loss(model, self.guide, *args, **kwargs)
        with self.annealer:
            return self.warmup_elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
