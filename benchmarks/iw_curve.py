"""How the importance-sampled log p(x) of a trained run grows with the number of samples K.

    python benchmarks/iw_curve.py RUN_DIR --test-limit 500 --ks 1,10,100,1000,5000

Writes benchmarks/results/iw_curve_<guide>_<device>.json and prints one line per K: the IWAE bound, the
ELBO from the same samples, and the share of test images whose importance weights have Pareto k > 0.7.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro

from pyro_flowvae.evaluation.importance import estimate_log_likelihood
from pyro_flowvae.runs import load_run, load_run_data, versions

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main(args: argparse.Namespace) -> dict:
    config, vae, _ = load_run(args.run_dir, device=args.device)
    x = load_run_data(config).test[: args.test_limit].to(next(vae.parameters()).device)
    rows = []
    for k in (int(k) for k in args.ks.split(",")):
        pyro.set_rng_seed(args.seed)
        with pyro.validation_enabled(False):
            summary = estimate_log_likelihood(vae.model, vae.guide, x, num_samples=k).summary()
        rows.append(summary)
        share = summary["pareto_k_share_above_0_7"]
        print(f"K={k:>5}: log p(x) {summary['log_px']:8.2f}  ELBO {summary['elbo']:8.2f}  Pareto k>0.7: "
              f"{'n/a' if share is None else f'{share:.1%}'}", flush=True)  # fmt: skip
    result = {"run": config.to_dict(), "guide": config.guide.flow, "num_test": int(x.shape[0]), "rows": rows,
              "command": f"python benchmarks/iw_curve.py RUN --test-limit {args.test_limit} --ks {args.ks}",
              "versions": versions()}  # fmt: skip
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        device = str(next(vae.parameters()).device).split(":")[0]
        (RESULTS / f"iw_curve_{config.guide.flow}_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--ks", default="1,10,100,1000,5000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
