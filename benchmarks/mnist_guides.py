"""The README's first results table: one MNIST config trained with each guide, side by side in one run.

    python benchmarks/mnist_guides.py --data-root DATA --epochs 30           # trains, then writes the JSON
    python benchmarks/mnist_guides.py --from-run runs/cmp --command "..."   # records an existing compare run

Writes benchmarks/results/mnist_guides_<device>.json (rows, settings, machine, versions) and prints the
table; benchmarks/render_readme.py puts it in the README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_flowvae.runs import compare, format_table, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main(args: argparse.Namespace) -> dict:
    if args.from_run:
        comparison = json.loads((Path(args.from_run) / "comparison.json").read_text())
        command = args.command
    else:
        overrides = [f"data.root={args.data_root}", f"train.epochs={args.epochs}", f"eval.iw_samples={args.iw_samples}"]
        if args.smoke:
            overrides += ["data.limit=500", "train.epochs=1", "eval.iw_samples=30", "eval.test_limit=100"]
        out = Path(args.out)
        compare(ROOT / "examples/configs/mnist_mean_field.toml", args.guides.split(","), out, overrides)
        comparison = json.loads((out / "comparison.json").read_text())
        command = (
            f"python benchmarks/mnist_guides.py --data-root DATA --epochs {args.epochs} --iw-samples {args.iw_samples}"
        )
    comparison["config"]["data"]["root"] = "DATA"  # the machine's own path stays out of the committed results
    result = {"machine": machine(), "command": command, **comparison}
    device = comparison["rows"][0]["device"].split(":")[0]
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"mnist_guides_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(comparison["rows"]))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--guides", default="mean_field,planar:16,iaf:2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--out", default="runs/mnist_guides")
    parser.add_argument("--from-run", default=None, help="record an existing `pyro-flowvae compare` directory")
    parser.add_argument("--command", default="", help="with --from-run: the command that produced it")
    parser.add_argument("--smoke", action="store_true", help="tiny run, nothing written to benchmarks/results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
