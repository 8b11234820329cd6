"""The seed experiment reproduced: mean-field against IAF on MNIST with the settings of the notebook this
project grew from (MLP 784-512-32, batch 128, Adam 1e-3, 10000 steps, Bernoulli likelihood).

    python benchmarks/seed_experiment.py --data-root DATA                  # both guides, writes the JSON
    python benchmarks/seed_experiment.py --data-root DATA --smoke          # seconds, nothing written

Each guide is trained by a plain Pyro loop, ``SVI(vae.model, vae.guide, Adam, Trace_ELBO()).step(x)``,
for exactly ``--steps`` minibatches (reshuffled every pass over the 50000 training images of the
statically binarized MNIST), with no KL warm-up and no early stopping, as in the notebook. Then the
test set is scored (all of it, or ``--test-limit`` images spread evenly over it): the test ELBO and log p(x) with
``--iw-samples`` importance samples.
Writes benchmarks/results/seed_experiment_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_flowvae import FlowVAE, estimate_log_likelihood, load_config
from pyro_flowvae.evaluation.images import spread_subset
from pyro_flowvae.runs import load_run_data, machine, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The published notebook's figures (nats per image), the ones to beat.
SEED_FIGURES = {
    "mean_field": {"test_elbo": -543.788, "test_log_px": -395.208},
    "iaf": {"test_elbo": -404.351, "test_log_px": -359.817},
}


def run_guide(flow: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides = [
        "data.name=binarized_mnist",
        f"data.root={args.data_root}",
        "data.binarize=none",
        "model.hidden=[512]",
        f"model.latent_dim={args.latent_dim}",
        f"guide.flow={flow}",
        f"guide.num_flows={0 if flow == 'mean_field' else args.iaf_flows}",
        f"train.seed={args.seed}",
    ]
    if args.smoke:
        overrides.append("data.limit=512")
    config = load_config(None, overrides)
    data = load_run_data(config).to(device)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = FlowVAE.from_config(config, data.data_dim).to(device)
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}), Trace_ELBO())

    steps = 20 if args.smoke else args.steps
    generator = torch.Generator().manual_seed(args.seed)
    order, cursor, losses = torch.randperm(data.train.shape[0], generator=generator), 0, []
    start = time.perf_counter()
    for step in range(steps):
        if cursor + args.batch_size > order.numel():  # a new pass: reshuffle, drop the ragged tail
            order, cursor = torch.randperm(data.train.shape[0], generator=generator), 0
        x = data.train[order[cursor : cursor + args.batch_size].to(device)]
        cursor += args.batch_size
        losses.append(svi.step(x) / args.batch_size)
        if (step + 1) % 1000 == 0:
            print(f"{flow}: step {step + 1}, train -ELBO {sum(losses[-1000:]) / 1000:.2f}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    test = data.test[spread_subset(data.test.shape[0], 200 if args.smoke else args.test_limit)]
    vae.eval()
    begin = time.perf_counter()
    estimate = estimate_log_likelihood(
        vae.model, vae.guide, test, num_samples=30 if args.smoke else args.iw_samples, progress=not args.smoke
    )
    summary = estimate.summary()
    return {
        "guide": flow,
        "num_flows": 0 if flow == "mean_field" else args.iaf_flows,
        "steps": steps,
        "train_seconds": seconds,
        "train_examples_per_s": steps * args.batch_size / seconds,
        "final_train_elbo_last_1000_steps": -sum(losses[-1000:]) / len(losses[-1000:]),
        "test_elbo": summary["elbo"],
        "test_log_px": summary["log_px"],
        "test_log_px_stderr": summary["log_px_stderr"],
        "pareto_k_share_above_0_7": summary.get("pareto_k_share_above_0_7"),
        "iw_samples": summary["num_samples"],
        "num_test": int(test.shape[0]),
        "eval_seconds": time.perf_counter() - begin,
        "num_params": sum(p.numel() for p in vae.parameters()),
        "seed_figures": SEED_FIGURES[flow],
    }


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    rows = [run_guide(flow, args, device) for flow in ("mean_field", "iaf")]
    result = {
        "machine": machine(),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "command": f"python benchmarks/seed_experiment.py --data-root DATA --steps {args.steps} "
        f"--iw-samples {args.iw_samples}"
        + (f" --test-limit {args.test_limit}" if args.test_limit else "")
        + (f" --threads {args.threads}" if args.threads else ""),
        "settings": {
            "data": "statically binarized MNIST (Larochelle), 50000 train, "
            + (f"{args.test_limit} test images spread over the test set" if args.test_limit else "all test images"),
            "architecture": f"784-512-{args.latent_dim} MLP encoder, {args.latent_dim}-512-784 decoder, ReLU",
            "batch_size": args.batch_size,
            "lr": args.lr,
            "steps": args.steps,
            "iaf_flows": args.iaf_flows,
            "seed": args.seed,
        },
        "rows": rows,
    }
    print("| guide | test ELBO (seed) | log p(x) (seed) | train examples/s |")
    for r in rows:
        seed = r["seed_figures"]
        print(
            f"| {r['guide']} | {r['test_elbo']:.2f} ({seed['test_elbo']}) | {r['test_log_px']:.2f} "
            f"({seed['test_log_px']}) | {r['train_examples_per_s']:,.0f} |"
        )
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"seed_experiment_{device.type}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding binarized_mnist.npz")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--iaf-flows", type=int, default=2, help="IAF layers K")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=None, help="score N test images spread over the test set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    parser.add_argument("--smoke", action="store_true", help="seconds, nothing written")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
