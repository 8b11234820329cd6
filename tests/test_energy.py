"""The energy densities of Rezende & Mohamed (2015) Table 1, their log Z, the KL estimate and a short flow fit."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from pyro import poutine

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.experiments.energy import (
    BOX,
    POTENTIALS,
    QUADRATURE_GRID,
    Grid,
    energy_guide,
    energy_model,
    fit_energy,
    get_potential,
    guide_density,
    kl_to_target,
    log_normalizer,
    plot_energy_fits,
    target_density,
    wall,
)

NAMES = ["U1", "U2", "U3", "U4"]


def table1_numpy(name: str, z: np.ndarray) -> np.ndarray:
    """[1] Table 1 transcribed independently, in plain numpy (no logsumexp: fine in float64 on [-5, 5]^2)."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "U1":
        norm = np.sqrt(z1**2 + z2**2)
        return 0.5 * ((norm - 2) / 0.4) ** 2 - np.log(
            np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        )
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "U3":
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


def quadratic(z: torch.Tensor) -> torch.Tensor:
    """U(z) = |z|^2 / 2: the target is the standard normal, Z = 2 pi."""
    return 0.5 * z.pow(2).sum(-1)


def standard_normal_guide():
    """An AmortizedFlowGuide (mean-field) whose q is exactly N(0, I)."""
    guide = energy_guide("mean_field", 0)
    with torch.no_grad():
        guide.base_head.weight.zero_()
        guide.base_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        scale_raw = math.log(math.expm1(1.0 - guide.min_scale))  # softplus^-1(1 - min_scale)
        guide.base_head.bias[2:] = scale_raw
    return guide


@pytest.mark.parametrize("name", NAMES)
def test_potential_matches_table1(name):
    rng = np.random.default_rng(1)
    z = rng.uniform(-5, 5, size=(2000, 2))
    ours = POTENTIALS[name](torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(ours, table1_numpy(name, z), rtol=1e-10, atol=1e-10)
    assert get_potential(name, confine=False) is POTENTIALS[name]


@pytest.mark.parametrize("name", NAMES)
def test_confined_potential_is_table1_inside_the_box_and_grows_outside(name):
    z = torch.empty(500, 2, dtype=torch.float64).uniform_(-BOX, BOX)
    assert torch.equal(get_potential(name)(z), POTENTIALS[name](z))
    assert torch.equal(wall(z), torch.zeros(500, dtype=torch.float64))
    outside = torch.tensor([[5.0, 0.0], [0.0, -5.0], [6.0, 6.0]], dtype=torch.float64)
    np.testing.assert_allclose(wall(outside).numpy(), [8.0, 8.0, 64.0])  # (1 / 0.25)^2 / 2 per coordinate 1 past


def test_unknown_potential_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown potential 'U5'; choose from: U1, U2, U3, U4"):
        get_potential("U5")
    with pytest.raises(ConfigError, match="choose from"):
        fit_energy("u1", steps=1)


@pytest.mark.parametrize("name", NAMES)
def test_log_normalizer_is_stable_and_the_density_integrates_to_one(name):
    log_z = log_normalizer(name)
    assert abs(log_normalizer(name, Grid(6.0, 300)) - log_z) < 1e-3  # refinement
    assert abs(log_normalizer(name, Grid(8.0, 800)) - log_z) < 1e-6  # a wider box holds no more mass
    wide = Grid(7.0, 700)
    assert abs(target_density(name, wide, log_z=log_z).sum() * wide.cell_area - 1.0) < 1e-3


def test_log_normalizer_of_a_gaussian_and_of_u1_without_the_wall():
    assert abs(log_normalizer(quadratic) - math.log(2 * math.pi)) < 1e-6
    # U1 is a proper density already: the wall changes its log Z by less than 1e-5
    assert abs(log_normalizer(get_potential("U1", confine=False)) - log_normalizer("U1")) < 1e-5
    # U2 is not: on a wider box, without the wall, its mass grows with the width
    unconfined = get_potential("U2", confine=False)
    assert log_normalizer(unconfined, Grid(12.0, 1200)) > log_normalizer(unconfined) + 0.5


def test_energy_model_joint_density_is_minus_u():
    z = torch.tensor([[0.3, -1.2], [2.0, 0.5], [5.0, 4.5]])
    model = energy_model("U3")
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace()
    trace.compute_log_prob()
    joint = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
    torch.testing.assert_close(joint, -get_potential("U3")(z))
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(0.25)
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["energy"]["log_prob"], -0.25 * get_potential("U3")(z))


def test_kl_is_zero_for_the_target_itself_and_exact_for_a_wrong_gaussian():
    kl = kl_to_target(standard_normal_guide(), quadratic, num_samples=5000)
    assert abs(kl.value) < 1e-4 and kl.stderr < 1e-4, kl  # log q + U is constant: no MC error either

    def plain_guide():  # any Pyro guide works too: traced once in a plate of num_samples
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    assert abs(kl_to_target(plain_guide, quadratic, num_samples=5000).value) < 1e-4

    def wrong_guide():
        pyro.sample("z", dist.Normal(torch.ones(2), 0.5).to_event(1))

    kl = kl_to_target(wrong_guide, quadratic, num_samples=20_000)
    exact = 2 * (math.log(1 / 0.5) + (0.5**2 + 1.0**2) / 2 - 0.5)  # KL(N(1, 0.25 I) || N(0, I)) = 1.636
    assert kl.stderr < 0.02 and abs(kl.value - exact) < 4 * kl.stderr, (kl, exact)


def test_guide_density_is_a_normalized_histogram():
    grid = Grid(4.0, 40)
    fitted = guide_density(standard_normal_guide(), grid, num_samples=200_000)
    true = target_density(quadratic, grid)
    assert fitted.shape == true.shape == (40, 40)
    assert abs(fitted.sum() * grid.cell_area - true.sum() * grid.cell_area) < 2e-3  # 0.99987 of N(0, I) is inside
    assert np.abs(fitted - true).mean() < 2e-3 and np.abs(fitted - true).max() < 0.025


def test_a_short_planar_fit_lowers_the_kl_and_leaves_the_param_store_alone():
    pyro.param("someone_elses", torch.ones(1))
    fit = fit_energy("U1", "planar", 8, steps=300, lr=1e-2, num_particles=64, kl_samples=20_000)
    assert list(pyro.get_param_store().keys()) == ["someone_elses"]
    assert len(fit.losses) == 300 and all(math.isfinite(loss) for loss in fit.losses)
    assert fit.kl.value < fit.initial_kl.value - 3.0, (fit.initial_kl, fit.kl)
    assert fit.kl.value < 1.5, fit.kl  # a single lobe of U1 alone is log 2 = 0.69
    assert fit.kl.value > -3 * fit.kl.stderr  # a KL is not negative
    # -ELBO = KL - log Z: the last losses agree with the final estimate
    assert abs(np.mean(fit.losses[-50:]) + fit.kl.log_z - fit.kl.value) < 0.3
    assert fit.kl.log_z == pytest.approx(log_normalizer("U1", QUADRATURE_GRID))


def test_annealed_fit_records_beta_and_plot_has_a_row_per_potential_and_flow():
    fits = [
        fit_energy(name, "radial", k, steps=20, anneal_steps=10, kl_samples=500) for name in NAMES[:2] for k in (1, 2)
    ]
    assert fits[0].betas[0] == pytest.approx(0.01) and fits[0].betas[-1] == 1.0
    fig = plot_energy_fits(fits, grid=Grid(4.0, 20), num_samples=1000)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3
    assert fig.axes[0].get_title().startswith("U1") and fig.axes[3].get_title().startswith("U2")
