"""Healing MNIST: rotations against torchvision, the random walk, MCAR/MNAR missingness, real MNIST splits."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.datasets import MNIST
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pyro_flowvae.data.healing_mnist import (
    load_healing_mnist,
    make_healing_mnist,
    missingness_stats,
    mnar_base_prob,
    random_walk_angles,
    rotate_frames,
)
from pyro_flowvae.data.sequences import SequenceData, SequenceSplits
from pyro_flowvae.errors import ConfigError, DataError

from .conftest import snapshot


def _digits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Digit-like images: a bright off-centre bar on black, so rotations move white pixels around."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 28, 28)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(6, 16, (2,), generator=gen))
        images[i, r : r + 10, c : c + 4] = 0.7 + 0.3 * torch.rand(10, 4, generator=gen)
    return images


def _binomial_tol(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n) + 1e-9


class TestRotation:
    def test_matches_torchvision_rotate_frame_by_frame(self):
        images = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(1))  # non-square too
        angles = torch.tensor([[0.0, 33.3, -71.0], [90.0, 180.0, 270.0], [-400.0, 12.5, 1.0]])
        out = rotate_frames(images, angles)
        assert out.shape == (3, 3, 20, 28)
        for i in range(3):
            for j in range(3):
                ref = TF.rotate(images[i : i + 1], float(angles[i, j]), interpolation=InterpolationMode.BILINEAR)
                torch.testing.assert_close(out[i, j], ref[0], atol=1e-5, rtol=0)

    def test_random_walk_statistics_and_draw_order(self):
        gen = torch.Generator().manual_seed(3)
        angles = random_walk_angles(20000, 6, 25.0, max_start_angle=90.0, generator=gen)
        assert angles.shape == (20000, 6)
        start, steps = angles[:, 0], angles.diff(dim=1)
        assert float(start.abs().max()) <= 90.0 and abs(float(start.std()) - 180 / math.sqrt(12)) < 1.5
        assert abs(float(steps.std()) - 25.0) < 0.5 and abs(float(steps.mean())) < 0.5
        # documented order: rand(N) for the start, then randn(N, T - 1) for the steps
        gen = torch.Generator().manual_seed(3)
        start_ref = (torch.rand(20000, generator=gen, dtype=torch.float64) * 2 - 1) * 90.0
        steps_ref = torch.randn(20000, 5, generator=gen, dtype=torch.float64) * 25.0
        torch.testing.assert_close(angles, torch.cat([start_ref[:, None], steps_ref], 1).cumsum(1))


class TestMake:
    def test_frames_are_binarized_rotations_and_x_is_masked_truth(self):
        images, labels = _digits(12), torch.arange(12) % 10
        data = make_healing_mnist(images, labels, num_frames=5, rotation_std=30.0, seed=7)
        assert isinstance(data, SequenceData) and data.shape == (12, 5, 784)
        angles = random_walk_angles(12, 5, 30.0, generator=torch.Generator().manual_seed(7))
        expected = torch.stack(
            [
                torch.stack(
                    [
                        TF.rotate(images[i : i + 1], float(angles[i, t]), interpolation=InterpolationMode.BILINEAR)[0]
                        for t in range(5)
                    ]
                )
                for i in range(12)
            ]
        )
        # thresholding can flip a pixel whose bilinear value sits within rounding of 0.5
        agree = (data.truth == (expected.reshape(12, 5, 784) > 0.5).float()).float().mean()
        assert agree > 0.9999
        assert set(data.truth.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(data.x, data.truth * data.mask)
        checked = SequenceData(data.x, data.mask, data.times, data.truth, data.labels)  # passes every check
        assert torch.equal(checked.x, data.x)
        assert torch.equal(data.times, torch.arange(5.0).expand(12, 5)) and torch.equal(data.labels, labels)

    def test_grey_frames_without_binarize(self):
        data = make_healing_mnist(_digits(4), num_frames=3, binarize=False, missing="mcar", missing_rate=0.0)
        assert len(data.truth.unique()) > 2 and bool(data.mask.all())
        assert torch.equal(data.x, data.truth)

    def test_deterministic_by_seed(self):
        images = _digits(8)
        a, b = make_healing_mnist(images, seed=1), make_healing_mnist(images, seed=1)
        c = make_healing_mnist(images, seed=2)
        assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and torch.equal(a.truth, b.truth)
        assert not torch.equal(a.truth, c.truth) and not torch.equal(a.mask, c.mask)

    def test_mcar_share_does_not_depend_on_the_pixel(self):
        data = make_healing_mnist(_digits(200), missing="mcar", missing_rate=0.3, seed=0)
        stats = missingness_stats(data)
        n = data.mask.numel()
        assert abs(stats["missing_share"] - 0.3) < _binomial_tol(0.3, n)
        n_white = int(data.truth.sum())
        assert abs(stats["white_missing_share"] - 0.3) < _binomial_tol(0.3, n_white)
        assert abs(stats["black_missing_share"] - 0.3) < _binomial_tol(0.3, n - n_white)

    @pytest.mark.parametrize("rate, ratio, cap", [(0.6, 2.0, 0.95), (0.3, 2.0, 0.95), (0.5, 5.0, 0.8), (0.4, 0.5, 0.9)])
    def test_mnar_base_prob_solves_the_expected_share(self, rate, ratio, cap):
        data = make_healing_mnist(_digits(300), missing_rate=rate, white_ratio=ratio, max_prob=cap, seed=0)
        w = float(data.truth.mean())  # share of white pixels
        # brute force: expected share (1 - w) min(p, cap) + w min(r p, cap) on a fine grid of p, then refine
        grid = torch.linspace(0, 1 / min(1, ratio), 200001, dtype=torch.float64)
        share = (1 - w) * grid.clamp(max=cap) + w * (ratio * grid).clamp(max=cap)
        p_ref = float(grid[(share - rate).abs().argmin()])
        counts = torch.tensor([1 - w, w], dtype=torch.float64) * data.truth.numel()
        sums = torch.tensor([0.0, w], dtype=torch.float64) * data.truth.numel()
        p_b, expected = mnar_base_prob(counts, sums, missing_rate=rate, white_ratio=ratio, max_prob=cap)
        assert abs(p_b - p_ref) < 1e-4 and abs(expected - rate) < 1e-9
        # the drawn mask follows p(missing | v) = min(p_b (1 + (r - 1) v), cap)
        stats = missingness_stats(data)
        p_white, p_black = min(ratio * p_b, cap), min(p_b, cap)
        n_white = int(data.truth.sum())
        assert abs(stats["white_missing_share"] - p_white) < _binomial_tol(p_white, n_white)
        assert abs(stats["black_missing_share"] - p_black) < _binomial_tol(p_black, data.truth.numel() - n_white)
        assert abs(stats["missing_share"] - rate) < _binomial_tol(rate, data.truth.numel())

    def test_mnar_on_grey_values_matches_exact_bisection(self):
        values = torch.rand(5000, generator=torch.Generator().manual_seed(0)) ** 3
        bins = (values * 1023).round().long()
        counts = torch.bincount(bins, minlength=1024).double()
        sums = torch.bincount(bins, weights=values.double(), minlength=1024)
        p_b, _ = mnar_base_prob(counts, sums, missing_rate=0.5, white_ratio=3.0, max_prob=0.9)
        lo, hi = 0.0, 0.9
        for _ in range(60):  # exact bisection on the values themselves
            mid = (lo + hi) / 2
            share = float((mid * (1 + 2 * values.double())).clamp(max=0.9).mean())
            lo, hi = (mid, hi) if share < 0.5 else (lo, mid)
        assert abs(p_b - lo) < 1e-4

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"missing_rate": 0.97}, r"missing_rate = 0.97 cannot be reached .* max_prob = 0.95; raise max_prob"),
            ({"missing": "mar"}, r"missing must be one of mnar, mcar, frames, got 'mar'"),
            ({"missing": "frames", "missing_frames": 10}, r"missing_frames must be an integer in \[0, num_frames - 1"),
            ({"num_frames": 0}, r"num_frames must be a positive integer"),
            ({"white_ratio": 0.0}, r"white_ratio must be > 0"),
            ({"missing_rate": 1.5, "missing": "mcar"}, r"missing_rate must lie in \[0, 1\]"),
        ],
    )
    def test_bad_settings(self, kwargs, match):
        with pytest.raises(DataError, match=match):
            make_healing_mnist(_digits(2), **kwargs)

    def test_missing_frames_hides_whole_frames_at_random_positions(self):
        """missing = "frames": exactly k frames of each sequence have no observed pixel, at positions that vary
        between sequences; the other frames lose pixels completely at random at missing_rate."""
        data = make_healing_mnist(_digits(400), missing="frames", missing_rate=0.4, missing_frames=3, seed=2)
        observed_per_frame = data.mask.sum(-1)  # (N, T)
        hidden = observed_per_frame == 0
        assert (hidden.sum(1) == 3).all()
        positions = hidden.float().mean(0)  # each of the 10 positions hidden in about 30% of the sequences
        assert ((positions - 0.3).abs() < 0.1).all(), positions
        kept = data.mask[~hidden]  # pixels of the frames that were not hidden
        assert abs(float(1 - kept.mean()) - 0.4) < 0.01
        assert torch.equal(data.x, data.truth * data.mask)
        again = make_healing_mnist(_digits(400), missing="frames", missing_rate=0.4, missing_frames=3, seed=2)
        assert torch.equal(again.mask, data.mask)

    def test_bad_images(self):
        uint8_like = torch.zeros(2, 28, 28)
        uint8_like[:, 5, 5] = 255.0
        with pytest.raises(DataError, match=r"grey levels in \[0, 1\], got range \[0, 255\].*divide uint8 images"):
            make_healing_mnist(uint8_like)
        with pytest.raises(DataError, match=r"flat images \(N, D\) must be square, but D = 10"):
            make_healing_mnist(torch.zeros(2, 10))
        with pytest.raises(DataError, match=r"labels must be a tensor of shape \(2,\)"):
            make_healing_mnist(_digits(2), torch.zeros(3))
        flat = make_healing_mnist(_digits(2).reshape(2, 784), seed=4)
        assert torch.equal(flat.truth, make_healing_mnist(_digits(2), seed=4).truth)


@pytest.fixture(scope="module")
def hmnist(mnist_root, tmp_path_factory) -> SequenceSplits:
    # an explicit cache: a module fixture is set up before the per-test private cache of conftest
    cache = tmp_path_factory.mktemp("hmnist_cache")
    return load_healing_mnist(mnist_root, num_train=300, num_valid=50, num_test=100, seed=0, cache_dir=cache)


class TestLoad:
    def test_splits_shapes_and_labels(self, hmnist, mnist_root):
        assert (hmnist.name, hmnist.frame_shape, hmnist.data_dim, hmnist.seq_len) == (
            "healing_mnist",
            (1, 28, 28),
            784,
            10,
        )
        assert (len(hmnist.train), len(hmnist.valid), len(hmnist.test)) == (300, 50, 100)
        meta = hmnist.meta["splits"]
        train_idx, valid_idx = set(meta["train"]["indices"]), set(meta["valid"]["indices"])
        assert len(train_idx) == 300 and len(valid_idx) == 50 and not train_idx & valid_idx
        official = MNIST(str(mnist_root), train=True)
        assert torch.equal(hmnist.train.labels, official.targets[meta["train"]["indices"]])
        assert torch.equal(hmnist.test.labels, MNIST(str(mnist_root), train=False).targets[meta["test"]["indices"]])
        # frames are rotations of the chosen digit: the number of white pixels is kept roughly
        grey = official.data[meta["train"]["indices"][:20]].float() / 255
        white = (grey > 0.5).flatten(1).sum(1).float()
        per_frame = hmnist.train.truth[:20].sum(-1)
        assert bool(((per_frame - white[:, None]).abs() <= 0.25 * white[:, None] + 3).all())

    def test_meta_records_the_achieved_missingness(self, hmnist):
        meta = hmnist.meta
        assert (meta["missing"], meta["missing_rate"], meta["white_ratio"], meta["max_prob"]) == (
            "mnar",
            0.6,
            2.0,
            0.95,
        )
        for split in ("train", "valid", "test"):
            m = meta["splits"][split]
            data = getattr(hmnist, split)
            assert m["missing_share"] == pytest.approx(float(data.missing.mean()), abs=1e-6)
            assert abs(m["expected_missing_share"] - 0.6) < 1e-9 and abs(m["missing_share"] - 0.6) < 0.01
            # MNIST has ~13% white pixels: the cap holds white pixels at 0.95, so the ratio falls short of 2
            assert m["white_black_ratio"] == pytest.approx(0.95 / m["base_prob"], rel=0.05)
            assert 1.5 < m["white_black_ratio"] < 1.9
        n = sum(len(getattr(hmnist, s)) for s in ("train", "valid", "test"))
        weighted = sum(meta["splits"][s]["missing_share"] * len(getattr(hmnist, s)) for s in meta["splits"]) / n
        assert meta["missing_share"] == pytest.approx(weighted, abs=1e-9)

    def test_deterministic_and_seeded(self, hmnist, mnist_root):
        again = load_healing_mnist(mnist_root, num_train=300, num_valid=50, num_test=100, seed=0)
        assert torch.equal(again.train.x, hmnist.train.x) and torch.equal(again.test.mask, hmnist.test.mask)
        other = load_healing_mnist(mnist_root, num_train=30, num_valid=5, num_test=10, seed=1, missing="mcar")
        assert other.meta["splits"]["train"]["indices"] != hmnist.meta["splits"]["train"]["indices"][:30]
        assert other.meta["missing"] == "mcar"

    def test_read_only_root_is_left_untouched(self, read_only_mnist_root, tmp_path):
        root = read_only_mnist_root  # our own read-only copy: the test does not depend on ../shared's permissions
        before = snapshot(root)
        data = load_healing_mnist(root, num_train=5, num_valid=2, num_test=3, cache_dir=tmp_path / "cache")
        assert len(data.train) == 5 and snapshot(root) == before
        assert list((tmp_path / "cache").glob("*/MNIST/raw/train-images-idx3-ubyte"))  # extracted into the cache

    def test_errors(self, mnist_root):
        with pytest.raises(ConfigError, match=r"unknown option\(s\) frames; the options of make_healing_mnist are"):
            load_healing_mnist(mnist_root, frames=3)
        with pytest.raises(DataError, match=r"num_valid must be an integer in \[1, 100\]"):
            load_healing_mnist(mnist_root, num_train=59900, num_valid=200)
        with pytest.raises(DataError, match=r"num_test must be an integer in \[1, 10000\]"):
            load_healing_mnist(mnist_root, num_test=10001)
        with pytest.raises(DataError, match=r"MNIST data not found"):
            load_healing_mnist(mnist_root / "nowhere", cache_dir=mnist_root / "nowhere")
