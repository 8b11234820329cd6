"""Covariance kernels over time from pyro.contrib.gp.kernels, built from expressions like "periodic*rbf + linear"."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable

import torch
from pyro.contrib.gp import kernels as gpk
from torch import Tensor

from pyro_flowvae.errors import ConfigError

__all__ = ["KERNELS", "build_kernel", "evaluate_kernel", "kernel_hyperparameters", "parse_kernel_expr"]


def _rbf(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.RBF(1, variance=variance, lengthscale=lengthscale)


def _matern32(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.Matern32(1, variance=variance, lengthscale=lengthscale)


def _matern52(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.Matern52(1, variance=variance, lengthscale=lengthscale)


def _cauchy(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.RationalQuadratic(1, variance=variance, lengthscale=lengthscale, scale_mixture=torch.ones(()))


def _periodic(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.Periodic(1, variance=variance, lengthscale=lengthscale, period=period)


def _linear(variance: Tensor, lengthscale: Tensor, period: Tensor) -> gpk.Kernel:
    return gpk.Linear(1, variance=variance)


_BUILDERS: dict[str, Callable[[Tensor, Tensor, Tensor], gpk.Kernel]] = {
    "rbf": _rbf,
    "matern32": _matern32,
    "matern52": _matern52,
    "cauchy": _cauchy,
    "periodic": _periodic,
    "linear": _linear,
}
KERNELS: tuple[str, ...] = tuple(_BUILDERS)
"""Names a kernel expression may combine."""

# hyperparameters that never learn: the Cauchy kernel is the rational-quadratic one at alpha = 1
_ALWAYS_FIXED: dict[str, tuple[str, ...]] = {"cauchy": ("scale_mixture",)}


def parse_kernel_expr(expr: str) -> list[list[str]]:
    """Split ``expr`` into a sum of products of kernel names: ``"periodic*rbf + linear"`` ->
    ``[["periodic", "rbf"], ["linear"]]`` (``*`` binds tighter than ``+``; names are case-insensitive).

    Raises :class:`~pyro_flowvae.errors.ConfigError` on an empty term or factor and on an unknown name
    (listing the valid names, with a did-you-mean).
    """
    if not isinstance(expr, str):
        raise ConfigError(f"kernel must be a string such as 'cauchy' or 'periodic*rbf + linear', got {expr!r}")
    example = "write names joined by '+' and '*', e.g. 'periodic*rbf + linear'"
    if not expr.strip():
        raise ConfigError(f"kernel expression is empty; {example}; kernels: {', '.join(KERNELS)}")
    terms = []
    for term in expr.split("+"):
        if not term.strip():
            raise ConfigError(f"malformed kernel expression {expr!r}: an empty term around '+'; {example}")
        factors = []
        for factor in term.split("*"):
            name = factor.strip().lower()
            if not name:
                raise ConfigError(f"malformed kernel expression {expr!r}: an empty factor around '*'; {example}")
            if name not in _BUILDERS:
                close = difflib.get_close_matches(name, KERNELS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"unknown kernel {name!r} in {expr!r}; {hint}choose from: {', '.join(KERNELS)}"
                    f" (combined with '+' and '*')"
                )
            factors.append(name)
        terms.append(factors)
    return terms


def _positive(name: str, value: float) -> Tensor:
    """The hyperparameter as a float64 scalar: a length scale of 0.7 stays 0.7 (float32 would store 0.699999988).
    A 0-dim tensor does not promote a float32 computation, so a prior computing in float32 still does."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"kernel {name} must be a finite number > 0, got {value!r}; pass e.g. {name}=1.0")
    return torch.tensor(float(value), dtype=torch.float64)


def _freeze(kernel: gpk.Kernel, name: str, value: Tensor) -> None:
    """Replace the PyroParam ``name`` by a buffer holding ``value`` (the exact value given, not its round trip
    through the unconstrained log-space): no gradient, not in ``parameters()`` (so neither ``pyro.module`` nor an
    optimizer sees it), still moved by ``.to()``."""
    delattr(kernel, name)
    kernel.register_buffer(name, value.clone())


