"""The GP-VAE tables: Healing MNIST imputation against its baselines, and the airline forecast.

    python benchmarks/gpvae.py hmnist --data-root DATA     # GP-VAE and frame-wise VAE on the same generated data
    python benchmarks/gpvae.py airline                      # the 1960 forecast beside seasonal naive and SARIMA
    python benchmarks/gpvae.py hmnist --data-root DATA --smoke   # seconds; writes nothing under benchmarks/

Both train from the shipped configs (examples/configs/{hmnist,airline}_gpvae.toml) through the same code path as
``pyro-flowvae train``; Healing MNIST is generated once and every model and baseline is scored on that data.
Writes benchmarks/results/gpvae_<task>.json (figures, settings, machine, versions), copies the run's figure to
docs/img/, and prints the table; benchmarks/render_readme.py puts the tables in the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pyro_flowvae.runs import as_config, load_run_data, machine, train, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"

#: the frame-wise VAE baseline: the same config with the time structure removed
FRAMEWISE = {"model.prior": "standard_normal", "guide.covariance": "diagonal"}
#: Fortuin et al. (2020), table 1, on their HMNIST (different data from ours: compare the ratios)
PUBLISHED = {"vae": {"nll": 0.599, "mse": 0.232}, "gp_vae": {"nll": 0.350, "mse": 0.114}}

SMOKE_HMNIST = {
    "data.options.num_train": 64,
    "data.options.num_valid": 16,
    "data.options.num_test": 32,
    "train.epochs": 1,
    "eval.iw_samples": 4,
    "eval.impute_samples": 4,
}


def run_hmnist(args: argparse.Namespace, out: Path) -> dict:
    overrides = {"data.root": args.data_root, "train.progress": False, **dict(_parse(args.set))}
    if args.cache_dir:
        overrides["data.cache_dir"] = args.cache_dir
    if args.smoke:
        overrides |= SMOKE_HMNIST
    config = as_config(ROOT / "examples/configs/hmnist_gpvae.toml", overrides)
    tick = time.perf_counter()
    data = load_run_data(config)
    generate_s = time.perf_counter() - tick
    rows = {}
    for name, extra in (("vae", FRAMEWISE), ("gp_vae", {})):
        tick = time.perf_counter()
        result = train(config.with_overrides(extra), out / name, data=data, verbose=True)
        rows[name] = {**result.metrics, "seconds": time.perf_counter() - tick}
    gp = rows["gp_vae"]
    table = {
        "mean_imputation": gp["baselines"]["mean_imputation"],
        "forward_imputation": gp["baselines"]["forward_imputation"],
        **{
            name: {"nll": m["test_nll_missing"], "mse": m["test_mse_missing"], "auroc": m["auroc"]}
            for name, m in rows.items()
        },
    }
    result = {
        "task": "hmnist",
        "machine": machine(),
        "command": "python benchmarks/gpvae.py hmnist --data-root DATA " + " ".join(f"--set {s}" for s in args.set),
        "config": config.to_dict(),
        "data": {"generate_seconds": generate_s, **_data_meta(data.meta)},
        "table": table,
        "published_fortuin_2020": PUBLISHED,
        "runs": {name: _summary(m) for name, m in rows.items()},
        "versions": versions(),
    }
    if not args.smoke:
        shutil.copyfile(out / "gp_vae" / "imputations.png", IMG / f"{_result_name(args)}_imputations.png")
    print(format_hmnist(result))
    return result


def run_airline(args: argparse.Namespace, out: Path) -> dict:
    overrides = {"train.progress": False, **dict(_parse(args.set))}
    if args.smoke:
        overrides |= {"train.epochs": 2, "eval.iw_samples": 4, "eval.impute_samples": 50}
    config = as_config(ROOT / "examples/configs/airline_gpvae.toml", overrides)
    seeds = list(range(1 if args.smoke else args.seeds))
    runs = []
    for seed in seeds:
        tick = time.perf_counter()
        m = train(config.with_overrides({"train.seed": seed}), out / f"airline_seed{seed}", verbose=False).metrics
        keys = ("rmse", "mape", "coverage90", "test_elbo", "epochs", "train_examples_per_s")
        runs.append({"seed": seed, **{k: m[k] for k in keys}, "seconds": time.perf_counter() - tick})
        if seed == seeds[0]:
            first = m
    summary = {
        key: {"mean": statistics.fmean(r[key] for r in runs), "sd": statistics.pstdev(r[key] for r in runs)}
        for key in ("rmse", "mape", "coverage90")
    }
    result = {
        "task": "airline",
        "machine": machine(),
        "command": "python benchmarks/gpvae.py airline " + " ".join(f"--set {s}" for s in args.set),
        "config": config.to_dict(),
        "seeds": seeds,
        "gp_vae": summary,
        "runs": runs,
        "forecast_seed0": first["forecast"],
        "baselines": first["baselines"],
        "versions": versions(),
    }
    if not args.smoke:
        shutil.copyfile(out / f"airline_seed{seeds[0]}" / "forecast.png", IMG / "airline_forecast.png")
    print(format_airline(result))
    return result


def format_hmnist(result: dict) -> str:
    names = {
        "mean_imputation": "mean imputation",
        "forward_imputation": "forward imputation",
        "vae": "VAE (frame-wise, N(0, I) prior)",
        "gp_vae": "GP-VAE (GP prior, banded guide)",
    }

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        "| method | NLL (missing pixels) | MSE (missing pixels) | AUROC (latent/imputed) |",
        "|---|---:|---:|---:|",
    ]
    for key, row in result["table"].items():
        lines.append(f"| {names[key]} | {cell(row.get('nll'))} | {cell(row['mse'])} | {cell(row.get('auroc'))} |")
    return "\n".join(lines)


def format_airline(result: dict) -> str:
    b = result["baselines"]
    g = result["gp_vae"]
    lines = [
        "| method | RMSE (passengers) | MAPE | 90% interval coverage |",
        "|---|---:|---:|---:|",
        f"| seasonal naive (1959 repeated) | {b['seasonal_naive']['rmse']:.1f} | "
        f"{b['seasonal_naive']['mape']:.1f}% | - |",
        f"| SARIMA(0,1,1)(0,1,1)12 on log (CSS fit) | {b['sarima']['rmse']:.1f} | {b['sarima']['mape']:.1f}% | "
        f"{b['sarima']['coverage']:.2f} |",
        f"| GP-VAE, mean ± sd over seeds {result['seeds'][0]}-{result['seeds'][-1]} | {g['rmse']['mean']:.1f} ± "
        f"{g['rmse']['sd']:.1f} | {g['mape']['mean']:.1f}% ± {g['mape']['sd']:.1f} | {g['coverage90']['mean']:.2f} |",
    ]
    for r in result["runs"]:
        lines.append(f"| GP-VAE, seed {r['seed']} | {r['rmse']:.1f} | {r['mape']:.1f}% | {r['coverage90']:.2f} |")
    return "\n".join(lines)


def _result_name(args: argparse.Namespace) -> str:
    """gpvae_hmnist (missing not at random, the config's default), gpvae_hmnist_mcar, gpvae_airline."""
    missing = dict(_parse(args.set)).get("data.options.missing", "mnar")
    return f"gpvae_{args.task}" + ("_mcar" if args.task == "hmnist" and missing == "mcar" else "")


def _summary(m: dict) -> dict:
    keys = (
        "test_elbo", "test_log_px", "test_nll_missing", "test_mse_missing", "auroc", "epochs", "best_epoch",
        "train_examples_per_s", "num_params", "num_train", "prior", "seconds", "missing_share",
    )  # fmt: skip
    return {k: m.get(k) for k in keys}


def _data_meta(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) or k == "missing"}


def _parse(items: list[str]) -> list[tuple[str, object]]:
    from pyro_flowvae.config import parse_overrides

    return list(parse_overrides(items).items())


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"gpvae_{args.task}_"))
    result = run_hmnist(args, out) if args.task == "hmnist" else run_airline(args, out)
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{_result_name(args)}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("hmnist", "airline"), help="which table to produce")
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (hmnist only)")
    parser.add_argument("--cache-dir", default=None, help="writable folder for extracted MNIST files")
    parser.add_argument("--out", default=None, help="folder for the run directories (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="airline: train seeds 0..N-1 and report each")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes no results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
