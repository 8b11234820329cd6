"""The GP-VAE tables: Healing MNIST imputation against its baselines, and the airline forecast.

    python benchmarks/gpvae.py hmnist --data-root DATA     # GP-VAE and frame-wise VAE on the same generated data
    python benchmarks/gpvae.py airline        # rolling origins 1957-1960 beside seasonal naive and SARIMA
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
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pyro_flowvae.config import Config
from pyro_flowvae.data.airline import to_passengers
from pyro_flowvae.evaluation.sequences import forecast_interval_metrics, impute_batches
from pyro_flowvae.runs import as_config, load_run, load_run_data, machine, train, train_or_reuse, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"

#: the frame-wise VAE baseline: the same config with the time structure removed, from the prior, the guide's
#: covariance and the encoder (a temporal window of 1: each frame encoded alone, as Fortuin et al.'s VAE)
FRAMEWISE = {"model.prior": "standard_normal", "guide.covariance": "diagonal", "model.time_window": 1}
#: the GP-VAE with a flow on its banded guide: planar layers on the flattened (latent_dim x frames) z
GP_FLOW = {"guide.flow": "planar", "guide.num_flows": 8}
#: the trained rows of each Healing MNIST table, each the config's GP-VAE with these overrides
HMNIST_ROWS = (("vae", FRAMEWISE), ("gp_vae", {}), ("gp_vae_planar", GP_FLOW))
#: Fortuin et al. (2020), table 1, on their HMNIST (different data from ours: compare the ratios)
PUBLISHED = {"vae": {"nll": 0.599, "mse": 0.232}, "gp_vae": {"nll": 0.350, "mse": 0.114}}

#: the three Healing MNIST benchmarks, each a set of [data.options] (`--variant`):
#: - mcar: 60% of the pixels missing completely at random;
#: - mnar: Fortuin et al.'s mechanism, white pixels twice as likely missing as black ones, at a 34% overall rate:
#:   about 60% of white and 30% of black pixels hidden, so a few frames together still show the digit (the 60%
#:   rate of the earlier table hid 95% of the white pixels, and no method could recover a digit from that);
#: - frames: 3 of the 10 frames of each sequence hidden at random positions, 40% of the other pixels missing
#:   completely at random (what only a prior over time can fill).
VARIANTS = {
    "mcar": {"data.options.missing": "mcar", "data.options.missing_rate": 0.6},
    "mnar": {"data.options.missing": "mnar", "data.options.missing_rate": 0.34, "data.options.white_ratio": 2.0},
    "frames": {"data.options.missing": "frames", "data.options.missing_rate": 0.4, "data.options.missing_frames": 3},
}

SMOKE_HMNIST = {
    "data.options.num_train": 64,
    "data.options.num_valid": 16,
    "data.options.num_test": 32,
    "train.epochs": 1,
    "eval.iw_samples": 4,
    "eval.impute_samples": 4,
}


def run_hmnist(args: argparse.Namespace, out: Path) -> dict:
    overrides = {"data.root": args.data_root, "train.progress": False, **VARIANTS.get(args.variant, {})}
    overrides |= dict(_parse(args.set))
    if args.cache_dir:
        overrides["data.cache_dir"] = args.cache_dir
    if args.smoke:
        overrides |= SMOKE_HMNIST
    config = as_config(ROOT / "examples/configs/hmnist_gpvae.toml", overrides)
    tick = time.perf_counter()
    data = load_run_data(config)
    generate_s = time.perf_counter() - tick
    rows = {}
    for name, extra in HMNIST_ROWS:
        rows[name] = _train_or_reuse(config.with_overrides(extra), out / name, data)
    gp = rows["gp_vae"]
    table = {
        "mean_imputation": gp["baselines"]["mean_imputation"],
        "forward_imputation": gp["baselines"]["forward_imputation"],
        **{
            name: {
                "nll": m["test_nll_missing"], "mse": m["test_mse_missing"], "auroc": m["auroc"],
                **({"mse_missing_frames": m["test_mse_missing_frames"]} if "test_mse_missing_frames" in m else {}),
            }
            for name, m in rows.items()
        },
    }  # fmt: skip
    public = config.to_dict()
    public["data"]["root"] = "DATA"  # the machine's own paths stay out of the committed results
    if "cache_dir" in public["data"]:
        public["data"]["cache_dir"] = "CACHE"
    result = {
        "task": "hmnist",
        "machine": machine(),
        "command": f"python benchmarks/gpvae.py hmnist --variant {args.variant} --data-root DATA "
        + " ".join(f"--set {s}" for s in args.set),
        "variant": args.variant,
        "config": public,
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


#: the rolling origins: each year is forecast from the months before it
ORIGINS = (1957, 1958, 1959, 1960)


def forecast_draws(run_dir: Path, num_samples: int) -> tuple[torch.Tensor, dict]:
    """The posterior-predictive draws (S, horizon) on the passenger scale of a trained airline run's test window,
    drawn with the seed its evaluation used (so they are the draws behind its metrics.json), and the data's meta."""
    config, vae, _ = load_run(run_dir)
    data = load_run_data(config)
    torch.manual_seed(0)
    imputation = impute_batches(vae, data.test, num_samples)
    horizon = int(data.meta["horizon"])
    return to_passengers(imputation.samples[:, -1, -horizon:, 0], data.meta), data.meta


