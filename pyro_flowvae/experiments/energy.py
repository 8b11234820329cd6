"""The 2-D energy densities of Rezende & Mohamed (2015) as ``pyro.factor`` models, fitted with flow guides."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import Tensor

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.guides.amortized import AmortizedFlowGuide, ConstantContext

__all__ = [
    "BOX",
    "WALL_WIDTH",
    "POTENTIALS",
    "Grid",
    "QUADRATURE_GRID",
    "PLOT_GRID",
    "KLEstimate",
    "EnergyFit",
    "potential_u1",
    "potential_u2",
    "potential_u3",
    "potential_u4",
    "wall",
    "get_potential",
    "energy_model",
    "energy_guide",
    "fit_energy",
    "log_normalizer",
    "kl_to_target",
    "target_density",
    "guide_density",
    "plot_energy_fits",
]

Potential = Callable[[Tensor], Tensor]

#: Half-width b of the box :math:`[-b, b]^2` on which [1] draws the densities (Figure 3).
BOX = 4.0
#: Width :math:`\tau` of the Gaussian tails that :func:`wall` puts outside the box.
WALL_WIDTH = 0.25


# -- the potentials of [1] Table 1 ---------------------------------------------------------------------------
def _w1(z: Tensor) -> Tensor:
    return torch.sin(2.0 * math.pi * z[..., 0] / 4.0)


def _w2(z: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((z[..., 0] - 1.0) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((z[..., 0] - 1.0) / 0.3)


def _neg_logsumexp(a: Tensor, b: Tensor) -> Tensor:
    """:math:`-\\log(e^a + e^b)`, computed without underflow."""
    return -torch.logsumexp(torch.stack([a, b], dim=-1), dim=-1)


def potential_u1(z: Tensor) -> Tensor:
    r""":math:`U_1(z) = \frac12\left(\frac{\|z\| - 2}{0.4}\right)^2 - \log\left(e^{-\frac12\left(\frac{z_1 - 2}{0.6}
    \right)^2} + e^{-\frac12\left(\frac{z_1 + 2}{0.6}\right)^2}\right)` ([1] Table 1): a ring with two lobes.

    ``z`` has shape ``(..., 2)``; the result has shape ``(...)``. The same holds for :func:`potential_u2`,
    :func:`potential_u3` and :func:`potential_u4`.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2.0) / 0.4) ** 2
    z1 = z[..., 0]
    return ring + _neg_logsumexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def potential_u2(z: Tensor) -> Tensor:
    r""":math:`U_2(z) = \frac12\left(\frac{z_2 - w_1(z)}{0.4}\right)^2`, :math:`w_1(z) = \sin(2\pi z_1/4)`
    ([1] Table 1): a sine wave."""
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2


def potential_u3(z: Tensor) -> Tensor:
    r""":math:`U_3(z) = -\log\left(e^{-\frac12\left(\frac{z_2 - w_1(z)}{0.35}\right)^2} + e^{-\frac12\left(
    \frac{z_2 - w_1(z) + w_2(z)}{0.35}\right)^2}\right)`, :math:`w_2(z) = 3e^{-\frac12((z_1 - 1)/0.6)^2}`
    ([1] Table 1): a sine wave that splits in two around :math:`z_1 = 1`."""
    d = z[..., 1] - _w1(z)
    return _neg_logsumexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z)) / 0.35) ** 2)


def potential_u4(z: Tensor) -> Tensor:
    r""":math:`U_4(z) = -\log\left(e^{-\frac12\left(\frac{z_2 - w_1(z)}{0.4}\right)^2} + e^{-\frac12\left(
    \frac{z_2 - w_1(z) + w_3(z)}{0.35}\right)^2}\right)`, :math:`w_3(z) = 3\sigma((z_1 - 1)/0.3)`
    ([1] Table 1): a sine wave with a shifted copy for :math:`z_1 > 1`."""
    d = z[..., 1] - _w1(z)
    return _neg_logsumexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z)) / 0.35) ** 2)


