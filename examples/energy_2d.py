"""Fit the 2-D energy densities of Rezende & Mohamed (2015, Table 1) with flow guides of growing K.

Each potential U becomes a Pyro model whose joint density is exp(-U(z)) (``pyro.factor``); the guide is the
library's flow guide on that one global latent. SVI maximizes the ELBO = log Z - KL(q || p), and the KL
reached, computed with log Z by quadrature, is printed per (potential, flow, K) and written with a figure of
the true and fitted densities.

    python examples/energy_2d.py --potentials U1,U2,U3,U4 --flows planar,radial,iaf,spline --num-flows 2,8,32
    python examples/energy_2d.py --flows planar --num-flows 2,8,32 --steps 2000 --out runs/energy_planar
    python examples/energy_2d.py --smoke          # seconds: two potentials, small K, a few steps

Rezende, Mohamed. Variational Inference with Normalizing Flows. ICML 2015. arXiv:1505.05770
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pyro_flowvae.experiments.energy import Grid, fit_energy, get_potential, plot_energy_fits
from pyro_flowvae.flows import check_flow_options


def csv(kind):
    return lambda text: [kind(item) for item in text.split(",") if item.strip()]


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.smoke:
        args.potentials, args.flows, args.num_flows = ["U1", "U2"], ["planar", "iaf"], [1, 2]
        args.steps, args.kl_samples, args.num_particles = 20, 2000, 32
    for name in args.potentials:  # fail before the first fit: unknown names raise a ConfigError naming the choices
        get_potential(name)
    for flow in args.flows:
        check_flow_options(flow, {})
    out = Path(tempfile.mkdtemp(prefix="energy_2d_")) if args.smoke else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    fits, start = [], time.perf_counter()
    print(f"{'potential':<9} {'flow':<8} {'K':>3} {'KL(q||p) start':>15} {'KL(q||p)':>16} {'seconds':>8}")
    for potential in args.potentials:
        for flow in args.flows:
            for num_flows in args.num_flows:
                fit = fit_energy(
                    potential,
                    flow,
                    num_flows,
                    steps=args.steps,
                    lr=args.lr,
                    num_particles=args.num_particles,
                    seed=args.seed,
                    anneal_steps=args.anneal_steps,
                    kl_samples=args.kl_samples,
                )
                fits.append(fit)
                print(
                    f"{potential:<9} {flow:<8} {num_flows:>3} {fit.initial_kl.value:>15.3f} {str(fit.kl):>16} "
                    f"{fit.seconds:>8.1f}",
                    flush=True,
                )
    print(f"{len(fits)} fits in {time.perf_counter() - start:.0f} s")

    grid = Grid(4.0, 40) if args.smoke else Grid(4.0, 120)
    figure = plot_energy_fits(fits, grid=grid, num_samples=5000 if args.smoke else 200_000)
    figure.savefig(out / "energy_2d.png", dpi=90)
    records = [
        {
            "potential": fit.potential,
            "flow": fit.flow,
            "num_flows": fit.num_flows,
            "kl": fit.kl.value,
            "kl_stderr": fit.kl.stderr,
            "initial_kl": fit.initial_kl.value,
            "log_z": fit.kl.log_z,
            "seconds": fit.seconds,
        }
        for fit in fits
    ]
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    (out / "kl.json").write_text(json.dumps({"settings": settings, "fits": records}, indent=1))
    print(f"wrote {out / 'energy_2d.png'} and {out / 'kl.json'}")
    return {f"{fit.potential}/{fit.flow}/K={fit.num_flows}": fit.kl.value for fit in fits}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potentials", type=csv(str), default=["U1", "U2", "U3", "U4"], help="U1,U2,U3,U4")
    parser.add_argument(
        "--flows", type=csv(str), default=["planar", "radial", "iaf", "spline"], help="guide.flow names"
    )
    parser.add_argument("--num-flows", type=csv(int), default=[2, 8, 32], help="the K values, e.g. 2,8,32")
    parser.add_argument("--steps", type=int, default=800, help="SVI steps per fit")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate, decayed tenfold over the fit")
    parser.add_argument("--num-particles", type=int, default=128, help="vectorized ELBO particles per step")
    parser.add_argument("--anneal-steps", type=int, default=0, help="steps of beta from 0.01 to 1 (0: none)")
    parser.add_argument("--kl-samples", type=int, default=20_000, help="draws for the final KL estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/energy_2d", help="folder for energy_2d.png and kl.json")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run into a temporary folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
