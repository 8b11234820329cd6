"""The ``pyro-flowvae`` command: train, evaluate, sample, compare, config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pyro_flowvae.errors import FlowVAEError, os_error_message

__all__ = ["main", "build_parser"]

EPILOG = """examples:
  pyro-flowvae train examples/configs/mnist_iaf.toml --out runs/iaf --set data.root=DATA --set train.epochs=5
  pyro-flowvae train runs/iaf/config.toml --out runs/iaf --resume --set train.epochs=10
  pyro-flowvae evaluate runs/iaf --iw-samples 5000          # writes runs/iaf/evaluate_eval.iw_samples=5000.json
  pyro-flowvae sample runs/iaf --num 64 --out samples.png
  pyro-flowvae compare examples/configs/mnist_mean_field.toml --guides mean_field,planar:16,iaf:2 --out runs/cmp
  pyro-flowvae config            # every config key with its default and meaning
  pyro-flowvae train examples/configs/hmnist_gpvae.toml --out runs/hmnist --set data.root=DATA   # GP-VAE
  pyro-flowvae train examples/configs/airline_gpvae.toml --out runs/airline                      # forecast
  torchrun --standalone --nproc_per_node=2 -m pyro_flowvae train CONFIG --out RUN   # data-parallel (DDP)

Overrides are dotted keys with TOML values: --set guide.flow=planar --set guide.num_flows=16
--set model.hidden=[300,300] --set data.limit=none. Figures are nats per datapoint."""


DEBUG_HELP = "show the full Python traceback of an error (without it, errors are one message and exit code 1 or 2)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-flowvae",
        description="Train and score VAEs whose guides are normalizing flows, and GP-VAEs over time series "
        "with missing values, as Pyro programs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub_add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub_add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    def overrides(p: argparse.ArgumentParser, text: str = "override a config key, e.g. --set guide.flow=iaf") -> None:
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=f"{text} (repeatable)"
        )

    p = sub.add_parser(
        "train",
        help="train a model, score it and write a run directory",
        description="Train with SVI, evaluate on the test set, write RUN_DIR (config.toml, "
        "checkpoint.pt, best.pt, log.jsonl, elbo_curve.png, metrics.json; samples.png and "
        "reconstructions.png for images, imputations.png or forecast.png for sequences). Under torchrun "
        "the processes train data-parallel and rank 0 writes RUN_DIR.",
    )
    p.add_argument("config", help="TOML config file (see `pyro-flowvae config` for the keys)")
    p.add_argument("--out", required=True, help="run directory to create (or to resume with --resume)")
    overrides(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (config must match, except "
        "train.epochs and other keys that do not change the model)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars")

    p = sub.add_parser(
        "evaluate",
        help="re-score a run on its test set (ELBO, IW log p(x), Pareto k)",
        description="Re-score a run's best model on its test set. metrics.json keeps the figures of training; "
        "these are written to RUN_DIR/evaluate.json, or RUN_DIR/evaluate_<overrides>.json with --iw-samples or "
        "--set, together with the overrides and whether the data are those the run was trained on.",
    )
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--iw-samples", type=int, default=None, help="importance samples K per datapoint")
    overrides(
        p,
        "override how the run is scored or on which data, e.g. --set eval.test_limit=2000 or --set "
        "data.path=other.npz (eval.* and data.* keys only: the model is the run's)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    p = sub.add_parser("sample", help="draw images from a run's model into a PNG grid")
    p.add_argument("run_dir", help="a run directory written by train")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws")

    p = sub.add_parser("compare", help="train one config with several guides and print one table")
    p.add_argument("config")
    p.add_argument(
        "--guides",
        default="mean_field,planar,iaf",
        help="comma-separated flow names, each optionally with its number of layers: mean_field,planar:16,iaf:2",
    )
    p.add_argument("--out", required=True, help="folder for one run directory per guide")
    overrides(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted comparison in --out: finished guides are reused, the interrupted one resumes "
        "from its checkpoint, the rest are trained",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    sub.add_parser("config", help="list every config key with its type, default and meaning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE") else None
    prefix = f"rank {rank}: " if rank is not None else ""
    debug = getattr(args, "debug", False)
    where = f"{prefix}pyro-flowvae {args.command}"
    try:
        return _run(args)
    except FlowVAEError as error:
        if debug:
            raise
        print(f"{where}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{where}: {_interrupted_message(args)}", file=sys.stderr)
        return 130
    except OSError as error:  # a file the command reads or writes outside the checked paths
        if debug:
            raise
        print(f"{where}: error: {os_error_message(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the one place that turns the unforeseen into a message
        if debug:
            raise
        print(
            f"{where}: unexpected error: {type(error).__name__}: {error}\n"
            f"This is a bug or a failure pyro-flowvae does not foresee; run the same command with --debug for the "
            "traceback, and report it with that traceback",
            file=sys.stderr,
        )
        return 1
    finally:
        from pyro_flowvae.infer.distributed import cleanup

        cleanup()


def _run(args: argparse.Namespace) -> int:
    from pyro_flowvae import runs
    from pyro_flowvae.config import describe_config, parse_overrides

    if args.command == "config":
        print(describe_config())
        return 0
    if args.command == "train":
        config = runs.as_config(args.config, args.overrides)
        if args.quiet:
            config = config.with_overrides({"train.progress": False})
        result = runs.train(config, args.out, resume=args.resume, verbose=not args.quiet)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            _print_metrics(result.metrics)
            _print_flow_health(result.metrics)
            print(f"run directory: {args.out}")
        return 0
    if args.command == "evaluate":
        metrics = runs.evaluate_run(
            args.run_dir, args.iw_samples, parse_overrides(args.overrides), verbose=not args.quiet
        )
        _print_metrics(metrics)
        _print_flow_health(metrics)
        print(f"wrote {metrics['evaluation_file']} (metrics.json keeps the figures of training)")
        return 0
    if args.command == "sample":
        runs.sample_run(args.run_dir, args.num, args.out, seed=args.seed)
        print(f"wrote {args.out}")
        return 0
    if args.command == "compare":
        guides = [g.strip() for g in args.guides.split(",") if g.strip()]
        overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
        rows = runs.compare(args.config, guides, args.out, overrides, verbose=not args.quiet, resume=args.resume)
        print(runs.format_table(rows))
        return 0
    raise AssertionError(args.command)


def _interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command left behind, and how to go on: only what is there."""
    from pathlib import Path

    if args.command == "compare":
        out = Path(args.out)
        if any(out.glob("*/checkpoint.pt")):
            return (
                f"interrupted; the guides' run directories in {out} are kept: continue with the same command and "
                "--resume (finished guides are reused, the interrupted one resumes from its last epoch)"
            )
        return f"interrupted before any guide finished an epoch; {out} holds no checkpoint: start again"
    if args.command != "train":
        return "interrupted"
    out = Path(args.out)
    if (out / "checkpoint.pt").is_file():
        return (
            f"interrupted; the checkpoint of the last finished epoch, {out / 'checkpoint.pt'}, is intact: continue "
            f"with pyro-flowvae train {out / 'config.toml'} --out {out} --resume"
        )
    return f"interrupted before the first epoch finished, so {out} holds no checkpoint; start the run again"


def _print_flow_health(metrics: dict) -> None:
    from pyro_flowvae.flows.health import format_flow_health

    health = metrics.get("flow_health")
    if health is not None and health.get("mean_log_det") is not None:
        print(format_flow_health(health, health.get("gap")))


def _print_metrics(metrics: dict) -> None:
    keys = (
        "guide",
        "prior",
        "epochs",
        "test_elbo",
        "test_log_px",
        "test_log_px_stderr",
        "iw_samples",
        "pareto_k_share_above_0_7",
        "active_units",
        "test_nll_missing",
        "test_mse_missing",
        "auroc",
        "rmse",
        "mape",
        "coverage90",
        "train_examples_per_s",
        "world_size",
        "device",
    )
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
