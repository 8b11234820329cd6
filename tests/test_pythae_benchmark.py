"""benchmarks/pythae_compare.py without pythae: our half's settings and the helpers that score pythae's models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyro_flowvae.config import load_config
from tests.test_benchmarks import load


@pytest.fixture(scope="module")
def bench():
    return load("pythae_compare")  # imports without pythae: it is imported only where a pythae model is built


@pytest.mark.parametrize("spec, elbo", [("mean_field", "mean_field"), ("planar:16", "trace"), ("iaf:4", "trace")])
def test_our_overrides_match_pythaes_loop(bench, spec, elbo):
    args = bench.parse_args(["--data-root", "DATA", "--epochs", "3", "--iw-samples", "200", "--test-limit", "50"])
    config = load_config(bench.CONFIG, bench.our_overrides(spec, args, "cpu"))
    train = config.train
    assert (train.epochs, train.batch_size, train.lr, train.optimizer) == (3, 100, 1e-3, "adam")
    assert train.kl_warmup_epochs == 0 and train.patience is None and train.clip_norm is None
    assert train.restore_best is False and train.elbo == elbo
    assert (config.eval.iw_samples, config.eval.test_limit) == (200, 50)
    assert (config.model.latent_dim, list(config.model.hidden)) == (bench.LATENT, list(bench.HIDDEN))
    assert config.data.limit is None


def test_smoke_limits_our_training_set(bench):
    args = bench.parse_args(["--smoke", "--train-limit", "123"])
    assert "data.limit=123" in bench.our_overrides("mean_field", args, "cpu")


@pytest.mark.parametrize("wu_sign", [1.0, -1.0])
def test_planar_step_log_det_matches_the_autograd_jacobian(bench, wu_sign):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    u = wu_sign * w + 0.3 * torch.randn(1, 5, generator=gen, dtype=torch.float64)  # w.u far below -1 when negative
    b = torch.randn(1, generator=gen, dtype=torch.float64)
    for z in torch.randn(3, 5, generator=gen, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: bench.planar_step(v.unsqueeze(0), u, w, b)[0][0], z)
        log_det = bench.planar_step(z.unsqueeze(0), u, w, b)[1]
        assert float(log_det) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-10)


def test_importance_figures_are_exact_when_q_is_the_posterior(bench):
    # A decoder that ignores z: p(x) = p(x | z) for every z, and q(z | x) = p(z), so every log weight is log p(x).
    x = (torch.rand(7, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    bias = torch.linspace(-2.0, 2.0, 6)

    def encode(v):
        return torch.zeros(v.shape[0], 3), torch.zeros(v.shape[0], 3)

    def identity(z):
        return z, torch.zeros(z.shape[0])

    def logits(z):
        return bias.expand(z.shape[0], 6)

    exact = -F.binary_cross_entropy_with_logits(bias.expand(7, 6), x, reduction="none").sum(-1).mean()
    figures = bench.importance_metrics(encode, identity, logits, x, num_samples=20, data_chunk=3)
    assert figures["elbo"] == pytest.approx(float(exact), abs=1e-5)
    assert figures["log_px"] == pytest.approx(float(exact), abs=1e-5)


def test_importance_figures_bound_the_elbo_and_match_one_sample(bench):
    torch.manual_seed(0)
    x = (torch.rand(5, 4) < 0.5).float()
    weight = torch.randn(2, 4)

    def encode(v):
        return 0.1 * v[:, :2], torch.full((v.shape[0], 2), -1.0)

    def shift(z):  # a volume-changing flow: z -> 2 z, log|det| = L log 2
        return 2 * z, torch.full((z.shape[0],), 2 * math.log(2.0))

    def logits(z):
        return z @ weight

    one = bench.importance_metrics(encode, shift, logits, x, num_samples=1)
    assert one["log_px"] == pytest.approx(one["elbo"])  # K = 1: the bound is the ELBO
    many = bench.importance_metrics(encode, shift, logits, x, num_samples=2000)
    assert many["log_px"] > many["elbo"]
    assert many["elbo_stderr"] > 0 and many["log_px_stderr"] > 0


def test_throughput_ratios_and_table(bench):
    rows = [
        {"library": "pyro_flowvae", "model": "mean_field", "K": 0, "train_examples_per_s": 3000.0},
        {"library": "pythae", "model": "VAE", "K": 0, "train_examples_per_s": 2000.0},
        {"library": "pyro_flowvae", "model": "iaf:4", "K": 4, "train_examples_per_s": 1000.0},
    ]
    assert bench.throughput_ratios(rows) == {"VAE": 1.5}  # VAE_IAF has no pythae row: no ratio
    common = {"epochs": 5, "test_elbo": -100.0, "test_log_px": -95.0, "iw_samples": 10, "num_test": 3, "num_params": 9}
    table = bench.format_rows([{**rows[0], **common}, {**rows[1], **common, "test_log_px_own_estimator": -95.5}])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|") == lines[3].count("|")
    assert "(own: -95.50)" in lines[3] and "3,000" in lines[2]
