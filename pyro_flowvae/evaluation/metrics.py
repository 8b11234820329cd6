"""Scores for imputations (masked NLL and MSE), latent representations (AUROC of a probe) and forecasts."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from pyro_flowvae.errors import DataError

__all__ = [
    "forecast_metrics",
    "logistic_regression_auroc",
    "masked_bernoulli_nll",
    "masked_mse",
    "multiclass_auroc",
    "roc_auc",
]


def _masked(pred: Tensor, truth: Tensor, missing: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    try:
        pred, truth, missing = torch.broadcast_tensors(pred, truth, missing.to(pred.dtype))
    except RuntimeError:
        raise DataError(
            f"{name}: shapes {tuple(pred.shape)} (prediction), {tuple(truth.shape)} (truth) and "
            f"{tuple(missing.shape)} (missing) do not broadcast; give tensors of the data's shape (N, T, D)"
        ) from None
    if not bool(missing.any()):
        raise DataError(f"{name}: no entry is marked missing, so there is nothing to score; pass missing = 1 - mask")
    return pred, truth, missing


def masked_bernoulli_nll(pred: Tensor, truth: Tensor, missing: Tensor, *, logits: bool = False) -> Tensor:
    r"""Mean negative log-likelihood (nats) of binary ``truth`` under Bernoulli(``pred``) over the missing entries.

    .. math:: \mathrm{NLL} = -\frac{\sum_i m_i\,[\,y_i \log p_i + (1 - y_i) \log(1 - p_i)\,]}{\sum_i m_i}

    with :math:`m` = ``missing`` (1 where the value was hidden from the model). ``pred`` holds probabilities
    :math:`p`, or logits when ``logits=True`` (numerically safer); it may carry leading sample dimensions
    that broadcast against ``truth``. This is the imputation score of the GP-VAE on Healing MNIST.

    [1] Vincent Fortuin et al. GP-VAE: Deep Probabilistic Time Series Imputation. AISTATS 2020.
    """
    pred, truth, missing = _masked(pred, truth.to(pred.dtype), missing, "masked_bernoulli_nll")
    if logits:
        nll = F.binary_cross_entropy_with_logits(pred, truth, reduction="none")
    else:
        if bool(((pred < 0) | (pred > 1)).any()):
            raise DataError("masked_bernoulli_nll: probabilities must lie in [0, 1]; pass logits=True for logits")
        nll = F.binary_cross_entropy(pred, truth, reduction="none")  # log clamped at -100, as torch does
    return (nll * missing).sum() / missing.sum()


def masked_mse(pred: Tensor, truth: Tensor, missing: Tensor) -> Tensor:
    r"""Mean squared error over the missing entries: :math:`\sum_i m_i (\hat{x}_i - x_i)^2 / \sum_i m_i`."""
    pred, truth, missing = _masked(pred, truth.to(pred.dtype), missing, "masked_mse")
    return ((pred - truth) ** 2 * missing).sum() / missing.sum()


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks."""
    order = values.argsort()
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    r"""Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive), by Mann-Whitney U.

    .. math:: \mathrm{AUC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-} = P(s_+ > s_-) + \tfrac12 P(s_+ = s_-)

    where :math:`R_+` is the sum of the positives' ranks, tied scores taking the mean of their ranks.
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).to(torch.float64).cpu()
    labels = torch.as_tensor(labels).detach().reshape(-1).cpu()
    if scores.shape != labels.shape:
        raise DataError(f"roc_auc: {scores.numel()} scores but {labels.numel()} labels; give one label per score")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise DataError("roc_auc: labels must be 0 or 1; for several classes use multiclass_auroc")
    if not bool(torch.isfinite(scores).all()):
        raise DataError("roc_auc: scores must be finite")
    positive = labels.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"roc_auc needs both classes, got {n_pos} positive and {n_neg} negative labels")
    rank_sum = float(_average_ranks(scores)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def multiclass_auroc(probs: Tensor, labels: Tensor) -> float:
    r"""Macro-averaged one-vs-rest AUROC: the mean over classes k of ``roc_auc(probs[:, k], labels == k)``.

    ``probs`` is (N, K) (probabilities or any scores per class), ``labels`` (N,) in 0..K-1. Classes absent from
    ``labels`` (no positive to rank) are left out of the mean.
    """
    probs = torch.as_tensor(probs).detach()
    labels = torch.as_tensor(labels).detach().reshape(-1)
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0]:
        raise DataError(
            f"multiclass_auroc: probs must be (N, K) with N = {labels.shape[0]} labels, got {tuple(probs.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]):
        raise DataError(f"multiclass_auroc: labels must lie in 0..{probs.shape[1] - 1} (one column per class)")
    present = [k for k in range(probs.shape[1]) if 0 < int((labels == k).sum()) < labels.numel()]
    if not present:
        raise DataError("multiclass_auroc needs at least two classes among the labels")
    return sum(roc_auc(probs[:, k], (labels == k).long()) for k in present) / len(present)


def logistic_regression_auroc(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-3, max_iter: int = 200
) -> float:
    r"""Test AUROC of a multinomial logistic regression fitted on (``train_x``, ``train_y``): a linear probe.

    Features are standardised with the training mean and standard deviation; weights :math:`W` and biases
    :math:`b` minimise the mean cross-entropy plus :math:`\lambda \|W\|^2` (``l2``; biases not penalised), by
    L-BFGS with a strong-Wolfe line search in float64. The score is :func:`multiclass_auroc` of the predicted
    class probabilities on the test set. Used to rate latent representations (e.g. of Healing MNIST digits).
    """
    train_x = torch.as_tensor(train_x).detach().to(torch.float64).cpu()
    test_x = torch.as_tensor(test_x).detach().to(torch.float64).cpu()
    train_y = torch.as_tensor(train_y).detach().reshape(-1).long().cpu()
    test_y = torch.as_tensor(test_y).detach().reshape(-1).long().cpu()
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError(
            f"logistic_regression_auroc: features must be (N, F) with the same F, got {tuple(train_x.shape)} and "
            f"{tuple(test_x.shape)}"
        )
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise DataError("logistic_regression_auroc: give one label per row of features")
    if int(train_y.min()) < 0 or int(test_y.min()) < 0:
        raise DataError("logistic_regression_auroc: labels must be class indices >= 0")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    mean = train_x.mean(0)
    std = train_x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_z @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        probs = torch.softmax(test_z @ weight + bias, dim=-1)
    return multiclass_auroc(probs, test_y)


def forecast_metrics(mean: Tensor, lower: Tensor, upper: Tensor, truth: Tensor) -> dict[str, float]:
    r"""Point and interval accuracy of a forecast.

    ``rmse`` :math:`= \sqrt{\frac1H \sum_h (\hat{y}_h - y_h)^2}`, ``mape`` :math:`= \frac{100}{H} \sum_h
    |\hat{y}_h - y_h| / |y_h|` (in percent), ``coverage`` = share of :math:`y_h` inside
    [``lower``, ``upper``] (compare with the interval's nominal level).
    """
    mean, lower, upper, truth = (torch.as_tensor(v).detach().to(torch.float64) for v in (mean, lower, upper, truth))
    if not mean.shape == lower.shape == upper.shape == truth.shape:
        raise DataError(
            f"forecast_metrics: mean {tuple(mean.shape)}, lower {tuple(lower.shape)}, upper {tuple(upper.shape)} "
            f"and truth {tuple(truth.shape)} must have the same shape"
        )
    if truth.numel() == 0:
        raise DataError("forecast_metrics: nothing to score (empty truth)")
    if bool((truth == 0).any()):
        raise DataError("forecast_metrics: MAPE divides by the true values, and some are 0")
    err = mean - truth
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "mape": float((err.abs() / truth.abs()).mean() * 100),
        "coverage": float(((truth >= lower) & (truth <= upper)).to(torch.float64).mean()),
    }