#: The potentials of [1] Table 1, exactly as printed, by name. :func:`get_potential` adds the :func:`wall`.
POTENTIALS: dict[str, Potential] = {
    "U1": potential_u1,
    "U2": potential_u2,
    "U3": potential_u3,
    "U4": potential_u4,
}


def wall(z: Tensor, bound: float = BOX, width: float = WALL_WIDTH) -> Tensor:
    r""":math:`W(z) = \sum_{i=1}^2 \frac12\left(\frac{\max(|z_i| - b, 0)}{\tau}\right)^2`: zero on the box
    :math:`[-b, b]^2`, Gaussian tails of width :math:`\tau` outside.

    :math:`U_2, U_3, U_4` depend on :math:`z_1` only through the bounded :math:`w_i`, so
    :math:`\int e^{-U(z)} dz_2` is bounded away from zero for every :math:`z_1` and :math:`e^{-U}` has infinite
    mass on :math:`\mathbb{R}^2`: there is no density to fit. [1] shows them on :math:`[-4, 4]^2`. Adding W makes
    each a proper density that equals [1]'s exactly inside that box (up to the constant Z); for :math:`U_1`,
    already proper, W changes Z by less than :math:`10^{-5}`.
    """
    excess = torch.relu(z.abs() - bound) / width
    return 0.5 * excess.pow(2).sum(-1)


def get_potential(name: str, confine: bool = True) -> Potential:
    """The potential ``name`` of [1] Table 1 ("U1" .. "U4"), plus the :func:`wall` unless ``confine=False``.

    Raises :class:`~pyro_flowvae.errors.ConfigError` naming the valid choices for an unknown name.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """
    if name not in POTENTIALS:
        raise ConfigError(f"unknown potential {name!r}; choose from: {', '.join(POTENTIALS)}")
    exact = POTENTIALS[name]
    if not confine:
        return exact

    def confined(z: Tensor) -> Tensor:
        return exact(z) + wall(z)

    confined.__name__ = name
    confined.__doc__ = f"{name}(z) + wall(z): [1]'s {name} inside [-{BOX:g}, {BOX:g}]^2, confined outside."
    return confined


def _resolve(potential: str | Potential) -> tuple[str, Potential]:
    if isinstance(potential, str):
        return potential, get_potential(potential)
    if not callable(potential):
        raise TypeError(f"potential must be a name ({', '.join(POTENTIALS)}) or a callable, got {potential!r}")
    return getattr(potential, "__name__", "potential"), potential


# -- the model and the guide -------------------------------------------------------------------------------
def energy_model(potential: str | Potential, site: str = "z") -> Callable[..., Tensor]:
    r"""A Pyro model whose joint density is exactly :math:`e^{-\beta U(z)}`, :math:`z \in \mathbb{R}^2`.

    ::

        def model(beta=1.0):
            z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), (2,)))
            pyro.factor("energy", -beta * U(z))

    ``ImproperUniform`` has log-density 0 (a flat "prior" that cannot be sampled; the guide provides z), so
    :math:`\log p(z) = -\beta U(z)` with no base density to subtract. With :math:`\beta = 1` the ELBO of a guide
    q is :math:`\mathbb{E}_q[-U(z) - \log q(z)] = \log Z - \mathrm{KL}(q \,\|\, p)`, :math:`p = e^{-U}/Z`.
    ``beta < 1`` is the annealing of [1] section 6. A name ("U1" .. "U4") selects :func:`get_potential`;
    any callable ``U(z)`` from shape ``(..., 2)`` to ``(...)`` works, vectorized over particles.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """
    _, energy = _resolve(potential)

    def model(beta: float = 1.0) -> Tensor:
        z = pyro.sample(site, dist.ImproperUniform(dist.constraints.real, (), (2,)))
        pyro.factor("energy", -beta * energy(z))
        return z

    return model