def build_kernel(
    expr: str, *, lengthscale: float = 1.0, variance: float = 1.0, period: float = 12.0, learn: bool = False
) -> gpk.Kernel:
    r"""A kernel over time (``input_dim=1``) from an expression of :data:`KERNELS` names.

    With :math:`d = |t - t'|`, variance :math:`\sigma^2`, length scale :math:`l` and period :math:`p`:

    .. math::
        k_\mathrm{rbf} &= \sigma^2 \exp(-\tfrac{d^2}{2 l^2}), \qquad
        k_\mathrm{matern32} = \sigma^2 (1 + \tfrac{\sqrt 3 d}{l}) e^{-\sqrt 3 d / l}, \qquad
        k_\mathrm{matern52} = \sigma^2 (1 + \tfrac{\sqrt 5 d}{l} + \tfrac{5 d^2}{3 l^2}) e^{-\sqrt 5 d / l}, \\
        k_\mathrm{cauchy} &= \sigma^2 \left(1 + \tfrac{d^2}{2 l^2}\right)^{-1}, \qquad
        k_\mathrm{periodic} = \sigma^2 \exp\left(-\tfrac{2 \sin^2(\pi d / p)}{l^2}\right), \qquad
        k_\mathrm{linear} = \sigma^2 t t'.

    ``cauchy`` is :class:`~pyro.contrib.gp.kernels.RationalQuadratic` with its scale mixture fixed at 1 (never
    learned), the kernel of Fortuin et al. [1]; their :math:`\sigma / (1 + d^2 / l_F^2)` is this one with
    ``variance`` :math:`= \sigma` and ``lengthscale`` :math:`= l_F / \sqrt 2`. ``linear`` (homogeneous, through
    t = 0) is for trends.

    Terms joined by ``+`` are added (:class:`~pyro.contrib.gp.kernels.Sum`); factors joined by ``*`` (binds
    tighter) are multiplied (:class:`~pyro.contrib.gp.kernels.Product`). Every factor gets ``lengthscale`` and
    ``period`` where it has them; only the first factor of a product gets ``variance`` and the others have
    variance 1, fixed (a product's variances are not separately identifiable), so ``"periodic*rbf"`` has
    variance ``variance``, not its square.

    All hyperparameters are positive (Pyro's ``PyroParam(..., constraints.positive)``). ``learn=True`` leaves
    them as parameters (the unconstrained ``*_unconstrained`` tensors); ``learn=False`` turns each into a buffer
    of its value, so it has no gradient and no optimizer (and no ``pyro.module``) ever sees it. Evaluate the
    kernel with :func:`evaluate_kernel`, which reads hyperparameters as a plain ``nn.Module`` would; calling it
    directly (``kernel(X)``) uses Pyro's ``PyroModule`` semantics and registers unscoped names such as
    ``"lengthscale"`` in the global param store.

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Rätsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
    """
    terms = parse_kernel_expr(expr)
    values = {"lengthscale": lengthscale, "variance": variance, "period": period}
    tensors = {name: _positive(name, value) for name, value in values.items()}
    summands = []
    for factors in terms:
        product = None
        for position, name in enumerate(factors):
            exact = {**tensors, "scale_mixture": torch.ones((), dtype=torch.float64)}
            if position > 0:
                exact["variance"] = torch.ones((), dtype=torch.float64)
            kernel = _BUILDERS[name](exact["variance"].clone(), exact["lengthscale"].clone(), exact["period"].clone())
            fixed = set(_ALWAYS_FIXED.get(name, ()))
            if position > 0:
                fixed.add("variance")
            for param_name in [name for name, _ in kernel.named_pyro_params(recurse=False)]:
                if not learn or param_name in fixed:
                    _freeze(kernel, param_name, exact[param_name])
            product = kernel if product is None else gpk.Product(product, kernel)
        summands.append(product)
    result = summands[0]
    for summand in summands[1:]:
        result = gpk.Sum(result, summand)
    return result


def evaluate_kernel(kernel: gpk.Kernel, x: Tensor, z: Tensor | None = None) -> Tensor:
    r"""The covariance matrix :math:`k(x, z)` (:math:`N \times M`; x, z of shape (N,) or (N, 1)).

    Walks :class:`~pyro.contrib.gp.kernels.Sum` / :class:`~pyro.contrib.gp.kernels.Product` nodes itself and
    calls each leaf's own ``forward``, never ``PyroModule.__call__``: hyperparameters are read through their
    constrained properties like a plain ``nn.Module``'s, so no ``pyro.param`` statement under an unscoped name
    is issued. The owner registers them once, e.g. ``pyro.module("prior", gp_prior)``, which gives each learned
    hyperparameter exactly one param-store entry and one optimizer update per step, and keeps two priors'
    hyperparameters apart.
    """
    if isinstance(kernel, gpk.Sum | gpk.Product):
        left = evaluate_kernel(kernel.kern0, x, z)
        right = evaluate_kernel(kernel.kern1, x, z) if isinstance(kernel.kern1, gpk.Kernel) else kernel.kern1
        return left + right if isinstance(kernel, gpk.Sum) else left * right
    if any(isinstance(child, gpk.Kernel) for child in kernel.children()):
        raise ConfigError(
            f"evaluate_kernel handles Sum, Product and leaf kernels, not {type(kernel).__name__}; "
            "build the kernel with build_kernel"
        )
    return kernel.forward(x, z)


def kernel_hyperparameters(kernel: gpk.Kernel) -> dict[str, Tensor]:
    """Every hyperparameter's constrained value (detached), learned or frozen, keyed by its dotted path,
    e.g. ``{"kern0.lengthscale": ..., "kern0.variance": ..., "kern1.variance": ...}``."""
    out: dict[str, Tensor] = {}
    for path, module in kernel.named_modules():
        if not isinstance(module, gpk.Kernel) or isinstance(module, gpk.Sum | gpk.Product):
            continue
        names = [name for name, _ in module.named_pyro_params(recurse=False)]
        names += [name for name, _ in module.named_buffers(recurse=False)]
        for name in sorted(names):
            out[f"{path}.{name}" if path else name] = getattr(module, name).detach()
    return out
