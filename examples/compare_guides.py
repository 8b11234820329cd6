"""Train one VAE with several guides and compare them side by side, using the Python API.

Every guide is the same config with ``guide.flow`` (and ``guide.num_flows``) swapped, all else equal: the
same data, networks, seed and schedule. ``pyro_flowvae.compare`` trains each into ``OUT/<guide>`` (a full run
directory: checkpoints, ``log.jsonl``, ``metrics.json``, figures) and returns one row per guide; this script
prints them as a table (test ELBO, importance-sampled log p(x), share of Pareto k > 0.7, training examples/s)
and draws the validation ELBO per epoch of every guide on one axes, beside log p(x) per guide.

    python examples/compare_guides.py --data-root DATA --guides mean_field,planar:16,iaf:2 --epochs 10 --out runs/cmp
    python examples/compare_guides.py --data-root DATA --limit 10000 --epochs 3 --iw-samples 200   # a few minutes
    python examples/compare_guides.py --smoke          # seconds, on generated data, in a temp dir

The same comparison from the command line (without the figure):

    pyro-flowvae compare examples/configs/mnist_mean_field.toml --guides mean_field,planar:16,iaf:2 --out runs/cmp
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_flowvae import compare, load_config
from pyro_flowvae.config import parse_overrides
from pyro_flowvae.runs import format_table

CONFIG = Path(__file__).resolve().parent / "configs" / "mnist_mean_field.toml"


def smoke_data(folder: Path) -> Path:
    """A few hundred noisy binary 8x8 'digits' (three prototypes), for a seconds-long run."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 8, 8)) < 0.5
    x = np.logical_xor(prototypes[rng.integers(0, 3, 600)], rng.random((600, 8, 8)) < 0.05)
    path = folder / "smoke.npz"
    np.savez(path, train=x[:400].astype(np.uint8), valid=x[400:500].astype(np.uint8), test=x[500:].astype(np.uint8))
    return path


def read_log(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run directory's ``log.jsonl``."""
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def plot_comparison(rows: list[dict], logs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Left: validation ELBO per epoch of every guide. Right: test log p(x) (IWAE bound) and test ELBO per guide."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    curves, bars = fig.subplots(1, 2, width_ratios=[3, 2])
    for i, (label, log) in enumerate(logs.items()):
        epochs = [r["epoch"] for r in log]
        curves.plot(epochs, [r["valid_elbo"] for r in log], marker="o", color=f"C{i}", label=f"{label} (validation)")
        curves.plot(epochs, [r["train_elbo"] for r in log], ls=":", color=f"C{i}", label=f"{label} (train)")
    curves.set_xlabel("epoch")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylabel("ELBO (nats per datapoint)")
    curves.set_title("ELBO per epoch (train: running, KL-weighted)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    labels = list(logs)
    x = np.arange(len(rows))
    log_px = np.array([r["test_log_px"] for r in rows])
    elbo = np.array([r["test_elbo"] for r in rows])
    bars.errorbar(x, log_px, yerr=[r["test_log_px_stderr"] for r in rows], fmt="o", ms=8, capsize=4,
                  label=f"log p(x), K={rows[0]['iw_samples']}")  # fmt: skip
    bars.errorbar(x, elbo, yerr=[r["test_elbo_stderr"] for r in rows], fmt="s", ms=6, capsize=4, label="ELBO")
    bars.set_xticks(x, labels)
    bars.set_xlim(-0.5, len(rows) - 0.5)
    bars.set_ylabel("nats per test datapoint (± s.e.)")
    bars.set_title("test set")
    bars.grid(alpha=0.3, axis="y")
    bars.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> list[dict]:
    guides = [g.strip() for g in args.guides.split(",") if g.strip()]
    overrides = {"train.seed": args.seed, "train.progress": False}
    if args.smoke:
        out = Path(tempfile.mkdtemp(prefix="compare_guides_"))
        overrides |= {
            "data.name": "npz",
            "data.path": str(smoke_data(out)),
            "model.hidden": [32],
            "model.latent_dim": 4,
            "train.epochs": 3,
            "train.batch_size": 50,
            "train.kl_warmup_epochs": 0.0,
            "eval.iw_samples": 30,
            "eval.sample_chunk": 30,
        }
    else:
        out = Path(args.out)
        overrides |= {"data.root": args.data_root, "train.epochs": args.epochs, "eval.iw_samples": args.iw_samples}
        if args.cache_dir:
            overrides["data.cache_dir"] = args.cache_dir
        if args.limit:
            overrides["data.limit"] = args.limit
        if args.test_limit:
            overrides["eval.test_limit"] = args.test_limit
    config = load_config(args.config, overrides | parse_overrides(args.set))  # --set has the last word

    # one call trains every guide on the same data; each run directory is out/<guide>, e.g. out/planar_16
    rows = compare(config, guides, out, verbose=not args.smoke)
    print(format_table(rows))

    logs = {spec: read_log(out / spec.replace(":", "_")) for spec in guides}
    figure = Path(args.figure) if args.figure else out / "comparison.png"
    title = f"{config.data.name}, latent {config.model.latent_dim}: the same model with {len(guides)} guides"
    plot_comparison(rows, logs, figure, title=title)
    print(f"run directories and comparison.json in {out}; figure {figure}")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG), help="TOML config to start from (default: %(default)s)")
    parser.add_argument(
        "--guides", default="mean_field,planar:16,iaf:2", help="comma-separated name or name:K (K flow layers)"
    )
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (read-only is fine)")
    parser.add_argument("--cache-dir", default=None, help="writable folder for extracted MNIST files")
    parser.add_argument("--out", default="runs/compare_guides", help="folder for the run directories (must be new)")
    parser.add_argument("--figure", default=None, help="comparison figure (default: OUT/comparison.png)")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs of every guide")
    parser.add_argument("--limit", type=int, default=None, help="data.limit: use the first N training images")
    parser.add_argument("--iw-samples", type=int, default=1000, help="importance samples K per test image")
    parser.add_argument("--test-limit", type=int, default=None, help="score only the first N test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--set", action="append", default=[], help="any config override key=value (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on generated data in a temp dir")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
