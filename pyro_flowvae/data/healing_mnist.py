"""Healing MNIST: sequences of a rotating MNIST digit with pixels missing at random or not at random."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.datasets import MNIST

from pyro_flowvae.data.paths import default_cache_dir
from pyro_flowvae.data.sequences import SequenceData, SequenceSplits
from pyro_flowvae.data.torchvision_sets import read_torchvision_set
from pyro_flowvae.errors import ConfigError, DataError

__all__ = [
    "MISSING_MODES",
    "load_healing_mnist",
    "make_healing_mnist",
    "mnar_base_prob",
    "missingness_stats",
    "random_walk_angles",
    "rotate_frames",
]

#: how pixels go missing: completely at random, more often when white (not at random), or whole frames at once
#: besides pixels completely at random in the other frames
MISSING_MODES = ("mnar", "mcar", "frames")
#: sequences rotated per chunk: bounds the memory of the sampling grids (about 100 MB), not the result
_CHUNK = 1024
#: bins of the pixel-value histogram from which the MNAR base probability is solved
_BINS = 1024
_MAKE_KEYS = (
    "num_frames",
    "rotation_std",
    "max_start_angle",
    "missing",
    "missing_rate",
    "white_ratio",
    "max_prob",
    "binarize",
    "missing_frames",
)


def random_walk_angles(
    num_sequences: int,
    num_frames: int,
    rotation_std: float,
    *,
    max_start_angle: float = 180.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Angles in degrees (N, T) of a Gaussian random walk with a uniform start.

    .. math::
        a_1 \sim \mathcal{U}(-A, A), \qquad a_{t+1} = a_t + \epsilon_t, \quad \epsilon_t \sim \mathcal{N}(0, s^2),

    with :math:`A` = ``max_start_angle`` and :math:`s` = ``rotation_std``. Draws ``rand(N)`` then
    ``randn(N, T - 1)`` from ``generator``, in that order.
    """
    start = (torch.rand(num_sequences, generator=generator, dtype=torch.float64) * 2 - 1) * max_start_angle
    steps = torch.randn(num_sequences, max(num_frames - 1, 0), generator=generator, dtype=torch.float64)
    walk = torch.cat([start[:, None], steps * rotation_std], dim=1)
    return walk.cumsum(dim=1)[:, :num_frames]


def rotate_frames(images: Tensor, angles: Tensor) -> Tensor:
    r"""Each image rotated by each of its angles: (N, H, W) and (N, T) degrees -> (N, T, H, W).

    Counter-clockwise about the image centre, bilinear, zero outside the image: the same as
    ``torchvision.transforms.v2.functional.rotate(image, angle, InterpolationMode.BILINEAR)`` per frame, done
    for all frames at once with ``affine_grid`` / ``grid_sample``. An output pixel at centred coordinates
    :math:`(u, v)` (x right, y down) reads the input at :math:`(u \cos a - v \sin a,\; u \sin a + v \cos a)`.
    """
    n, t = angles.shape
    h, w = images.shape[-2:]
    rad = torch.deg2rad(angles.to(torch.float64)).reshape(-1)
    cos, sin = rad.cos(), rad.sin()
    zero = torch.zeros_like(cos)
    # normalised coordinates scale x by 2/W and y by 2/H: a rotation in pixels has these entries
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], -1), torch.stack([sin * w / h, cos, zero], -1)], dim=1
    ).to(images.dtype)
    src = images[:, None, None].expand(n, t, 1, h, w).reshape(n * t, 1, h, w)
    grid = F.affine_grid(theta, [n * t, 1, h, w], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, t, h, w)


