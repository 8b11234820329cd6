"""Test-set metrics of an image VAE: ELBO, importance-sampled log p(x) with Pareto-k, KL per latent dimension,
active units."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_flowvae.config import EvalConfig
from pyro_flowvae.evaluation.importance import ImportanceEstimate
from pyro_flowvae.flows.health import flow_health

if TYPE_CHECKING:
    from pyro_flowvae.infer.distributed import DistInfo

__all__ = ["evaluate", "importance_metrics", "latent_statistics", "spread_subset"]


@torch.no_grad()
def latent_statistics(
    vae: nn.Module, x: Tensor, num_samples: int = 64, batch_size: int = 500, threshold: float = 0.01
) -> dict[str, Any]:
    r"""KL per latent dimension and the number of active units.

    Active units (Burda et al. 2016, arXiv:1509.00519, section 5.2): dimension u is active when
    :math:`\mathrm{Cov}_x\left(\mathbb{E}_{q(z \mid x)}[z_u]\right) > 0.01`.

    KL per dimension: :math:`\mathrm{KL}(q(z_u \mid x) \,\|\, \mathcal{N}(0, 1))` averaged over x. For the
    mean-field guide this is exact; a flow's q(z|x) does not factorise, so for flows it is the KL of the
    moment-matched Gaussian :math:`\mathcal{N}(m_u, v_u)` (mean and variance from ``num_samples`` draws),
    :math:`\tfrac12 (v_u + m_u^2 - 1 - \log v_u)`, a summary of how much each dimension is used.
    """
    means, kls = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        posterior = vae.guide.get_posterior(xb)
        if isinstance(posterior, dist.TransformedDistribution):
            z = posterior.sample((num_samples,))
            m, v = z.mean(0), z.var(0)
        else:  # the Gaussian base itself: exact moments
            m, v = posterior.mean, posterior.variance
        means.append(m)
        kls.append(0.5 * (v + m.pow(2) - 1.0 - v.log()))
    mean = torch.cat(means)
    kl_per_dim = torch.cat(kls).mean(0)
    activity = mean.var(0) if mean.shape[0] > 1 else torch.zeros_like(kl_per_dim)
    return {
        "kl_per_dim": kl_per_dim.tolist(),
        "active_units": int((activity > threshold).sum()),
        "activity_per_dim": activity.tolist(),
    }


def spread_subset(n: int, limit: int | None) -> Tensor:
    """Indices of ``limit`` of ``n`` examples spread evenly over them, ``i * n // limit`` for i < limit (all of them
    when ``limit`` is None or at least n).

    Test sets are often ordered: the first 500 images of the binarized MNIST test set carry 19% more ink
    than the whole set and score about 10 nats worse, so a subset of the first N would not be a sample of it.
    """
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.arange(limit) * n // limit


#: Test datapoints (spread over the test set) on which :func:`~pyro_flowvae.flows.health.flow_health` runs.
HEALTH_DATAPOINTS = 500


def evaluate(
    vae: nn.Module,
    x: Tensor,
    config: EvalConfig,
    dist_info: DistInfo | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the rows of x (nats per datapoint): the ELBO and log p(x) from the same K importance samples
    (the ELBO is their mean log weight, log p(x) the log of their mean weight), with standard errors, the share
    of datapoints whose importance weights have Pareto k > 0.7 (an unreliable log p(x)), the KL per latent
    dimension, the active units and the flow-health record (``flow_health``:
    :func:`~pyro_flowvae.flows.health.flow_health` on 500 of the datapoints, with ``gap`` = log p(x) - ELBO).

    The importance sampling runs chunk by chunk, each chunk seeded from ``seed``
    (:func:`~pyro_flowvae.infer.distributed.distributed_log_likelihood`), split over the ranks of ``dist_info``
    when there is a process group: the figures are the same for any number of processes, and every rank returns
    them. The latent statistics are computed on every rank with the RNG seeded by ``seed``."""
    from pyro_flowvae.infer.distributed import DistInfo, distributed_log_likelihood, seeded, step_seed

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
        with seeded(step_seed(seed, 0, 1, "eval"), x.device):
            latent = latent_statistics(vae, x)
    metrics = {**importance_metrics(estimate), **latent}
    if hasattr(vae.guide, "get_flow_input"):  # an AmortizedFlowGuide
        subset = x[spread_subset(x.shape[0], HEALTH_DATAPOINTS).to(x.device)]
        health = flow_health(vae.guide, subset, seed=seed)
        health["gap"] = metrics["test_log_px"] - metrics["test_elbo"]
        metrics["flow_health"] = health
    return metrics


def importance_metrics(estimate: ImportanceEstimate) -> dict[str, Any]:
    """The test figures ``metrics.json`` reports from an importance-sampling estimate (nats per datapoint)."""
    s = estimate.summary()
    k_max = s["pareto_k_max"]
    return {
        "test_elbo": s["elbo"],
        "test_elbo_stderr": s["elbo_stderr"],
        "test_log_px": s["log_px"],
        "test_log_px_stderr": s["log_px_stderr"],
        "iw_samples": estimate.num_samples,
        "num_test": estimate.num_datapoints,
        "pareto_k_share_above_0_7": s["pareto_k_share_above_0_7"],
        # -inf means the weights are all equal (k undefined, the estimate exact); JSON has no -inf
        "pareto_k_max": k_max if k_max is not None and math.isfinite(k_max) else None,
    }
