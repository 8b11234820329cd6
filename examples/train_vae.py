"""Train a VAE with a flow guide using the Python API and a plain Pyro SVI loop.

The model and the guide are ordinary Pyro callables built from a config: swap the guide by changing
``guide.flow`` (mean_field, planar, radial, householder, iaf, spline). The loop below is Pyro's own
``svi.step``; the library's ``pyro-flowvae train`` command adds checkpoints, early stopping and plots.

    python examples/train_vae.py --data-root DATA --flow iaf --num-flows 2 --epochs 5
    python examples/train_vae.py --smoke          # seconds, on generated data
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_flowvae import FlowVAE, estimate_log_likelihood, load_config
from pyro_flowvae.data import iterate_minibatches
from pyro_flowvae.infer.annealing import ScaleLatents, kl_weight
from pyro_flowvae.runs import load_run_data


def smoke_data(folder: Path) -> Path:
    """A few hundred noisy binary 'digits' (two prototypes), for a seconds-long run."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((2, 8, 8)) < 0.5
    x = np.logical_xor(prototypes[rng.integers(0, 2, 600)], rng.random((600, 8, 8)) < 0.05)
    path = folder / "smoke.npz"
    np.savez(path, train=x[:400].astype(np.uint8), valid=x[400:500].astype(np.uint8), test=x[500:].astype(np.uint8))
    return path


def main(args: argparse.Namespace) -> dict[str, float]:
    overrides = [
        f"guide.flow={args.flow}",
        f"guide.num_flows={args.num_flows}",
        f"model.latent_dim={args.latent_dim}",
        f"train.seed={args.seed}",
    ]
    if args.smoke:
        folder = Path(tempfile.mkdtemp())
        overrides += ["data.name=npz", f"data.path={smoke_data(folder)}", "model.hidden=[64]"]
    else:
        overrides += [f"data.root={args.data_root}"]
    config = load_config(args.config, overrides)
    data = load_run_data(config)  # (N, D) tensors; MNIST is binarized dynamically below
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = data.to(device)

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = FlowVAE.from_config(config, data.data_dim).to(device)

    # KL warm-up: one messenger scales the latent site "z" in both model and guide.
    warmup = ScaleLatents(1.0, sites=["z"])
    svi = SVI(warmup(vae.model), warmup(vae.guide), Adam({"lr": args.lr}), Trace_ELBO())

    steps_per_epoch = -(-data.train.shape[0] // args.batch_size)
    warmup_steps = steps_per_epoch * args.warmup_epochs
    epochs = 1 if args.smoke else args.epochs
    step, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = 0.0
        for x in iterate_minibatches(data.train, args.batch_size, dynamic_binarize=data.binarize == "dynamic"):
            warmup.scale = kl_weight(step, warmup_steps, start=0.01)
            total += svi.step(x)  # a plain Pyro SVI step: returns the (KL-weighted) negative ELBO
            step += 1
        print(f"epoch {epoch}: train loss {total / data.train.shape[0]:.2f} nats per datapoint", flush=True)
    examples_per_s = step * args.batch_size / (time.perf_counter() - start)

    test = data.test[: 200 if args.smoke else args.test_limit]
    estimate = estimate_log_likelihood(vae.model, vae.guide, test, num_samples=50 if args.smoke else args.iw_samples)
    summary = estimate.summary()
    print(
        f"test ELBO {summary['elbo']:.2f}, log p(x) {summary['log_px']:.2f} ± {summary['log_px_stderr']:.2f} "
        f"(K={summary['num_samples']}), {examples_per_s:.0f} training examples/s on {device}"
    )
    return {"test_elbo": summary["elbo"], "test_log_px": summary["log_px"], "examples_per_s": examples_per_s}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="TOML config to start from (default: built-in defaults)")
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw")
    parser.add_argument(
        "--flow", default="iaf", help="guide.flow: mean_field, planar, radial, householder, iaf, spline"
    )
    parser.add_argument("--num-flows", type=int, default=2)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--iw-samples", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--test-limit", type=int, default=1000, help="test images to score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on generated data")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
