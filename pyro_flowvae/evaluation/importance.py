"""Importance-sampled log-likelihood per datapoint (the IWAE bound) with PSIS diagnostics."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape
from torch import Tensor

from pyro_flowvae.data.batching import batch_args
from pyro_flowvae.errors import FlowVAEError

__all__ = ["ImportanceEstimate", "estimate_log_likelihood", "log_importance_weights", "elbo_per_datapoint"]

#: Name of the plate that vectorises over importance samples.
SAMPLE_PLATE = "_iw_samples"

#: Fewest samples for which arviz (0.x and arviz-stats) fits a Pareto tail of >= 5 draws.
MIN_PARETO_SAMPLES = 25


class _ScoreAtSample(Messenger):
    """Compute each sample site's ``log_prob`` the moment it is drawn.

    Pyro's flow transforms cache only the last ``(x, y)`` pair, and planar, radial and Sylvester
    flows have no inverse, so ``q(z | x)`` can be scored only while ``z`` is still the last output
    of its flow. Entered *outside* ``poutine.trace``, this messenger post-processes each site before
    the trace copies it, so the trace already holds the log-probability (scaled and masked as in
    :meth:`pyro.poutine.Trace.compute_log_prob`, which then skips the site).
    """

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg) or "log_prob" in msg:
            return
        log_p = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
        msg["unscaled_log_prob"] = log_p
        log_p = scale_and_mask(log_p, msg["scale"], msg["mask"])
        msg["log_prob"] = log_p
        msg["log_prob_sum"] = log_p.sum()


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise FlowVAEError(f"{name} must be an integer >= 1, got {value!r}")


def _site_log_prob_per_datapoint(
    site: dict, role: str, num_samples: int, data_plate: str, max_plate_nesting: int
) -> tuple[Tensor, int]:
    """Reduce a site's log-probability to shape ``(num_samples, B)``; also return ``B``."""
    name = site["name"]
    frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)
    if frame is None:
        plates = [f.name for f in site["cond_indep_stack"] if f.name != SAMPLE_PLATE]
        raise FlowVAEError(
            f"{role} sample site {name!r} is outside the data plate {data_plate!r} (its plates: {plates}). "
            "A site shared by all datapoints (a global latent, or a factor or observation outside the "
            "plate) couples them, so log p(x) per datapoint is undefined. Put the site inside "
            f"pyro.plate({data_plate!r}, ...), or pass data_plate= if the plate has another name."
        )
    log_p = site["log_prob"]
    sample_dim = -(max_plate_nesting + 1)
    if log_p.dim() > max_plate_nesting + 1:
        raise FlowVAEError(
            f"{role} site {name!r} has log_prob of shape {tuple(log_p.shape)}, more batch dims than "
            f"max_plate_nesting + 1 = {max_plate_nesting + 1}; pass a larger max_plate_nesting"
        )
    # Plates broadcast every site's batch shape, so these dims exist; guard against hand-made sites.
    log_p = log_p.reshape((1,) * (max_plate_nesting + 1 - log_p.dim()) + tuple(log_p.shape))
    ndim = log_p.dim()
    keep = (ndim + sample_dim, ndim + frame.dim)
    other = [d for d in range(ndim) if d not in keep]
    if other:
        log_p = log_p.sum(other)  # dims keep their order: (samples, data)
    return log_p.expand(num_samples, frame.size), frame.size


