"""BandedPrecisionNormal against the dense Gaussian with the same precision, built here independently."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor

from pyro_flowvae.guides.banded import BandedPrecisionNormal

DTYPE = torch.float64
TIME_LENGTHS = [1, 2, 7, 50]
BATCH_SHAPES = [(), (3,), (2, 3)]


def factors(batch: tuple[int, ...], T: int, seed: int = 0, coupling: float = 0.8) -> tuple[Tensor, Tensor, Tensor]:
    """Random loc, positive diag d in [0.5, 1.5] and superdiagonal s ~ N(0, coupling^2)."""
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, T, generator=gen, dtype=DTYPE)
    diag = 0.5 + torch.rand(*batch, T, generator=gen, dtype=DTYPE)
    offdiag = coupling * torch.randn(*batch, T - 1, generator=gen, dtype=DTYPE)
    return loc, diag, offdiag


def dense_factor(diag: Tensor, offdiag: Tensor) -> Tensor:
    """B with B[t, t] = d_t and B[t, t + 1] = s_t, by index assignment (not the code under test)."""
    T = diag.shape[-1]
    batch = torch.broadcast_shapes(diag.shape[:-1], offdiag.shape[:-1])
    B = torch.zeros(*batch, T, T, dtype=diag.dtype)
    idx = torch.arange(T)
    B[..., idx, idx] = diag.expand(*batch, T)
    B[..., idx[:-1], idx[1:]] = offdiag.expand(*batch, T - 1)
    return B


def dense_mvn(loc: Tensor, diag: Tensor, offdiag: Tensor) -> torch.distributions.MultivariateNormal:
    B = dense_factor(diag, offdiag)
    return torch.distributions.MultivariateNormal(loc, precision_matrix=B.mT @ B)


# -- density, moments, dense helpers ----------------------------------------------------------------------
@pytest.mark.parametrize("T", TIME_LENGTHS)
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
def test_log_prob_matches_dense_mvn(T, batch):
    loc, diag, offdiag = factors(batch, T)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    assert q.batch_shape == batch and q.event_shape == (T,)
    value = torch.randn(4, *batch, T, dtype=DTYPE) * 2.0
    expected = dense_mvn(loc, diag, offdiag).log_prob(value)
    assert q.log_prob(value).shape == (4, *batch)
    torch.testing.assert_close(q.log_prob(value), expected, rtol=1e-10, atol=1e-10)


def test_log_prob_broadcasts_the_factors():
    loc, _, _ = factors((2, 1), 6, seed=1)
    _, diag, _ = factors((3,), 6, seed=2)
    _, _, offdiag = factors((1,), 6, seed=3)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    assert q.batch_shape == (2, 3)
    value = torch.randn(5, 1, 3, 6, dtype=DTYPE)
    torch.testing.assert_close(q.log_prob(value), dense_mvn(loc, diag, offdiag).log_prob(value))


@pytest.mark.parametrize("T", TIME_LENGTHS)
def test_log_prob_gradients_match_dense(T):
    params = [p.requires_grad_() for p in factors((3,), T, seed=4)]
    value = torch.randn(3, T, dtype=DTYPE)
    got = torch.autograd.grad(BandedPrecisionNormal(*params).log_prob(value).sum(), params, allow_unused=True)
    want = torch.autograd.grad(dense_mvn(*params).log_prob(value).sum(), params, allow_unused=True)
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, w)
    if T > 1:
        torch.testing.assert_close(got[2], want[2])


@pytest.mark.parametrize("T", TIME_LENGTHS)
def test_variance_entropy_and_precision_match_dense(T):
    loc, diag, offdiag = factors((2, 3), T, seed=5)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    B = dense_factor(diag, offdiag)
    covariance = torch.linalg.inv(B.mT @ B)
    torch.testing.assert_close(q.variance, covariance.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(q.stddev, covariance.diagonal(dim1=-2, dim2=-1).sqrt())
    torch.testing.assert_close(q.precision_matrix, B.mT @ B)
    torch.testing.assert_close(q.bidiagonal_factor, B)
    torch.testing.assert_close(q.entropy(), dense_mvn(loc, diag, offdiag).entropy())
    assert torch.equal(q.mean, loc)
    dense = q.to_dense()
    assert isinstance(dense, torch.distributions.MultivariateNormal)
    torch.testing.assert_close(dense.covariance_matrix, covariance)


def test_single_step_is_a_normal_with_scale_one_over_d():
    loc, diag, offdiag = factors((4,), 1, seed=6)
    assert offdiag.shape == (4, 0)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    value = torch.randn(7, 4, 1, dtype=DTYPE)
    torch.testing.assert_close(q.log_prob(value), torch.distributions.Normal(loc, 1 / diag).log_prob(value).squeeze(-1))
    assert q.rsample((7,)).shape == (7, 4, 1)
    torch.testing.assert_close(q.variance, diag.pow(-2))


# -- sampling -------------------------------------------------------------------------------------------
def test_samples_have_mean_loc_and_covariance_inverse_precision():
    """20000 draws at T = 5. Tolerance: 5 standard errors per entry, with SE(mean_t) = sqrt(Sigma_tt / N) and,
    for Gaussian data, SE(S_ij) = sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / N)."""
    N, T = 20000, 5
    loc, diag, offdiag = factors((), T, seed=7, coupling=1.0)
    pyro.set_rng_seed(11)
    z = BandedPrecisionNormal(loc, diag, offdiag).sample((N,))
    B = dense_factor(diag, offdiag)
    sigma = torch.linalg.inv(B.mT @ B)
    var = sigma.diagonal()
    mean_se = (var / N).sqrt()
    assert ((z.mean(0) - loc).abs() / mean_se).max() < 5.0
    sample_cov = torch.cov(z.T)
    cov_se = ((var[:, None] * var[None, :] + sigma.pow(2)) / N).sqrt()
    assert ((sample_cov - sigma).abs() / cov_se).max() < 5.0
    # The test can fail: the covariance of B^{-T} eps, (B B^T)^{-1}, is many standard errors off.
    wrong = torch.linalg.inv(B @ B.mT)
    assert ((sample_cov - wrong).abs() / cov_se).max() > 20.0


@pytest.mark.parametrize("T", [1, 2, 7, 50])
def test_rsample_is_loc_plus_b_inverse_eps_with_matching_gradients(T):
    """Same eps (same seed): z = loc + B^{-1} eps by a dense triangular solve; gradients of E[f(z)] agree."""
    N = 64
    params = [p.requires_grad_() for p in factors((3,), T, seed=8)]
    weight = torch.randn(3, T, dtype=DTYPE)

    def objective(z: Tensor) -> Tensor:
        return (torch.sin(z) * weight + 0.1 * z.pow(2)).sum(-1).mean()

    pyro.set_rng_seed(3)
    z = BandedPrecisionNormal(*params).rsample((N,))
    pyro.set_rng_seed(3)
    eps = torch.randn(N, 3, T, dtype=DTYPE)
    loc, diag, offdiag = params
    B = dense_factor(diag, offdiag)
    z_dense = loc + torch.linalg.solve_triangular(B, eps.unsqueeze(-1), upper=True).squeeze(-1)
    torch.testing.assert_close(z, z_dense)
    got = torch.autograd.grad(objective(z), params, allow_unused=True)
    want = torch.autograd.grad(objective(z_dense), params, allow_unused=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    if T > 1:
        torch.testing.assert_close(got[2], want[2])
        assert got[2].abs().sum() > 0


def test_solve_and_whiten_are_inverse():
    loc, diag, offdiag = factors((2,), 9, seed=9)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    eps = torch.randn(5, 2, 9, dtype=DTYPE)
    torch.testing.assert_close(q.whiten(loc + q.solve(eps)), eps)


def test_expand_and_pyro_plate():
    loc, diag, offdiag = factors((3,), 4, seed=10)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    big = q.expand((2, 3))
    assert big.batch_shape == (2, 3) and big.rsample().shape == (2, 3, 4)
    value = torch.randn(2, 3, 4, dtype=DTYPE)
    torch.testing.assert_close(big.log_prob(value), q.log_prob(value))
    trace = pyro.poutine.trace(lambda: pyro.sample("z", q.expand((5, 3)).to_event(1))).get_trace()
    assert trace.nodes["z"]["value"].shape == (5, 3, 4)
    assert q.support is dist.constraints.real_vector and q.has_rsample


# -- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shapes, message",
    [
        (((), (1,), (0,)), r"loc must have shape \(\.\.\., T\).*got a scalar"),
        (((3, 5), (3, 4), (3, 4)), r"diag must have shape \(\.\.\., T\) = \(\.\.\., 5\).*got \(3, 4\)"),
        (((3, 5), (3, 5), (3, 5)), r"offdiag must have shape \(\.\.\., T - 1\) = \(\.\.\., 4\).*got \(3, 5\)"),
        (((1,), (1,), ()), r"offdiag must have shape .*\(\.\.\., 0\) when T = 1"),
        (((2, 5), (3, 5), (4,)), r"batch shapes of loc \(2,\), diag \(3,\) and offdiag \(\) do not broadcast"),
    ],
)
def test_bad_shapes_are_named(shapes, message):
    loc, diag, offdiag = (torch.ones(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        BandedPrecisionNormal(loc, diag, offdiag)


def test_non_positive_diag_is_rejected_when_validating():
    loc, diag, offdiag = factors((2,), 3)
    with pytest.raises(ValueError, match="diag"):
        BandedPrecisionNormal(loc, -diag, offdiag, validate_args=True)


def test_log_det_term_is_sum_log_d():
    """At z = loc the density is sum log d - T/2 log 2 pi, whatever s."""
    loc, diag, offdiag = factors((), 6, seed=12, coupling=3.0)
    q = BandedPrecisionNormal(loc, diag, offdiag)
    assert q.log_prob(loc).item() == pytest.approx(diag.log().sum().item() - 3.0 * math.log(2 * math.pi))