def mnar_base_prob(
    counts: Tensor, sums: Tensor, *, missing_rate: float, white_ratio: float, max_prob: float
) -> tuple[float, float]:
    r"""Solve for :math:`p_b` so that the expected missing share is ``missing_rate``; return it and that share.

    A pixel of value :math:`v \in [0, 1]` goes missing with probability

    .. math::
        p(\text{missing} \mid v) = \min\big(p_b\,(1 + (r - 1)\,v),\; p_{\max}\big),

    (Fortuin et al. 2020: white pixels r times as likely to be missing as black ones). The mean of this over
    all pixels increases with :math:`p_b`, which is found by bisection. The pixels are summarised by a
    histogram: ``counts[b]`` pixels whose values sum to ``sums[b]``, each bin evaluated at its mean value
    (exact for binary frames, whose values all fall in the end bins).

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Rätsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    """
    counts, sums = counts.to(torch.float64), sums.to(torch.float64)
    keep = counts > 0
    weight = counts[keep] / counts.sum()
    slope = 1.0 + (white_ratio - 1.0) * (sums[keep] / counts[keep])

    def share(p: float) -> float:
        return float((weight * (p * slope).clamp(max=max_prob)).sum())

    lo, hi = 0.0, max_prob / min(1.0, white_ratio)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if share(mid) < missing_rate else (lo, mid)
    p_b = 0.5 * (lo + hi)
    return p_b, share(p_b)


def _missing_counts(data: SequenceData) -> tuple[int, int, int, int]:
    if data.truth is None:
        raise DataError("missingness_stats needs SequenceData.truth, to tell white pixels from black ones")
    n_white = miss_white = miss_all = 0
    for start in range(0, len(data), _CHUNK):  # in chunks: bool temporaries of the whole data set are GBs
        white = data.truth[start : start + _CHUNK] > 0.5
        miss = data.mask[start : start + _CHUNK] == 0
        n_white += int(torch.count_nonzero(white))
        miss_white += int(torch.count_nonzero(miss & white))
        miss_all += int(torch.count_nonzero(miss))
    return n_white, data.truth.numel() - n_white, miss_white, miss_all - miss_white


def _stats_from_counts(n_white: int, n_black: int, miss_white: int, miss_black: int) -> dict[str, float]:
    white_share = miss_white / max(n_white, 1)
    black_share = miss_black / max(n_black, 1)
    return {
        "missing_share": (miss_white + miss_black) / max(n_white + n_black, 1),
        "white_missing_share": white_share,
        "black_missing_share": black_share,
        "white_black_ratio": white_share / black_share if black_share > 0 else math.inf,
        "white_share": n_white / max(n_white + n_black, 1),
    }


def missingness_stats(data: SequenceData) -> dict[str, float]:
    """The achieved missingness of data with ``truth``: overall share, share among white (truth > 0.5) and
    black pixels, their ratio, and the share of white pixels."""
    return _stats_from_counts(*_missing_counts(data))


def _check_make_args(
    images: Tensor,
    labels: Tensor | None,
    num_frames: int,
    rotation_std: float,
    missing: str,
    missing_rate: float,
    white_ratio: float,
    max_prob: float,
    missing_frames: int = 0,
) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() not in (2, 3):
        raise DataError(
            f"images must be a tensor (N, H, W) of grey levels in [0, 1], got {getattr(images, 'shape', images)}"
        )
    if images.dim() == 2:
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise DataError(f"flat images (N, D) must be square, but D = {images.shape[1]}; pass them as (N, H, W)")
        images = images.reshape(-1, side, side)
    images = images.float() if not images.is_floating_point() else images
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise DataError(
            f"images must hold grey levels in [0, 1], got range [{float(images.min()):g}, {float(images.max()):g}]; "
            "divide uint8 images by 255"
        )
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != images.shape[:1]):
        raise DataError(
            f"labels must be a tensor of shape ({images.shape[0]},), got {getattr(labels, 'shape', labels)}"
        )
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise DataError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not rotation_std >= 0:
        raise DataError(f"rotation_std must be >= 0 degrees, got {rotation_std!r}")
    if missing not in MISSING_MODES:
        raise DataError(f"missing must be one of {', '.join(MISSING_MODES)}, got {missing!r}")
    if not 0 <= missing_rate <= 1:
        raise DataError(f"missing_rate must lie in [0, 1], got {missing_rate!r}")
    if missing == "frames" and (
        isinstance(missing_frames, bool) or not isinstance(missing_frames, int) or not 0 <= missing_frames < num_frames
    ):
        raise DataError(
            f"missing_frames must be an integer in [0, num_frames - 1] = [0, {num_frames - 1}] (at least one frame "
            f"of each sequence stays observed), got {missing_frames!r}"
        )
    if missing == "mnar":
        if not 0 < max_prob <= 1:
            raise DataError(f"max_prob must lie in (0, 1], got {max_prob!r}")
        if missing_rate > max_prob:
            raise DataError(
                f"missing_rate = {missing_rate} cannot be reached when no pixel is missing with probability above "
                f"max_prob = {max_prob}; raise max_prob or lower missing_rate"
            )
        if not white_ratio > 0:
            raise DataError(f"white_ratio must be > 0, got {white_ratio!r}")
    return images