def pooled(rows: list[dict], level: float = 0.9, truth_key: str = "truth") -> dict:
    r"""RMSE, MAPE (%), and for rows with intervals the coverage and the mean interval score of the ``level``
    interval [l, u] over every forecast month of every origin. The interval score (Gneiting & Raftery 2007,
    Eq. 43; lower is better) is :math:`(u - l) + \frac{2}{\alpha}(l - y)\,1[y < l] + \frac{2}{\alpha}
    (y - u)\,1[y > u]` with :math:`\alpha = 1 - \text{level}`: a proper score, so it rewards bands that are
    as narrow as the errors allow, where coverage alone rewards any band wide enough."""
    truth = torch.tensor([y for r in rows for y in r[truth_key]], dtype=torch.float64)
    mean = torch.tensor([y for r in rows for y in r["mean"]], dtype=torch.float64)
    out = {
        "rmse": float((mean - truth).pow(2).mean().sqrt()),
        "mape": float(((mean - truth).abs() / truth).mean() * 100),
        "months": int(truth.numel()),
    }
    if all("lower" in r for r in rows):
        lower = torch.tensor([y for r in rows for y in r["lower"]], dtype=torch.float64)
        upper = torch.tensor([y for r in rows for y in r["upper"]], dtype=torch.float64)
        out["coverage"] = float(((truth >= lower) & (truth <= upper)).double().mean())
        alpha = 1.0 - level
        below, above = (lower - truth).clamp(min=0), (truth - upper).clamp(min=0)
        out["interval_score"] = float((upper - lower + 2.0 / alpha * (below + above)).mean())
    return out


def run_airline(args: argparse.Namespace, out: Path) -> dict:
    """A rolling-origin backtest: every year of ORIGINS forecast from the data before it, by the GP-VAE (one run
    per seed, and the seeds' ensemble, which mixes their predictive draws), SARIMA(0,1,1)(0,1,1)12 and seasonal
    naive, scored per origin and pooled over the 48 months."""
    overrides = {"train.progress": False, **dict(_parse(args.set))}
    if args.smoke:
        overrides |= {"train.epochs": 2, "eval.iw_samples": 4, "eval.impute_samples": 50}
    config = as_config(ROOT / "examples/configs/airline_gpvae.toml", overrides)
    level = config.eval.level
    seeds = list(range(1 if args.smoke else args.seeds))
    origins = ORIGINS[-1:] if args.smoke else tuple(args.origins)
    per_origin = []
    for year in origins:
        runs, draws = [], []
        for seed in seeds:
            run_dir = out / f"airline_{year}_seed{seed}"
            tick = time.perf_counter()
            cfg = config.with_overrides({"train.seed": seed, "data.options.end_year": year})
            m = train(cfg, run_dir, verbose=False).metrics
            seconds = time.perf_counter() - tick
            seed_draws, meta = forecast_draws(run_dir, config.eval.impute_samples)
            draws.append(seed_draws)
            f = m["forecast"]
            runs.append(
                {
                    "seed": seed, "rmse": m["rmse"], "mape": m["mape"], "coverage90": m["coverage90"],
                    "test_elbo": m["test_elbo"], "epochs": m["epochs"], "seconds": seconds,
                    "mean": f["mean"], "lower": f["lower"], "upper": f["upper"],
                }
            )  # fmt: skip
        truth = torch.tensor(m["forecast"]["truth"], dtype=torch.float64)
        ensemble = forecast_interval_metrics(torch.cat(draws), truth, level)
        per_origin.append(
            {
                "year": year,
                "months": m["forecast"]["months"],
                "truth": truth.tolist(),
                "history": meta["series"][: -int(meta["horizon"])],
                "runs": runs,
                "ensemble": {k: ensemble[k] for k in ("rmse", "mape", "coverage", "mean", "lower", "upper")},
                "baselines": m["baselines"],
            }
        )
    methods = {
        "gp_vae_ensemble": [{**o["ensemble"], "truth": o["truth"]} for o in per_origin],
        "sarima": [{**o["baselines"]["sarima"], "truth": o["truth"]} for o in per_origin],
        "seasonal_naive": [{**o["baselines"]["seasonal_naive"], "truth": o["truth"]} for o in per_origin],
    }
    for i, seed in enumerate(seeds):
        methods[f"gp_vae_seed{seed}"] = [{**o["runs"][i], "truth": o["truth"]} for o in per_origin]
    overall = {name: pooled(rows, level) for name, rows in methods.items()}
    ratio = overall["gp_vae_ensemble"]["rmse"] / overall["sarima"]["rmse"]
    result = {
        "task": "airline",
        "machine": machine(),
        "command": " ".join(
            ["python benchmarks/gpvae.py airline"]
            + ([f"--origins {','.join(map(str, origins))}"] if tuple(origins) != ORIGINS else [])
            + ([f"--seeds {args.seeds}"] if args.seeds != 5 else [])
            + ([f"--name {args.name}"] if args.name else [])
            + [f"--set {s}" for s in args.set]
        ),
        "config": config.to_dict(),
        "seeds": seeds,
        "origins": list(origins),
        "level": level,
        "overall": overall,
        "targets": {
            "ensemble_rmse_over_sarima": ratio,
            "ensemble_rmse_within_1_2x_sarima": ratio <= 1.2,
            "ensemble_coverage_in_0_8_0_97": 0.8 <= overall["gp_vae_ensemble"]["coverage"] <= 0.97,
        },
        "per_origin": per_origin,
        "versions": versions(),
    }
    plot_backtest(per_origin, level, (IMG if _is_default_run(args) else out) / "airline_backtest.png")
    print(format_airline(result))
    return result


