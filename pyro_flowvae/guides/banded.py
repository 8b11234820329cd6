"""A Gaussian over T time steps with a banded (bidiagonal-factor) precision: the GP-VAE's structured posterior."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

__all__ = ["BandedPrecisionNormal"]

_LOG_2PI = math.log(2.0 * math.pi)


def _backward_recurrence(coef: Tensor, rhs: Tensor) -> Tensor:
    r"""Solve :math:`x_{T} = b_{T}`, :math:`x_t = a_t x_{t+1} + b_t` for :math:`t = T-1, \dots, 1` in O(T).

    ``coef`` :math:`a` has shape ``(..., T - 1)`` and ``rhs`` :math:`b` shape ``(..., T)``; their leading
    dimensions broadcast. T sequential steps, each one vectorised over the leading dimensions; autograd
    differentiates through the loop.
    """
    # time first and contiguous, so each step reads and writes one contiguous slice (not a stride-T gather)
    a = coef.movedim(-1, 0).contiguous().unbind(0)
    b = rhs.movedim(-1, 0).contiguous().unbind(0)
    x = [b[-1]]
    for t in range(len(b) - 2, -1, -1):
        x.append(a[t] * x[-1] + b[t])
    x.reverse()
    return torch.stack(x, dim=0).movedim(0, -1)


class BandedPrecisionNormal(TorchDistribution):
    r"""A Gaussian over T time steps whose precision is :math:`\Lambda = B^\top B` with B upper bidiagonal:

    .. math::
        z \sim \mathcal{N}(\mu, \Lambda^{-1}), \qquad B_{tt} = d_t > 0, \quad B_{t,t+1} = s_t, \quad
        \text{all other } B_{tk} = 0,

    so :math:`\Lambda` is tridiagonal and :math:`\Lambda^{-1}` is dense. This is the structured posterior of the
    GP-VAE, [1] sec. 3.2, one such Gaussian per latent channel. Everything below costs O(T):

    * **sampling** (reparameterized): :math:`z = \mu + B^{-1}\varepsilon`, :math:`\varepsilon \sim
      \mathcal{N}(0, I_T)`, whose covariance is :math:`B^{-1}B^{-\top} = (B^\top B)^{-1}`. :math:`x = B^{-1}
      \varepsilon` is found by back substitution, :math:`x_T = \varepsilon_T / d_T`,
      :math:`x_t = (\varepsilon_t - s_t x_{t+1}) / d_t`. So z is a backward Gauss-Markov chain,
      :math:`z_t - \mu_t = -\tfrac{s_t}{d_t}(z_{t+1} - \mu_{t+1}) + \tfrac{1}{d_t}\varepsilon_t`.
    * **log-density**: :math:`\log q(z) = \sum_t \log d_t - \tfrac{T}{2}\log 2\pi - \tfrac12\lVert B(z - \mu)
      \rVert^2` with :math:`(Bu)_t = d_t u_t + s_t u_{t+1}` (:math:`\log\det\Lambda = 2\sum_t \log d_t`).
    * **variance** (the diagonal of :math:`\Lambda^{-1}`): row t of :math:`B^{-1}` is :math:`r_t = (e_t - s_t
      r_{t+1}) / d_t` and :math:`r_{t+1}` vanishes at t, so :math:`\mathrm{Var}\,z_t = \lVert r_t\rVert^2 =
      d_t^{-2} + (s_t / d_t)^2\,\mathrm{Var}\,z_{t+1}`, :math:`\mathrm{Var}\,z_T = d_T^{-2}`: O(T), no inverse.
    * **entropy**: :math:`\tfrac{T}{2}(1 + \log 2\pi) - \sum_t \log d_t`.

    The recurrences run T sequential steps, each vectorised over the batch. :meth:`to_dense` returns the same
    distribution as a dense :class:`~pyro.distributions.MultivariateNormal` (O(T^2) memory, O(T^3) Cholesky),
    for tests and benchmarks.

    :param loc: :math:`\mu`, shape ``(..., T)``.
    :param diag: :math:`d`, shape ``(..., T)``, positive.
    :param offdiag: :math:`s`, shape ``(..., T - 1)`` (``(..., 0)`` for T = 1), any real values.

    The leading dimensions of the three broadcast to the batch shape; the event shape is ``(T,)``.

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Raetsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "diag": constraints.independent(constraints.positive, 1),
        "offdiag": constraints.real_vector,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, diag: Tensor, offdiag: Tensor, validate_args: bool | None = None) -> None:
        if loc.dim() < 1:
            raise ValueError(
                "BandedPrecisionNormal: loc must have shape (..., T) with T >= 1 time steps, got a scalar; "
                "pass loc.unsqueeze(-1) for a single step"
            )
        T = loc.shape[-1]
        if T < 1:
            raise ValueError(
                f"BandedPrecisionNormal: loc has shape {tuple(loc.shape)}, with no time steps; give T >= 1 steps"
            )
        if diag.dim() < 1 or diag.shape[-1] != T:
            raise ValueError(
                f"BandedPrecisionNormal: diag must have shape (..., T) = (..., {T}) like loc {tuple(loc.shape)}, "
                f"got {tuple(diag.shape)}; give one diagonal entry d_t per time step"
            )
        if offdiag.dim() < 1 or offdiag.shape[-1] != T - 1:
            raise ValueError(
                f"BandedPrecisionNormal: offdiag must have shape (..., T - 1) = (..., {T - 1}) for loc "
                f"{tuple(loc.shape)}, got {tuple(offdiag.shape)}; give one superdiagonal entry s_t per pair of "
                f"neighbouring steps (shape (..., 0) when T = 1)"
            )
        try:
            batch_shape = torch.broadcast_shapes(loc.shape[:-1], diag.shape[:-1], offdiag.shape[:-1])
        except RuntimeError as error:
            raise ValueError(
                f"BandedPrecisionNormal: the batch shapes of loc {tuple(loc.shape[:-1])}, diag "
                f"{tuple(diag.shape[:-1])} and offdiag {tuple(offdiag.shape[:-1])} do not broadcast; make their "
                f"leading dimensions agree or be 1"
            ) from error
        self.loc = loc.expand(*batch_shape, T)
        self.diag = diag.expand(*batch_shape, T)
        self.offdiag = offdiag.expand(*batch_shape, T - 1)
        super().__init__(batch_shape, torch.Size((T,)), validate_args=validate_args)

    @property
    def time_length(self) -> int:
        """T, the number of time steps."""
        return self.event_shape[0]

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: object = None) -> BandedPrecisionNormal:
        new = self._get_checked_instance(BandedPrecisionNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        T = self.time_length
        new.loc = self.loc.expand(*batch_shape, T)
        new.diag = self.diag.expand(*batch_shape, T)
        new.offdiag = self.offdiag.expand(*batch_shape, T - 1)
        super(BandedPrecisionNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # -- O(T) operations -------------------------------------------------------------------------------
    def solve(self, rhs: Tensor) -> Tensor:
        r""":math:`B^{-1} b` for ``rhs`` b of shape ``(..., T)`` broadcasting with the batch shape, in O(T)."""
        return _backward_recurrence(-self.offdiag / self.diag[..., :-1], rhs / self.diag)

    def whiten(self, value: Tensor) -> Tensor:
        r""":math:`B(z - \mu)`, standard normal when :math:`z \sim q`: :math:`(Bu)_t = d_t u_t + s_t u_{t+1}`."""
        u = value - self.loc
        r = self.diag * u
        if self.time_length == 1:
            return r
        return torch.cat([r[..., :-1] + self.offdiag * u[..., 1:], r[..., -1:]], dim=-1)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.solve(eps)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half_log_det = self.diag.log().sum(-1)
        return half_log_det - 0.5 * self.time_length * _LOG_2PI - 0.5 * self.whiten(value).pow(2).sum(-1)

    def entropy(self) -> Tensor:
        return 0.5 * self.time_length * (1.0 + _LOG_2PI) - self.diag.log().sum(-1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        """The diagonal of :math:`\\Lambda^{-1}` by the O(T) recurrence in the class docstring."""
        ratio = self.offdiag / self.diag[..., :-1]
        return _backward_recurrence(ratio.pow(2), self.diag.pow(-2))

    # -- dense helpers (O(T^2) memory): tests and benchmarks ----------------------------------------------
    @property
    def bidiagonal_factor(self) -> Tensor:
        """The dense upper bidiagonal factor B, shape ``(*batch, T, T)``."""
        return torch.diag_embed(self.diag) + torch.diag_embed(self.offdiag, offset=1)

    @property
    def precision_matrix(self) -> Tensor:
        r"""The dense tridiagonal precision :math:`\Lambda = B^\top B`, shape ``(*batch, T, T)``."""
        factor = self.bidiagonal_factor
        return factor.mT @ factor

    def to_dense(self) -> dist.MultivariateNormal:
        """The same Gaussian as a dense MultivariateNormal built from :attr:`precision_matrix`; torch turns the
        precision into a Cholesky factor of the covariance, O(T^3) time and O(T^2) memory per batch element."""
        return dist.MultivariateNormal(self.loc, precision_matrix=self.precision_matrix, validate_args=False)
