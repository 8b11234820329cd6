"""The GP prior over latent time series: each latent channel an independent Gaussian process over the time stamps."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_flowvae.errors import ConfigError, DataError
from pyro_flowvae.priors.kernels import build_kernel, evaluate_kernel, kernel_hyperparameters, parse_kernel_expr

__all__ = ["GPPrior"]


class GPPrior(nn.Module):
    r"""The prior :math:`p(z)` over :math:`z \in \mathbb{R}^{L \times T}` of the GP-VAE [1]: with time stamps
    :math:`t = (t_1 < \dots < t_T)`, every latent channel :math:`l` is an independent Gaussian process,

    .. math::
        z_l = (z_l(t_1), \dots, z_l(t_T)) \sim \mathcal{N}\big(0,\; K_l(t, t) + \epsilon I_T\big),
        \qquad \log p(z) = \sum_{l=1}^{L} \log \mathcal{N}(z_l; 0, K_l + \epsilon I),

    with :math:`[K_l]_{ij} = k_l(t_i, t_j)` from :func:`~pyro_flowvae.priors.kernels.build_kernel` (``kernel``
    is a name or an expression such as ``"periodic*rbf + linear"``; Fortuin et al. use ``"cauchy"``) and jitter
    :math:`\epsilon`. A float ``lengthscale`` gives all channels one kernel. A list of ``G`` length scales gives
    ``G`` kernels over contiguous groups of :math:`L / G` channels (L must be divisible by G), the "several
    length scales" of [1] (a list of L values gives every channel its own kernel), so channels can hold slow and
    fast dynamics. Irregular time stamps (different per sequence) are allowed, as in the GP prior of [2].

    ``forward(times)`` returns ``MultivariateNormal(0, scale_tril=chol(K + eps I))`` with batch (B, L) and event
    (T,), ``.to_event(1)``: batch (B,), event (L, T) for times (B, T); batch (), event (L, T) for times (T,).
    The latent site therefore sits in ``pyro.plate("data", B)`` with value shape (..., B, L, T); Pyro's
    vectorized particles prepend their dimensions by ``expand`` without copying the Cholesky factors.

    Cost: one Cholesky per distinct kernel and distinct row of ``times``. When all rows are equal (regular
    sampling) one (G, T, T) factor is computed and broadcast over the batch. With ``learn=False`` the factor for
    the last ``times`` seen is cached, and the cache is dropped when the times change, the module moves to
    another device or dtype, or a hyperparameter buffer is written in place. If the Cholesky fails, the jitter
    of the failing matrices grows tenfold up to ``max_jitter`` (``jitter_used`` records the last value), then
    a :class:`~pyro_flowvae.errors.ConfigError` names the fixes.

    Precision: the kernel matrices and their Cholesky factors are computed in ``compute_dtype`` (float64 by
    default) and the distribution is returned in the module's dtype. Pyro's isotropic kernels expand
    :math:`(t - t')^2 = t^2 - 2 t t' + t'^2`, which in float32 loses most digits once :math:`t / l` reaches a
    few hundred, and ``linear`` grows as :math:`t^2`; in float32 such matrices are indefinite by far more than
    the jitter. ``compute_dtype=None`` computes in the module's dtype (for devices without float64, e.g. MPS).

    Learned hyperparameters (``learn=True``) are ordinary parameters of this module: register them once with
    ``pyro.module("prior", gp_prior)`` inside the model. The kernels are evaluated with
    :func:`~pyro_flowvae.priors.kernels.evaluate_kernel`, which never triggers ``PyroModule`` param statements,
    so each hyperparameter has one param-store entry (``"prior$$$kernels.0.lengthscale_unconstrained"``) and gets
    one optimizer update per step, and two priors never share names. Frozen ones (``learn=False``) are buffers.

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Rätsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time Series
    Imputation. AISTATS 2020. [arXiv:1907.04155]
    [2] Francesco Paolo Casale, Adrian V. Dalca, Luca Saglietti, Jennifer Listgarten, Nicolo Fusi. Gaussian
    Process Prior Variational Autoencoders. NeurIPS 2018. [arXiv:1810.11738]
    """

    def __init__(
        self,
        latent_dim: int,
        kernel: str = "cauchy",
        lengthscale: float | Sequence[float] = 1.0,
        variance: float = 1.0,
        period: float = 12.0,
        learn: bool = False,
        jitter: float = 1e-4,
        max_jitter: float = 1e-1,
        compute_dtype: torch.dtype | None = torch.float64,
    ) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"GPPrior latent_dim must be a positive integer, got {latent_dim!r}")
        for name, value in (("jitter", jitter), ("max_jitter", max_jitter)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"GPPrior {name} must be a finite number > 0, got {value!r}; e.g. {name}=1e-4")
        if max_jitter < jitter:
            raise ConfigError(f"GPPrior max_jitter ({max_jitter}) must be >= jitter ({jitter}); raise max_jitter")
        lengthscales = self._lengthscales(latent_dim, lengthscale)
        parse_kernel_expr(kernel)  # fail on a bad expression before building anything
        self.latent_dim = latent_dim
        self.kernel_expr = kernel
        self.learn = bool(learn)
        self.jitter = float(jitter)
        self.max_jitter = float(max_jitter)
        if compute_dtype is not None and not (
            isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point
        ):
            raise ConfigError(f"GPPrior compute_dtype must be a floating torch.dtype or None, got {compute_dtype!r}")
        self.compute_dtype = compute_dtype
        self.jitter_used = float(jitter)
        self.num_groups = len(lengthscales)
        self.kernels = nn.ModuleList(
            build_kernel(kernel, lengthscale=value, variance=variance, period=period, learn=learn)
            for value in lengthscales
        )
        # the module's dtype and device (.to(), .double()), apart from its hyperparameters, which are float64
        self.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)
        self._cache: tuple[Tensor, tuple[int, ...], Tensor] | None = None
        #: (storage key, the factor, the times themselves) of the last regular ``times`` seen (see :meth:`forward`);
        #: holding the times keeps their storage alive, so no other tensor can reuse its address meanwhile
        self._regular: tuple[tuple, Tensor, Tensor] | None = None

    @staticmethod
    def _lengthscales(latent_dim: int, lengthscale: float | Sequence[float]) -> list[float]:
        if isinstance(lengthscale, numbers.Real) and not isinstance(lengthscale, bool):
            return [float(lengthscale)]
        if not isinstance(lengthscale, Sequence) or isinstance(lengthscale, str) or len(lengthscale) == 0:
            raise ConfigError(
                f"GPPrior lengthscale must be a number or a non-empty list of numbers, got {lengthscale!r}"
            )
        values = list(lengthscale)
        if latent_dim % len(values):
            raise ConfigError(
                f"GPPrior got {len(values)} length scales for latent_dim={latent_dim}: give one per channel "
                f"({latent_dim} values) or a number of values that divides {latent_dim} (each then covers a "
                "contiguous group of channels)"
            )
        return values

    # ----------------------------------------------------------------------------------------------------------
    # helpers

    def _reference(self) -> Tensor:
        return self._dtype_anchor

    def _dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(dtype of the kernel matrices and their Cholesky factors, dtype of the returned distribution)."""
        dtype = self._reference().dtype
        return (self.compute_dtype or dtype), dtype

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: object, **kwargs: object) -> GPPrior:
        self._cache = self._regular = None  # .to(), .cuda(), .double(), ...: the cached factor lives on the old device
        return super()._apply(fn, *args, **kwargs)

    def _versions(self) -> tuple[int, ...]:
        return tuple(buffer._version for buffer in self.buffers())

    def _as_rows(self, times: Tensor, validate: bool = True) -> Tensor:
        """``times`` as a validated (R, T) tensor on this module's device, in the compute dtype."""
        if not isinstance(times, Tensor):
            raise DataError(f"times must be a torch.Tensor of shape (B, T) or (T,), got {type(times).__name__}")
        if times.dim() not in (1, 2) or times.shape[-1] == 0:
            raise DataError(f"times must have shape (B, T) or (T,) with T >= 1, got shape {tuple(times.shape)}")
        rows = times.to(device=self._reference().device, dtype=self._dtypes()[0]).reshape(-1, times.shape[-1])
        if not validate:
            return rows
        where = (lambda r, i: f"row {r}, index {i}") if times.dim() == 2 else (lambda r, i: f"index {i}")
        bad = ~torch.isfinite(rows)
        if bad.any():
            r, i = (int(v) for v in bad.nonzero()[0])
            raise DataError(
                f"times has a non-finite value ({rows[r, i].item()}) at {where(r, i)}; time stamps must be finite: "
                "drop the frames without a time stamp or fill them in"
            )
        steps = rows.diff(dim=-1) <= 0
        if steps.any():
            r, i = (int(v) for v in steps.nonzero()[0])
            raise DataError(
                f"times is not strictly increasing at {where(r, i + 1)} (t[{i}]={rows[r, i].item():g}, "
                f"t[{i + 1}]={rows[r, i + 1].item():g}); time stamps must be strictly increasing along T: "
                "sort the frames by time (x and mask with them) and merge frames with equal time stamps"
            )
        return rows

    def _group_matrices(self, rows: Tensor) -> Tensor:
        """:math:`K_g(t_r, t_r)` for every kernel g and row r: (R, G, T, T), without jitter."""
        return torch.stack(
            [torch.stack([evaluate_kernel(kernel, row) for kernel in self.kernels]) for row in rows.unbind(0)]
        )

    def _cholesky(self, matrices: Tensor) -> Tensor:
        """Lower Cholesky factors of ``matrices + jitter I``; the jitter of a failing matrix grows tenfold."""
        if not torch.isfinite(matrices).all():
            raise ConfigError(
                "the GP prior's kernel matrix has non-finite entries (hyperparameters "
                f"{ {k: v.tolist() for k, v in self.hyperparameters().items()} }); lower the learning rate of the "
                "prior or freeze its hyperparameters (learn=False)"
            )
        eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
        jitter = torch.full(matrices.shape[:-2], self.jitter, dtype=matrices.dtype, device=matrices.device)
        while True:
            chol, info = torch.linalg.cholesky_ex(matrices + jitter[..., None, None] * eye)
            failed = info > 0
            if not failed.any():
                self.jitter_used = float(jitter.max())
                return chol
            if float(jitter[failed].max()) * 10 > self.max_jitter * (1 + 1e-6):
                raise ConfigError(
                    f"Cholesky of the GP prior covariance (kernel {self.kernel_expr!r}, T={matrices.shape[-1]}, "
                    f"{matrices.dtype}) failed even with jitter {float(jitter[failed].max()):g}: time stamps are "
                    "too close for the length scale. Rescale the times or shorten the length scale, compute in "
                    "float64 (compute_dtype=torch.float64, the default), or raise jitter / max_jitter"
                )
            jitter = torch.where(failed, jitter * 10, jitter)

    def _factors(self, rows: Tensor) -> Tensor:
        """Cholesky factors for the distinct rows given: (R, G, T, T), cached with ``learn=False``."""
        cacheable = not self.learn and not rows.requires_grad
        if cacheable and self._cache is not None:
            cached_rows, versions, chol = self._cache
            if versions == self._versions() and cached_rows.shape == rows.shape and torch.equal(cached_rows, rows):
                return chol
        chol = self._cholesky(self._group_matrices(rows)).to(self._dtypes()[1])
        self._cache = (rows.detach().clone(), self._versions(), chol) if cacheable else None
        return chol

    def _per_channel(self, groups: Tensor) -> Tensor:
        """(..., G, T, T) -> (..., L, T, T): each group's matrix over its contiguous block of channels."""
        if self.num_groups == self.latent_dim:
            return groups
        if self.num_groups == 1:
            return groups.expand(*groups.shape[:-3], self.latent_dim, *groups.shape[-2:])
        return groups.repeat_interleave(self.latent_dim // self.num_groups, dim=-3)

    # ----------------------------------------------------------------------------------------------------------
    # public API

    def hyperparameters(self) -> dict[str, Tensor]:
        """Constrained hyperparameter values (detached), e.g. ``{"kernels.0.lengthscale": tensor(1.)}``."""
        return {
            f"kernels.{g}.{name}": value
            for g, kernel in enumerate(self.kernels)
            for name, value in kernel_hyperparameters(kernel).items()
        }

    def kernel_matrix(self, times: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        r""":math:`K_l(t, t)` without jitter: (L, T, T) for times (T,), (B, L, T, T) for times (B, T).

        Computed in ``compute_dtype`` and returned in ``dtype`` (default: the module's dtype); pass
        ``dtype=torch.float64`` to keep the full precision, e.g. for GP conditioning. The prior's covariance
        is this plus ``jitter_used * I``."""
        rows = self._as_rows(times)
        matrices = self._per_channel(self._group_matrices(rows)).to(dtype or self._dtypes()[1])
        return matrices[0] if times.dim() == 1 else matrices

    @staticmethod
    def _storage_key(times: Tensor) -> tuple:
        """What identifies a tensor's values without reading them: its storage, view and version."""
        return (times.untyped_storage().data_ptr(), times.storage_offset(), tuple(times.shape[1:]),
                tuple(times.stride()[1:]), times._version, times.device, times.dtype)  # fmt: skip

    def _regular_factor(self, times: Tensor) -> Tensor:
        """The (G, T, T) factor of times (B, T) whose rows are one shared row (stride 0 along B). The row is
        validated once per row tensor; at later steps only its storage key is compared, on the host, and the
        factor is reused (recomputed, without the validation, when the hyperparameters are learned)."""
        key = (self._storage_key(times), self._versions())
        if self._regular is None or self._regular[0] != key:
            chol = self._factors(self._as_rows(times[:1]))[0]
            self._regular = (key, chol, times)
            return chol
        if self.learn:  # the Cholesky still asks the host whether it needs more jitter
            return self._factors(self._as_rows(times[:1], validate=False))[0]
        return self._regular[1]

    def forward(self, times: Tensor) -> dist.TorchDistribution:
        """p(z | times): batch (B,), event (L, T) for times (B, T); batch (), event (L, T) for times (T,).

        Times whose rows are one shared row (stride 0 along B, as
        :class:`~pyro_flowvae.data.sequences.SequenceData` stores regular sampling) are validated and factorised
        once and then recognised by their storage: no host-device synchronisation at later steps. Other times
        are validated and compared row by row at every call."""
        if times.dim() == 2 and times.shape[0] > 1 and times.stride(0) == 0:
            batch, steps = times.shape
            chol = self._regular_factor(times)  # (G, T, T), broadcast over the batch without a copy
            if self.num_groups == 1:
                chol = chol[0]
        else:
            rows = self._as_rows(times)
            batch, steps = rows.shape
            if batch == 1 or bool((rows == rows[:1]).all()):
                chol = self._factors(rows[:1])[0]  # (G, T, T), broadcast over the batch without a copy
                if self.num_groups == 1:
                    chol = chol[0]  # (T, T): the MVN broadcasts it over (B, L)
            else:
                distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
                chol = self._factors(distinct)[inverse]  # (B, G, T, T); G = 1 broadcasts over L
        if chol.dim() > 2 and chol.shape[-3] != 1:
            chol = self._per_channel(chol)
        batch_shape = (self.latent_dim,) if times.dim() == 1 else (batch, self.latent_dim)
        loc = chol.new_zeros(()).expand(*batch_shape, steps)
        prior = dist.MultivariateNormal(loc, scale_tril=chol).to_event(1)
        assert prior.event_shape == (self.latent_dim, steps), (prior.event_shape, self.latent_dim, steps)
        return prior

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, kernel={self.kernel_expr!r}, groups={self.num_groups}, "
            f"learn={self.learn}, jitter={self.jitter:g}"
        )
