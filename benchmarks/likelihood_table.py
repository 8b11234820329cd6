"""The likelihood table: every guide family on one MLP, statically binarized MNIST, beside the literature.

    python benchmarks/likelihood_table.py --data-root DATA --epochs 40 --iw-samples 5000 --test-limit 1000
    python benchmarks/likelihood_table.py --data-root DATA --smoke          # seconds, nothing written

Each guide is trained by ``pyro_flowvae.compare`` on ``examples/configs/binarized_mnist_likelihood.toml``
(784-300-300-40, batch 100, Adam 1e-3, KL warm-up, early stopping on the validation ELBO of the
Larochelle validation split), then scored on ``--test-limit`` test images spread evenly over the test set
(every 20th of the 10000 at 500: the set is ordered, and its first images are not a sample of it) with
``--iw-samples`` importance samples. One run directory per guide under ``--out``; a guide whose run finished is reused
(``--reuse``), so an interrupted benchmark resumes where it stopped.

Writes benchmarks/results/likelihood_binarized_mnist_<device>.json (rows with their learning curves,
the literature figures, settings, machine, versions) and docs/img/likelihood_curves.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_flowvae.runs import compare, format_table, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "examples" / "configs" / "binarized_mnist_likelihood.toml"
DEFAULT_GUIDES = "mean_field,planar:4,planar:16,radial:16,householder:8,iaf:4,spline:2"

# -log p(x) in nats on the statically binarized MNIST test set, as published (lower is better).
LITERATURE = [
    {"source": "Rezende & Mohamed 2015, DLGM (diagonal Gaussian)", "nll": 89.9},
    {"source": "Rezende & Mohamed 2015, planar flow K=80", "nll": 85.1},
    {"source": "pythae benchmark, VAE (reproduced)", "nll": 89.78},
    {"source": "Tomczak & Welling 2018 (VampPrior paper), standard VAE", "nll": 88.56},
    {"source": "altosaar/jaanli variational-autoencoder (PyTorch), mean-field, 128 IW samples", "nll": 97.10},
    {"source": "altosaar/jaanli variational-autoencoder (PyTorch), IAF, 128 IW samples", "nll": 95.33},
]
TARGETS = {"mean_field": 89.5, "planar:16": 87.5, "iaf": 86.5}


def run_dir_name(spec: str) -> str:
    return spec.replace(":", "_")


def learning_curve(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    keep = ("epoch", "train_elbo", "valid_elbo", "kl_weight", "examples_per_s", "seconds")
    return [{k: rec[k] for k in keep if k in rec} for rec in map(json.loads, lines)]


def train_guide(spec: str, args: argparse.Namespace, out: Path) -> dict:
    """Train and score one guide, or reuse its finished run; the comparison row plus its curve and timing."""
    folder = out / run_dir_name(spec)
    done = folder / "comparison.json"
    if not (args.reuse and done.is_file()):
        overrides = [
            f"data.root={args.data_root}",
            f"train.epochs={args.epochs}",
            f"train.kl_warmup_epochs={args.warmup}",
            f"eval.iw_samples={args.iw_samples}",
            f"eval.test_limit={args.test_limit}",
        ]
        if args.smoke:
            overrides += ["data.limit=300", "train.epochs=1", "eval.iw_samples=30", "eval.test_limit=20"]
        start = time.perf_counter()
        compare(CONFIG, [spec], folder, overrides)
        seconds = time.perf_counter() - start
        comparison = json.loads(done.read_text())
        comparison["wall_seconds"] = seconds
        done.write_text(json.dumps(comparison, indent=2) + "\n")
    comparison = json.loads(done.read_text())
    (row,) = comparison["rows"]
    run = next(p for p in folder.iterdir() if p.is_dir())
    return {**row, "spec": spec, "wall_seconds": comparison.get("wall_seconds"), "curve": learning_curve(run)}


def plot_curves(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for row in rows:
        curve = row["curve"]
        ax.plot([c["epoch"] for c in curve], [-c["valid_elbo"] for c in curve], label=row["spec"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO on the validation split (nats)")
    ax.set_title("Binarized MNIST, MLP 784-300-300-40: one curve per guide")
    lows = [min(-c["valid_elbo"] for c in row["curve"]) for row in rows]
    ax.set_ylim(min(lows) - 2, min(lows) + 25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    rows = [train_guide(spec, args, out) for spec in args.guides.split(",")]
    config = json.loads((out / run_dir_name(rows[0]["spec"]) / "comparison.json").read_text())["config"]
    command = (
        f"python benchmarks/likelihood_table.py --data-root DATA --epochs {args.epochs} --warmup {args.warmup:g} "
        f"--iw-samples {args.iw_samples} --test-limit {args.test_limit}"
    )
    result = {
        "machine": machine(),
        "command": command,
        "config": config,
        "rows": rows,
        "literature": LITERATURE,
        "targets_nll": TARGETS,
    }
    print(format_table(rows))
    for row in rows:
        target = TARGETS.get(row["spec"]) or TARGETS.get(row["guide"])
        if target is not None:
            reached = -row["test_log_px"]
            verdict = "met" if reached <= target else f"missed by {reached - target:.2f} nats"
            print(f"{row['spec']}: -log p(x) {reached:.2f}, target {target}: {verdict}")
    if not args.smoke:
        device = rows[0]["device"].split(":")[0]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"likelihood_binarized_mnist_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_curves(rows, ROOT / "docs" / "img" / "likelihood_curves.png")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding binarized_mnist.npz")
    parser.add_argument("--guides", default=DEFAULT_GUIDES, help="comma-separated flow[:K] specs")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--warmup", type=float, default=10.0, help="KL warm-up epochs")
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--test-limit", type=int, default=1000, help="score N test images spread over the test set")
    parser.add_argument("--out", default="runs/likelihood_table")
    parser.add_argument("--reuse", action="store_true", help="reuse guides whose run already finished")
    parser.add_argument("--smoke", action="store_true", help="tiny run, nothing written to benchmarks/results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