def log_importance_weights(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    **kwargs: Any,
) -> Tensor:
    r"""Log importance weights of ``num_samples`` guide draws, kept per datapoint.

    .. math::

        \log w_{kb} = \log p(x_b, z_{kb}) - \log q(z_{kb} \mid x_b),
        \qquad z_{kb} \sim q(z \mid x_b),

    where :math:`\log p(x_b, z_{kb})` sums every model sample site (latent, observed and
    ``pyro.factor``) and :math:`\log q` every non-observed guide sample site, each reduced over all
    batch dims except the sample dim and the dim of the plate named ``data_plate``. Scales and masks
    (``poutine.scale``, ``poutine.mask``) apply as in Pyro's ELBOs.

    Model and guide run once each, vectorised in ``pyro.plate("_iw_samples", num_samples,
    dim=-(max_plate_nesting + 1))``; the model is replayed on the guide trace. Each guide site is
    scored the moment it is drawn, inside the trace that drew it, because Pyro's flow transforms
    (planar, radial, Sylvester) have no inverse and cache only their last ``(x, y)`` pair.
    Gradients flow unless the caller disables them.

    Unlike :func:`pyro.infer.importance.vectorized_importance_weights`, which sums over the data
    plate, this keeps one weight per datapoint, as the IWAE bound [1] needs.

    [1] Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted Autoencoders.
    ICLR 2016. [arXiv:1509.00519]

    :param model: the model program; ``model(*args, **kwargs)``.
    :param guide: the guide program q(z | x), called with the same arguments.
    :param num_samples: number of draws K per datapoint.
    :param data_plate: name of the plate over datapoints; every sample site must lie inside it.
    :param max_plate_nesting: how many plates (data plate included) the model and guide nest.
    :returns: tensor of shape ``(num_samples, B)``, B the data plate's size.
    :raises FlowVAEError: on bad arguments or a sample site outside the data plate.
    """
    _check_positive_int("num_samples", num_samples)
    _check_positive_int("max_plate_nesting", max_plate_nesting)
    sample_dim = -(max_plate_nesting + 1)

    def vectorised(fn: Callable[..., Any]) -> Callable[..., Any]:
        def _fn(*a: Any, **kw: Any) -> Any:
            with pyro.plate(SAMPLE_PLATE, num_samples, dim=sample_dim):
                return fn(*a, **kw)

        return _fn

    with _ScoreAtSample():
        guide_trace = poutine.trace(vectorised(guide)).get_trace(*args, **kwargs)
    # q is summed (and global guide sites refused) before the model runs, which might fail on them
    log_q, size_q = _sum_per_datapoint(guide_trace, "guide", num_samples, data_plate, max_plate_nesting)
    with _ScoreAtSample():
        model_trace = poutine.trace(poutine.replay(vectorised(model), trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting + 1)
    log_p, size_p = _sum_per_datapoint(model_trace, "model", num_samples, data_plate, max_plate_nesting)
    if log_p is None:
        raise FlowVAEError("the model has no sample site, so there is no likelihood to estimate")
    if log_q is None:
        return log_p
    if size_p != size_q:
        raise FlowVAEError(f"the data plate {data_plate!r} has size {size_p} in the model but {size_q} in the guide")
    return log_p - log_q


def _sum_per_datapoint(
    trace: poutine.Trace, role: str, num_samples: int, data_plate: str, max_plate_nesting: int
) -> tuple[Tensor | None, int | None]:
    """Sum a trace's sample sites (the guide's latent ones only) to shape ``(num_samples, B)``."""

    def scored(name: str, site: dict) -> bool:
        if site["type"] != "sample" or site_is_subsample(site):
            return False
        return role == "model" or not site["is_observed"]

    trace.compute_log_prob(scored)  # a no-op for the sites scored as they were drawn
    total: Tensor | None = None
    batch_size: int | None = None
    for name, site in trace.nodes.items():
        if not scored(name, site):
            continue
        if is_validation_enabled():
            check_site_shape(site, max_plate_nesting + 1)
        log_p, size = _site_log_prob_per_datapoint(site, role, num_samples, data_plate, max_plate_nesting)
        if batch_size is not None and size != batch_size:
            raise FlowVAEError(
                f"{role} site {name!r} is in a data plate {data_plate!r} of size {size}, "
                f"but other sites saw size {batch_size}"
            )
        batch_size = size
        total = log_p if total is None else total + log_p
    return total, batch_size


def _load_pareto_k() -> Callable[[np.ndarray], np.ndarray]:
    """Return ``f(log_w) -> k``: PSIS Pareto-k of importance weights along the last axis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.x announces its 1.0 refactor
        try:
            import arviz
        except ImportError:
            arviz = None
    if arviz is not None and str(arviz.__version__).split(".")[0] == "0" and hasattr(arviz, "psislw"):
        # arviz 0.x: psislw(log_weights, reff) smooths the log *weights*; sample axis is the last one.
        return lambda log_w: np.asarray(arviz.psislw(log_w, reff=1.0)[1])
    try:
        from arviz_stats.base import array_stats
    except ImportError:
        raise ImportError(
            "the Pareto-k diagnostic needs arviz<1 (arviz.psislw) or arviz-stats "
            "(arviz_stats.base.array_stats.psislw); install one of them, or pass pareto_k=False"
        ) from None
    # arviz-stats expects log-likelihood values (PSIS-LOO ratios are 1/p) and negates them itself.
    return lambda log_w: np.asarray(array_stats.psislw(-log_w, r_eff=1.0, axis=-1)[1])


def _pareto_k(log_w: np.ndarray, eps: float) -> np.ndarray:
    """Pareto-k per row of ``log_w`` (rows: datapoints, columns: the K samples).

    Rows whose log weights agree to rounding (spread at most ``1024 * eps * max(1, |log w|)``, ``eps``
    the machine epsilon of the dtype they were computed in) come from an exact guide: the weights
    are bounded, and we report the k -> -inf limit instead of fitting a tail to rounding noise (arviz
    would often report ``inf``, "cannot fit", because the quantised top weights tie). Rows with a
    NaN or ``+inf`` log weight get NaN.
    """
    fit = _load_pareto_k()
    k = np.full(log_w.shape[0], np.nan)
    bad = np.isnan(log_w).any(axis=1) | np.isposinf(log_w).any(axis=1)
    with np.errstate(all="ignore"):
        top = log_w.max(axis=1)
        spread = top - log_w.min(axis=1)
        constant = ~bad & (spread <= 1024 * eps * np.maximum(1.0, np.abs(top)))
    k[constant] = -np.inf
    todo = ~bad & ~constant
    if todo.any():
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow on heavy tails is expected
            k[todo] = fit(np.ascontiguousarray(log_w[todo], dtype=np.float64))
    return k


@dataclass
class ImportanceEstimate:
    r"""Per-datapoint importance-sampling estimates of log p(x) (see :func:`estimate_log_likelihood`).

    :ivar log_px: ``(N,)`` IWAE estimate :math:`\log \frac1K \sum_k w_k` per datapoint.
    :ivar elbo: ``(N,)`` mean log weight :math:`\frac1K \sum_k \log w_k`, the K-sample average
        ELBO estimate; ``log_px >= elbo`` datapoint by datapoint (Jensen).
    :ivar pareto_k: ``(N,)`` PSIS Pareto-k of each datapoint's weights, or None when not computed
        (``pareto_k=False``, or fewer than 25 samples). ``k > 0.7``: that estimate is unreliable.
    :ivar num_samples: K, importance samples per datapoint.
    """

    log_px: Tensor
    elbo: Tensor
    pareto_k: Tensor | None
    num_samples: int

    @staticmethod
    def _mean_stderr(x: Tensor) -> tuple[float, float]:
        x = x.detach().cpu().double()  # one transfer; float64 is not on every device (MPS)
        n = x.numel()
        if n < 2:
            return x.mean().item(), math.nan
        mean_std = torch.stack([x.mean(), x.std() / math.sqrt(n)]).tolist()
        return mean_std[0], mean_std[1]

    @property
    def num_datapoints(self) -> int:
        """N, the number of datapoints."""
        return self.log_px.numel()

    @property
    def mean_log_px(self) -> float:
        """Mean over datapoints of the log p(x) estimates."""
        return self._mean_stderr(self.log_px)[0]

    @property
    def stderr_log_px(self) -> float:
        """Standard error of :attr:`mean_log_px` across datapoints, std / sqrt(N) (NaN if N < 2)."""
        return self._mean_stderr(self.log_px)[1]

    @property
    def mean_elbo(self) -> float:
        """Mean over datapoints of the ELBO estimates."""
        return self._mean_stderr(self.elbo)[0]

    @property
    def stderr_elbo(self) -> float:
        """Standard error of :attr:`mean_elbo` across datapoints, std / sqrt(N) (NaN if N < 2)."""
        return self._mean_stderr(self.elbo)[1]

    def pareto_k_share(self, threshold: float = 0.7) -> float | None:
        """Share of datapoints whose Pareto-k exceeds ``threshold`` (None without Pareto-k)."""
        if self.pareto_k is None:
            return None
        return (self.pareto_k > threshold).sum().item() / self.pareto_k.numel()

    def summary(self) -> dict[str, float | int | None]:
        """Plain-float summary: means, standard errors, Pareto-k share above 0.7 and maximum."""
        log_px, log_px_se = self._mean_stderr(self.log_px)
        elbo, elbo_se = self._mean_stderr(self.elbo)
        share: float | None = None
        k_max: float | None = None
        if self.pareto_k is not None:
            k = self.pareto_k.detach().double().cpu()
            share = (k > 0.7).double().mean().item()
            finite = k[~torch.isnan(k)]
            k_max = finite.max().item() if finite.numel() else None
        return {
            "log_px": log_px,
            "log_px_stderr": log_px_se,
            "elbo": elbo,
            "elbo_stderr": elbo_se,
            "num_samples": self.num_samples,
            "num_datapoints": self.num_datapoints,
            "pareto_k_share_above_0_7": share,
            "pareto_k_max": k_max,
        }


def estimate_log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    data: Tensor,
    *args: Any,
    num_samples: int,
    sample_chunk: int = 500,
    data_chunk: int = 100,
    pareto_k: bool = True,
    progress: bool = False,
    data_plate: str = "data",
    max_plate_nesting: int = 1,
    **kwargs: Any,
) -> ImportanceEstimate:
    r"""Estimate log p(x) per datapoint by importance sampling from the guide (the IWAE bound [1]).

    .. math::

        \log \hat p(x_b) = \log \frac{1}{K} \sum_{k=1}^{K}
            \frac{p(x_b, z_{kb})}{q(z_{kb} \mid x_b)}, \qquad z_{kb} \sim q(z \mid x_b),

    a lower bound in expectation, :math:`\mathbb{E}[\log \hat p(x)] \le \log p(x)`, that rises with
    K to :math:`\log p(x)` [1]. Also returned: the mean log weight (the K-sample average ELBO) and,
    with ``pareto_k``, the PSIS Pareto shape :math:`\hat k` of each datapoint's weights [2]:
    :math:`\hat k < 0.5` the weights have finite variance; :math:`\hat k \le 0.7` the estimate is
    usable; :math:`\hat k > 0.7` it is unreliable (the guide's tails are too light for this
    datapoint, and the estimate may be far below log p(x) whatever K). Weights equal up to rounding
    (an exact posterior) give :math:`-\infty`, the bounded-weights limit; for ``num_samples < 25``
    no tail can be fitted and ``pareto_k`` is None.

    The model and guide are called as ``model(data[i:j], *args, **kwargs)`` on chunks of at most
    ``data_chunk`` datapoints, each drawing at most ``sample_chunk`` samples at once, under
    :func:`torch.no_grad`; chunks are combined by log-sum-exp, so memory is bounded by
    ``sample_chunk * data_chunk`` weights (plus ``num_samples * data_chunk`` floats with
    ``pareto_k``), never ``num_samples * len(data)``. Put networks in ``eval()`` mode first.

    [1] Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted Autoencoders.
    ICLR 2016. [arXiv:1509.00519]

    [2] Aki Vehtari, Daniel Simpson, Andrew Gelman, Yuling Yao, Jonah Gabry. Pareto Smoothed
    Importance Sampling. JMLR 25(72), 2024. [arXiv:1507.02646]

    :param model: the model program; its datapoints live in ``pyro.plate(data_plate, ...)``.
    :param guide: the guide program q(z | x), same signature.
    :param data: tensor whose first dim indexes datapoints.
    :param num_samples: K, importance samples per datapoint (Burda et al. use 5000).
    :param sample_chunk: most samples drawn in one vectorised call.
    :param data_chunk: most datapoints passed in one call.
    :param pareto_k: compute the PSIS Pareto-k diagnostic (needs arviz).
    :param progress: show a tqdm progress bar over data chunks.
    :param data_plate: name of the plate over datapoints.
    :param max_plate_nesting: how many plates (data plate included) the model and guide nest.
    :returns: an :class:`ImportanceEstimate`, tensors of shape ``(len(data),)`` on ``data.device``.
    :raises FlowVAEError: on bad arguments or a sample site outside the data plate.
    """
    _check_positive_int("num_samples", num_samples)
    _check_positive_int("sample_chunk", sample_chunk)
    _check_positive_int("data_chunk", data_chunk)
    _check_positive_int("max_plate_nesting", max_plate_nesting)
    if not isinstance(data, Tensor) or data.dim() < 1 or data.shape[0] < 1:
        got = f"shape {tuple(data.shape)}" if isinstance(data, Tensor) else type(data).__name__
        raise FlowVAEError(f"data must be a tensor with at least one datapoint along dim 0, got {got}")
    with_k = pareto_k and num_samples >= MIN_PARETO_SAMPLES
    if with_k:
        _load_pareto_k()  # fail early if arviz is missing, not after the sampling

    n = data.shape[0]
    starts = range(0, n, data_chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="log p(x)", unit="chunk")
    log_px, elbo, ks = [], [], []
    with torch.no_grad():
        for i in starts:
            batch = data[i : i + data_chunk]
            lse: Tensor | None = None
            total: Tensor | None = None
            kept: list[Tensor] = []
            for s in range(0, num_samples, sample_chunk):
                k = min(sample_chunk, num_samples - s)
                log_w = log_importance_weights(
                    model,
                    guide,
                    batch,
                    *args,
                    num_samples=k,
                    data_plate=data_plate,
                    max_plate_nesting=max_plate_nesting,
                    **kwargs,
                )
                if log_w.shape[1] != batch.shape[0]:
                    raise FlowVAEError(
                        f"the data plate {data_plate!r} has size {log_w.shape[1]} but the data chunk has "
                        f"{batch.shape[0]} datapoints; size the plate from the data passed to the model"
                    )
                chunk_lse = torch.logsumexp(log_w, dim=0)
                lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
                total = log_w.sum(0) if total is None else total + log_w.sum(0)
                if with_k:
                    kept.append(log_w.T.detach().cpu().double())
            log_px.append(lse - math.log(num_samples))
            elbo.append(total / num_samples)
            if with_k:
                eps = torch.finfo(log_w.dtype).eps
                ks.append(torch.from_numpy(_pareto_k(torch.cat(kept, dim=1).numpy(), eps)))
    device = data.device
    log_px_t = torch.cat(log_px).to(device)
    k_t = torch.cat(ks).to(device=device, dtype=log_px_t.dtype) if with_k else None
    return ImportanceEstimate(log_px=log_px_t, elbo=torch.cat(elbo).to(device), pareto_k=k_t, num_samples=num_samples)


@torch.no_grad()
def elbo_per_datapoint(vae: Any, x: Any, num_samples: int = 1, batch_size: int = 1000) -> Tensor:
    """The ELBO of each row of x (a tensor or sequence data), averaged over ``num_samples`` draws of
    z ~ q(z|x); shape (N,)."""
    parts = []
    for start in range(0, x.shape[0], batch_size):
        chunk = batch_args(x[start : start + batch_size])
        log_w = log_importance_weights(vae.model, vae.guide, *chunk, num_samples=num_samples)
        parts.append(log_w.mean(0))
    return torch.cat(parts)