def _generate(
    images: Tensor,
    labels: Tensor | None,
    *,
    num_frames: int,
    rotation_std: float,
    max_start_angle: float,
    missing: str,
    missing_rate: float,
    white_ratio: float,
    max_prob: float,
    binarize: bool,
    seed: int,
    missing_frames: int = 3,
) -> tuple[SequenceData, dict[str, float]]:
    images = _check_make_args(
        images, labels, num_frames, rotation_std, missing, missing_rate, white_ratio, max_prob, missing_frames
    )
    n, h, w = images.shape
    gen = torch.Generator().manual_seed(int(seed))
    angles = random_walk_angles(n, num_frames, rotation_std, max_start_angle=max_start_angle, generator=gen)
    truth = torch.empty(n, num_frames, h * w, dtype=images.dtype)
    counts = torch.zeros(_BINS, dtype=torch.float64)
    sums = torch.zeros(_BINS, dtype=torch.float64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        frames = rotate_frames(images[start:stop], angles[start:stop]).reshape(stop - start, num_frames, h * w)
        if binarize:
            frames = (frames > 0.5).to(images.dtype)
        truth[start:stop] = frames
        if missing == "mnar" and binarize:  # binary frames: only the end bins are used
            ones = float(torch.count_nonzero(frames))
            counts[0] += frames.numel() - ones
            counts[-1] += ones
            sums[-1] += ones
        elif missing == "mnar":
            flat = frames.reshape(-1).clamp(0, 1)
            bins = (flat * (_BINS - 1)).round().long()
            counts += torch.bincount(bins, minlength=_BINS).to(torch.float64)
            sums += torch.bincount(bins, weights=flat.to(torch.float64), minlength=_BINS)
    if missing == "mnar":
        base, expected = mnar_base_prob(
            counts, sums, missing_rate=missing_rate, white_ratio=white_ratio, max_prob=max_prob
        )
    else:
        base, expected = missing_rate, missing_rate
        if missing == "frames":
            share = missing_frames / num_frames
            expected = share + (1.0 - share) * missing_rate
    mask = torch.empty_like(truth)
    for start in range(0, n, _CHUNK):
        frames = truth[start : start + _CHUNK]
        if missing == "mnar":
            prob = (base * (1.0 + (white_ratio - 1.0) * frames)).clamp(max=max_prob)
        else:
            prob = torch.full_like(frames, missing_rate)
        mask[start : start + _CHUNK] = (torch.rand(frames.shape, generator=gen, dtype=frames.dtype) >= prob).to(
            frames.dtype
        )
    if missing == "frames" and missing_frames:  # k frames of each sequence, at uniformly random positions, hidden
        hidden = torch.rand(n, num_frames, generator=gen).argsort(dim=1)[:, :missing_frames]
        mask.scatter_(1, hidden.unsqueeze(-1).expand(-1, -1, h * w), 0.0)
    times = torch.arange(num_frames, dtype=images.dtype).expand(n, num_frames).clone()
    # built without SequenceData's checks, which hold by construction here (and would cost a few GB of
    # temporaries for 60000 sequences)
    data = SequenceData._trusted(
        x=truth * mask, mask=mask, times=times, truth=truth, labels=None if labels is None else labels.long()
    )
    return data, {"base_prob": base, "expected_missing_share": expected}


def make_healing_mnist(
    images: Tensor,
    labels: Tensor | None = None,
    *,
    num_frames: int = 10,
    rotation_std: float = 20.0,
    max_start_angle: float = 180.0,
    missing: str = "mnar",
    missing_rate: float = 0.6,
    white_ratio: float = 2.0,
    max_prob: float = 0.95,
    binarize: bool = True,
    seed: int = 0,
    missing_frames: int = 3,
) -> SequenceData:
    r"""Healing-MNIST sequences: each image rotating along a random walk, with pixels missing.

    Sequence i shows image i in ``num_frames`` frames at times 0, 1, ..., T - 1, rotated by the angles of
    :func:`random_walk_angles` (start uniform in [-``max_start_angle``, ``max_start_angle``] degrees, steps
    :math:`\mathcal{N}(0, \text{rotation\_std}^2)`), with bilinear interpolation (:func:`rotate_frames`), then
    thresholded at 0.5 when ``binarize`` (so that a Bernoulli likelihood is exact; white = 1). Frames are
    flattened to D = H * W. ``truth`` holds the complete frames and ``x`` the observed pixels (0 where missing).

    Missingness, drawn pixel by pixel:

    - ``"mcar"``: each pixel missing with probability ``missing_rate``;
    - ``"mnar"`` (Fortuin et al. 2020): :math:`p(\text{missing} \mid v) = \min(p_b (1 + (r - 1) v), p_{\max})`
      with :math:`r` = ``white_ratio`` and :math:`p_{\max}` = ``max_prob``, and :math:`p_b` solved by
      :func:`mnar_base_prob` so that the expected share of missing pixels over the generated frames equals
      ``missing_rate``. About 13% of MNIST pixels are white, so 60% missing with r = 2 would need
      :math:`p_b \approx 0.53` and white pixels missing with probability 1.06 > 1: the cap then holds white
      pixels at ``max_prob`` and the achieved white/black ratio is smaller than r (about 1.7 with the
      defaults). :func:`load_healing_mnist` records the achieved share and ratio in ``meta``;
      :func:`missingness_stats` computes them for any data with ``truth``;
    - ``"frames"``: each pixel missing with probability ``missing_rate`` (completely at random), and then
      ``missing_frames`` whole frames of each sequence, at uniformly random positions, hidden: a frame-wise model
      can only guess those, a prior over time interpolates along the rotation. The expected missing share is
      :math:`k/T + (1 - k/T)\,p`.

    ``images`` are (N, H, W) or square flat (N, H*W) grey levels in [0, 1]. Deterministic given ``seed``: a
    generator seeded with it draws the angles first, then the missing pixels. Vectorised over sequences
    (rotated in chunks of 1024 sequences).

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Rätsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    [2] Rahul G. Krishnan, Uri Shalit, David Sontag. Deep Kalman Filters. 2015. [arXiv:1511.05121]
    """
    data, _ = _generate(
        images,
        labels,
        num_frames=num_frames,
        rotation_std=rotation_std,
        max_start_angle=max_start_angle,
        missing=missing,
        missing_rate=missing_rate,
        white_ratio=white_ratio,
        max_prob=max_prob,
        binarize=binarize,
        seed=seed,
        missing_frames=missing_frames,
    )
    return data


def _read_mnist(
    root: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[MNIST, MNIST]:
    """The MNIST train and test sets (images and labels), extracted offline as :func:`load_data` does."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir("mnist")
    root_path = Path(root).expanduser() if root is not None else cache
    return read_torchvision_set(MNIST, root_path, cache, download)


def _count(name: str, value: Any, most: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise DataError(f"{name} must be an integer in [1, {most}] ({where}), got {value!r}")
    return value


def load_healing_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    num_train: int = 5000,
    num_valid: int = 500,
    num_test: int = 1000,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    **make_kwargs: Any,
) -> SequenceSplits:
    """Healing MNIST as :class:`SequenceSplits` (frame_shape (1, 28, 28), D = 784, labels = digits).

    train and valid are made from disjoint random subsets of the 60000 MNIST training images, test from a
    random subset of the 10000 test images (subsets drawn with ``seed``); each split is generated by
    :func:`make_healing_mnist` with its own seed derived from ``seed`` and with ``make_kwargs``
    (``num_frames``, ``rotation_std``, ``max_start_angle``, ``missing``, ``missing_rate``, ``white_ratio``,
    ``max_prob``, ``binarize``).

    ``root`` is the folder holding ``MNIST/raw`` (the original ``.gz`` files are extracted offline, into
    ``cache_dir`` when ``root`` is read-only), as in :func:`~pyro_flowvae.data.load_data`.

    ``meta`` records the generation settings, and for each split (``meta["splits"][split]``) the MNIST
    ``source`` and ``indices``, the MNAR ``base_prob`` and ``expected_missing_share``, and the achieved
    ``missing_share``, ``white_black_ratio`` (below ``white_ratio`` when ``max_prob`` caps it) and
    ``white_share`` (:func:`missingness_stats`); ``meta["missing_share"]`` and ``meta["white_black_ratio"]``
    are those of the three splits together.
    """
    unknown = sorted(set(make_kwargs) - set(_MAKE_KEYS))
    if unknown:
        raise ConfigError(
            f"load_healing_mnist got unknown option(s) {', '.join(unknown)}; the options of make_healing_mnist "
            f"are {', '.join(_MAKE_KEYS)}"
        )
    train_set, test_set = _read_mnist(root, cache_dir, download)
    n_train_all, n_test_all = train_set.data.shape[0], test_set.data.shape[0]
    _count("num_train", num_train, n_train_all - 1, "MNIST training images are shared with valid")
    _count("num_valid", num_valid, n_train_all - num_train, f"at most {n_train_all} - num_train")
    _count("num_test", num_test, n_test_all, "the MNIST test set")
    gen = torch.Generator().manual_seed(int(seed))
    perm_train = torch.randperm(n_train_all, generator=gen)
    perm_test = torch.randperm(n_test_all, generator=gen)
    split_seeds = torch.randint(0, 2**62, (3,), generator=gen).tolist()
    chosen = {
        "train": (train_set, perm_train[:num_train], "mnist-train"),
        "valid": (train_set, perm_train[num_train : num_train + num_valid], "mnist-train"),
        "test": (test_set, perm_test[:num_test], "mnist-test"),
    }
    settings = {"num_frames": 10, "rotation_std": 20.0, "missing": "mnar", "missing_rate": 0.6}
    settings.update({"white_ratio": 2.0, "max_prob": 0.95, "binarize": True, "max_start_angle": 180.0})
    settings.update({"missing_frames": 3})
    settings.update(make_kwargs)
    splits: dict[str, SequenceData] = {}
    split_meta: dict[str, dict[str, Any]] = {}
    counts: dict[str, tuple[int, int, int, int]] = {}
    for (split, (dataset, idx, source)), split_seed in zip(chosen.items(), split_seeds):
        images = dataset.data[idx].to(torch.float32).div_(255.0)
        data, info = _generate(images, dataset.targets[idx], seed=split_seed, **settings)
        splits[split] = data
        split_meta[split] = {"source": source, "indices": idx.tolist(), "seed": split_seed, **info}
        counts[split] = _missing_counts(data)
        split_meta[split].update(_stats_from_counts(*counts[split]))
    totals = [sum(c) for c in zip(*counts.values())]
    overall = _stats_from_counts(*totals)
    meta = {**settings, "seed": seed, **overall, "splits": split_meta}
    return SequenceSplits(
        name="healing_mnist",
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        frame_shape=(1, 28, 28),
        meta=meta,
    )