def plot_backtest(per_origin: list[dict], level: float, path: Path) -> None:
    """One panel per origin: the two years before it, the held-out year, the GP-VAE ensemble's mean and HDI band,
    and SARIMA's mean and interval."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.5))
    axes = fig.subplots(2, 2).ravel()
    for ax, o in zip(axes, per_origin):
        history = o["history"][-24:]
        t_hist, t_future = list(range(-len(history), 0)), list(range(len(o["truth"])))
        ax.plot(t_hist, history, color="black", lw=1.2, label="observed")
        ax.plot(t_future, o["truth"], color="black", lw=1.2, ls=":", label="held out (truth)")
        e, s = o["ensemble"], o["baselines"]["sarima"]
        ax.fill_between(t_future, e["lower"], e["upper"], color="C0", alpha=0.3, label=f"GP-VAE ensemble {level:.0%}")
        ax.plot(t_future, e["mean"], color="C0", lw=2, label="GP-VAE ensemble mean")
        ax.fill_between(t_future, s["lower"], s["upper"], color="C1", alpha=0.15, label=f"SARIMA {level:.0%}")
        ax.plot(t_future, s["mean"], color="C1", lw=1.2, ls="--", label="SARIMA(0,1,1)(0,1,1)12")
        ax.set_title(
            f"{o['year']} from 1949-{o['year'] - 1}: RMSE GP-VAE {e['rmse']:.1f}, SARIMA {s['rmse']:.1f}", fontsize=10
        )
        ax.set_xticks([-24, -12, 0, 11], [f"{o['year'] - 2}-01", f"{o['year'] - 1}-01", f"{o['year']}-01",
                                           f"{o['year']}-12"])  # fmt: skip
        ax.set_ylabel("passengers (thousands)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _train_or_reuse(config: Config, run_dir: Path, data: Any) -> dict:
    """:func:`~pyro_flowvae.runs.train_or_reuse` with ``seconds``: the wall time of this training, or for a reused
    run (``reused`` set) the sum of its logged epochs, so rerunning the benchmark with the same ``--out`` trains
    only the rows it lacks."""
    tick = time.perf_counter()
    metrics, reused = train_or_reuse(config, run_dir, data, verbose=True)
    if not reused:
        return {**metrics, "seconds": time.perf_counter() - tick}
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    seconds = sum(rec.get("seconds", 0.0) for rec in map(json.loads, lines) if "epoch" in rec)
    print(f"{run_dir.name}: finished in {run_dir}, reused", flush=True)
    return {**metrics, "seconds": seconds, "reused": True}


def format_hmnist(result: dict) -> str:
    names = {
        "mean_imputation": "mean imputation",
        "forward_imputation": "forward imputation",
        "vae": "VAE (frame-wise, N(0, I) prior)",
        "gp_vae": "GP-VAE (GP prior, banded guide)",
        "gp_vae_planar": "GP-VAE, planar flow K=8 on the banded guide",
    }

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    frames = any("mse_missing_frames" in row for row in result["table"].values())
    lines = [
        "| method | NLL (missing pixels) | MSE (missing pixels) |"
        + (" MSE (hidden frames) |" if frames else "")
        + " AUROC (latent/imputed) |",
        "|---|---:|---:|" + ("---:|" if frames else "") + "---:|",
    ]
    for key, row in result["table"].items():
        hidden = f" {cell(row.get('mse_missing_frames'))} |" if frames else ""
        lines.append(
            f"| {names[key]} | {cell(row.get('nll'))} | {cell(row['mse'])} |{hidden} {cell(row.get('auroc'))} |"
        )
    return "\n".join(lines)


def format_airline(result: dict) -> str:
    """Pooled over the origins (48 months), then per origin."""
    names = {
        "seasonal_naive": "seasonal naive (last year repeated)",
        "sarima": "SARIMA(0,1,1)(0,1,1)12 on log (CSS fit)",
        "gp_vae_ensemble": f"GP-VAE, ensemble of seeds {result['seeds'][0]}-{result['seeds'][-1]} (draws mixed)",
    }
    names |= {f"gp_vae_seed{s}": f"GP-VAE, seed {s}" for s in result["seeds"]}
    years = result["origins"]
    per_year = {
        name: [
            next(r for r in o["runs"] if f"gp_vae_seed{r['seed']}" == name)["rmse"]
            if name.startswith("gp_vae_seed")
            else (o["ensemble"] if name == "gp_vae_ensemble" else o["baselines"][name])["rmse"]
            for o in result["per_origin"]
        ]
        for name in names
    }
    level = f"{result.get('level', 0.9):.0%}"
    head = f"| method | RMSE | MAPE | {level} coverage | {level} interval score |" + "".join(
        f" RMSE {y} |" for y in years
    )
    lines = [head, "|---|---:|---:|---:|---:|" + "---:|" * len(years)]
    for name, label in names.items():
        o = result["overall"][name]
        cover = f"{o['coverage']:.2f}" if "coverage" in o else "-"
        score = f"{o['interval_score']:.1f}" if "interval_score" in o else "-"
        cells = "".join(f" {v:.1f} |" for v in per_year[name])
        lines.append(f"| {label} | {o['rmse']:.1f} | {o['mape']:.1f}% | {cover} | {score} |{cells}")
    return "\n".join(lines)


def _is_default_run(args: argparse.Namespace) -> bool:
    """Whether this run makes the README's figures (not a smoke run, and the airline backtest's own origins)."""
    return not args.smoke and (args.task != "airline" or tuple(args.origins) == ORIGINS)


def _result_name(args: argparse.Namespace) -> str:
    """gpvae_hmnist_<variant> (mcar, mnar, frames; gpvae_hmnist without --variant), gpvae_airline, or ``--name``."""
    if args.name:
        return args.name
    if args.task != "hmnist":
        return f"gpvae_{args.task}"
    return "gpvae_hmnist" + (f"_{args.variant}" if args.variant else "")


def _summary(m: dict) -> dict:
    keys = (
        "test_elbo", "test_log_px", "test_nll_missing", "test_mse_missing", "auroc", "epochs", "best_epoch",
        "train_examples_per_s", "num_params", "num_train", "prior", "seconds", "missing_share",
        "reused", "guide", "num_flows",
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
    parser.add_argument(
        "--variant",
        choices=tuple(VARIANTS),
        default=None,
        help="hmnist: the missingness benchmark (see VARIANTS); default: the config's own [data.options]",
    )
    parser.add_argument("--data-root", default="data", help="folder holding MNIST/raw (hmnist only)")
    parser.add_argument("--cache-dir", default=None, help="writable folder for extracted MNIST files")
    parser.add_argument("--out", default=None, help="folder for the run directories (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="airline: train seeds 0..N-1 and report each")
    parser.add_argument(
        "--origins",
        type=lambda text: [int(y) for y in text.split(",")],
        default=list(ORIGINS),
        help="airline: the years forecast, each from the months before it (default 1957,1958,1959,1960; earlier "
        "years, e.g. 1955,1956, are a validation backtest for choosing settings without touching the test years)",
    )
    parser.add_argument("--name", default=None, help="the results file's name (default gpvae_<task>[_<variant>])")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes no results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