def energy_guide(
    flow: str = "planar",
    num_flows: int = 8,
    flow_options: dict[str, Any] | None = None,
    context_dim: int = 16,
    site: str = "z",
    name: str = "energy_guide",
) -> AmortizedFlowGuide:
    """A flow guide for the global 2-D latent of :func:`energy_model`: the library's
    :class:`~pyro_flowvae.guides.amortized.AmortizedFlowGuide` with no data plate and a learned
    :class:`~pyro_flowvae.guides.amortized.ConstantContext` h, so that q(z) is the Gaussian
    :math:`\\mathcal{N}(\\mu(h), \\mathrm{diag}\\,\\sigma(h)^2)` pushed through ``num_flows`` layers of the
    registered family ``flow`` (:func:`~pyro_flowvae.flows.build_flow`: mean_field, planar, radial, householder,
    iaf, spline). It ignores the model's arguments (``beta``)."""
    return AmortizedFlowGuide(
        ConstantContext(context_dim),
        latent_dim=2,
        flow=flow,
        num_flows=num_flows,
        flow_options=flow_options,
        latent_site=site,
        data_plate=None,
        name=name,
    )


# -- quadrature ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """``size`` x ``size`` square cells covering :math:`[-b, b]^2`, b = ``bound``; points are the cell centres.

    Arrays on the grid are indexed ``[i2, i1]`` (rows follow :math:`z_2`, columns :math:`z_1`), ready for
    ``imshow(..., origin="lower", extent=grid.extent)``.
    """

    bound: float = 6.0
    size: int = 600

    @property
    def step(self) -> float:
        return 2.0 * self.bound / self.size

    @property
    def cell_area(self) -> float:
        return self.step**2

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (-self.bound, self.bound, -self.bound, self.bound)

    def axis(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``size`` cell centres along one axis."""
        return -self.bound + self.step * (torch.arange(self.size, dtype=dtype) + 0.5)

    def points(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The cell centres, shape ``(size, size, 2)``, ``points[i2, i1] = (z_1, z_2)``."""
        z2, z1 = torch.meshgrid(self.axis(dtype), self.axis(dtype), indexing="ij")
        return torch.stack([z1, z2], dim=-1)


#: The grid for log Z: :math:`[-6, 6]^2`, 600 x 600 cells of side 0.02. It reaches 8 wall widths past the box,
#: where the wall has risen by 32 nats; tests check that a finer or a wider grid gives the same log Z.
QUADRATURE_GRID = Grid(6.0, 600)
#: The grid the figures are drawn on: [1]'s box :math:`[-4, 4]^2`, 120 x 120 cells.
PLOT_GRID = Grid(BOX, 120)


def log_normalizer(potential: str | Potential, grid: Grid = QUADRATURE_GRID) -> float:
    r""":math:`\log Z = \log \int e^{-U(z)} dz \approx \log \sum_{ij} e^{-U(z_{ij})} \Delta^2` by the midpoint
    rule on ``grid`` (cell side :math:`\Delta`), in float64 with ``logsumexp``.

    The grid must hold the mass: the default :data:`QUADRATURE_GRID` does for the four confined potentials
    and for any density that is negligible outside :math:`[-6, 6]^2`.
    """
    _, energy = _resolve(potential)
    with torch.no_grad():
        log_terms = -energy(grid.points(torch.float64)).flatten()
        return float(torch.logsumexp(log_terms, dim=0)) + math.log(grid.cell_area)


# -- KL(q || p) ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KLEstimate:
    r"""A Monte Carlo estimate of :math:`\mathrm{KL}(q \,\|\, p)` in nats with its standard error."""

    value: float
    stderr: float
    num_samples: int
    log_z: float

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.3f} ± {self.stderr:.3f}"


def _draw(guide: Callable[..., Any], num_samples: int, site: str) -> tuple[Tensor, Tensor]:
    """``num_samples`` draws z of the guide and log q(z), computed in the pass that drew them."""
    if isinstance(guide, AmortizedFlowGuide):  # no trip through the param store
        posterior = guide.get_posterior()
        z = posterior.sample((num_samples,))
        return z, posterior.log_prob(z)
    with pyro.plate("kl_samples", num_samples, dim=-1):
        trace = poutine.trace(guide).get_trace()
    node = trace.nodes[site]
    return node["value"], node["fn"].log_prob(node["value"])


def kl_to_target(
    guide: Callable[..., Any],
    potential: str | Potential,
    num_samples: int = 20_000,
    log_z: float | None = None,
    grid: Grid = QUADRATURE_GRID,
    site: str = "z",
) -> KLEstimate:
    r""":math:`\mathrm{KL}(q \,\|\, p) = \mathbb{E}_q[\log q(z) + U(z)] + \log Z` for :math:`p = e^{-U}/Z`,
    by Monte Carlo over ``num_samples`` draws of the guide, with log Z from :func:`log_normalizer` (on ``grid``)
    unless given.

    log q(z) is computed in the same pass that drew z (planar and radial flows have no inverse, so they can
    only score their own draws). ``guide`` is an :class:`~pyro_flowvae.guides.amortized.AmortizedFlowGuide`
    (read through :meth:`get_posterior`) or any Pyro guide sampling ``site`` with event shape (2,), traced
    once inside a plate of ``num_samples``.
    """
    _, energy = _resolve(potential)
    log_z = log_normalizer(energy, grid) if log_z is None else log_z
    with torch.no_grad():
        z, log_q = _draw(guide, num_samples, site)
        assert z.shape == (num_samples, 2) and log_q.shape == (num_samples,), (
            f"expected {num_samples} draws of a 2-D z, got z {tuple(z.shape)} and log q {tuple(log_q.shape)}"
        )
        terms = (log_q + energy(z)).double()
        return KLEstimate(
            value=float(terms.mean()) + log_z,
            stderr=float(terms.std() / math.sqrt(num_samples)),
            num_samples=num_samples,
            log_z=log_z,
        )


# -- fitting --------------------------------------------------------------------------------------------------
@dataclass
class EnergyFit:
    """A flow guide fitted to :math:`e^{-U}` by :func:`fit_energy`.

    ``losses`` are the SVI losses per step, :math:`-\\mathrm{ELBO} = \\mathrm{KL}(q \\,\\|\\, p) - \\log Z` when
    ``beta`` is 1 (so ``loss + kl.log_z`` is a one-step estimate of the KL); ``betas`` the inverse temperature
    of each step.
    """

    potential: str
    flow: str
    num_flows: int
    guide: AmortizedFlowGuide
    energy: Potential
    initial_kl: KLEstimate
    kl: KLEstimate
    losses: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit_energy(
    potential: str | Potential,
    flow: str = "planar",
    num_flows: int = 8,
    steps: int = 1000,
    lr: float = 5e-3,
    num_particles: int = 256,
    seed: int = 0,
    *,
    flow_options: dict[str, Any] | None = None,
    context_dim: int = 16,
    anneal_steps: int = 0,
    final_lr_ratio: float = 0.1,
    kl_samples: int = 20_000,
    grid: Grid = QUADRATURE_GRID,
) -> EnergyFit:
    r"""Fit :func:`energy_guide` (``flow``, ``num_flows`` layers) to :math:`p = e^{-U}/Z` by maximizing the ELBO.

    ``pyro.infer.SVI`` with ``Trace_ELBO(num_particles, vectorize_particles=True)`` and ``ClippedAdam``, whose
    learning rate decays geometrically from ``lr`` to ``final_lr_ratio * lr``. With ``anneal_steps`` > 0 the
    energy is scaled by :math:`\beta_t = \min(1, 0.01 + t/\mathrm{anneal\_steps})`, [1] section 6. Training
    runs in its own parameter-store scope (``pyro.get_param_store().scope()``): the global store is left as it
    was, and the fitted parameters live in ``result.guide``. The KL is estimated with :func:`kl_to_target`
    before and after training, from ``kl_samples`` draws.

    [1] Danilo Jimenez Rezende, Shakir Mohamed. Variational Inference with Normalizing Flows. ICML 2015.
    [arXiv:1505.05770]
    """
    name, energy = _resolve(potential)
    log_z = log_normalizer(energy, grid)
    pyro.set_rng_seed(seed)
    guide = energy_guide(flow, num_flows, flow_options, context_dim, name=f"energy_{name}_{flow}_{num_flows}")
    initial_kl = kl_to_target(guide, energy, kl_samples, log_z=log_z)
    model = energy_model(energy)
    lrd = final_lr_ratio ** (1.0 / max(steps, 1))
    optim = ClippedAdam({"lr": lr, "lrd": lrd, "clip_norm": 10.0})
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=0)
    losses, betas = [], []
    start = time.perf_counter()
    with pyro.get_param_store().scope():
        svi = SVI(model, guide, optim, elbo)
        for step in range(steps):
            beta = min(1.0, 0.01 + step / anneal_steps) if anneal_steps > 0 else 1.0
            losses.append(svi.step(beta))  # Trace_ELBO averages over the particles
            betas.append(beta)
    seconds = time.perf_counter() - start
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise FloatingPointError(f"the {flow} K={num_flows} fit of {name} diverged (loss {losses[-1]})")
    kl = kl_to_target(guide, energy, kl_samples, log_z=log_z)
    return EnergyFit(name, flow, num_flows, guide, energy, initial_kl, kl, losses, betas, seconds)


# -- densities on a grid and the figure ------------------------------------------------------------------------
def target_density(potential: str | Potential, grid: Grid = PLOT_GRID, log_z: float | None = None) -> np.ndarray:
    """:math:`e^{-U(z)}/Z` at the centres of ``grid``, shape ``(size, size)`` indexed ``[i2, i1]``; Z from
    :func:`log_normalizer` on :data:`QUADRATURE_GRID` unless given (not from ``grid``, which may be smaller)."""
    _, energy = _resolve(potential)
    log_z = log_normalizer(energy) if log_z is None else log_z
    with torch.no_grad():
        return torch.exp(-energy(grid.points(torch.float64)) - log_z).numpy()


def guide_density(guide: Callable[..., Any], grid: Grid = PLOT_GRID, num_samples: int = 200_000) -> np.ndarray:
    """q(z) on ``grid`` as a 2-D histogram of ``num_samples`` draws: counts per cell / (num_samples x cell area).

    A histogram works for every flow, including planar and radial, which cannot evaluate q at a point they
    did not draw. Draws outside the grid count in the denominator, so it estimates q itself, not q restricted
    to the grid; its relative noise in a cell is about ``1 / sqrt(count)``.
    """
    with torch.no_grad():
        z, _ = _draw(guide, num_samples, "z")
    z = z.double().numpy()
    edges = np.linspace(-grid.bound, grid.bound, grid.size + 1)
    counts, _, _ = np.histogram2d(z[:, 0], z[:, 1], bins=(edges, edges))
    return counts.T / (num_samples * grid.cell_area)


def plot_energy_fits(
    fits: Sequence[EnergyFit], grid: Grid = PLOT_GRID, num_samples: int = 200_000, panel_size: float = 1.9
) -> Figure:
    """True and fitted densities side by side: one row per (potential, flow), in the order of ``fits``; the
    first column :math:`e^{-U}/Z`, then each fit of that row by growing K, titled with its KL(q || p).

    All panels of a row share the colour scale of the true density, on [1]'s box unless ``grid`` says otherwise.
    """
    rows: dict[tuple[str, str], list[EnergyFit]] = {}
    for fit in fits:
        rows.setdefault((fit.potential, fit.flow), []).append(fit)
    columns = 1 + max(len(row) for row in rows.values())
    fig = Figure(figsize=(panel_size * columns, panel_size * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, ((name, flow), row) in enumerate(rows.items()):
        true = target_density(row[0].energy, grid, log_z=row[0].kl.log_z)
        vmax = float(true.max())
        panels = [(true, f"{name}: exp(-U)/Z")]
        for fit in sorted(row, key=lambda f: f.num_flows):
            panels.append(
                (guide_density(fit.guide, grid, num_samples), f"{flow} K={fit.num_flows}\nKL {fit.kl.value:.2f}")
            )
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.set_axis_off()
                continue
            image, title = panels[c]
            ax.imshow(image, origin="lower", extent=grid.extent, cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_title(title, fontsize=8)
    return fig
