"""Render the README's generated blocks from committed files, so the README never quotes a figure no file backs.

python benchmarks/render_readme.py          # rewrite README.md
python benchmarks/render_readme.py --check  # exit 1 if README.md is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pyro_flowvae.config import describe_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def results_block() -> str:
    parts = []
    for path in sorted(RESULTS.glob("mnist_guides_*.json")):
        data = json.loads(path.read_text())
        cfg = data["config"]
        rows = data["rows"]
        lines = [
            f"MNIST (dynamically binarized), MLP 784-{'-'.join(map(str, cfg['model']['hidden']))}-"
            f"{cfg['model']['latent_dim']}, Bernoulli likelihood, batch {cfg['train']['batch_size']}, Adam "
            f"{cfg['train']['lr']:g}, KL warm-up {cfg['train']['kl_warmup_epochs']:g} epochs, early stopping on the "
            f"validation ELBO (patience {cfg['train'].get('patience', 'none')}); test figures on "
            f"{rows[0]['num_test']} test images with the best-validation weights. Measured on this code on "
            f"{data['machine']} (`{path.relative_to(ROOT)}`), with `{data['command']}`.",
            "",
            "| guide | K | epochs (best) | test ELBO | log p(x), K=" + f"{rows[0]['iw_samples']} IW samples"
            " | Pareto k > 0.7 | active units | train examples/s | parameters |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            share = "n/a" if r["pareto_k_share_above_0_7"] is None else f"{r['pareto_k_share_above_0_7']:.0%}"
            lines.append(
                f"| {r['guide']} | {r['num_flows']} | {r['epochs']} ({r['best_epoch']}) | "
                f"{r['test_elbo']:.2f} ± {r['test_elbo_stderr']:.2f} | {r['test_log_px']:.2f} ± "
                f"{r['test_log_px_stderr']:.2f} | {share} | {r['active_units']} | "
                f"{r['train_examples_per_s']:,.0f} | {r['num_params']:,} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "No results recorded yet."


def iw_curve_block() -> str:
    parts = []
    for path in sorted(RESULTS.glob("iw_curve_*.json")):
        data = json.loads(path.read_text())
        lines = [
            f"The {data['guide']} run above, its first {data['num_test']} test images, scored with growing K "
            f"(`{path.relative_to(ROOT)}`, `{data['command']}`):",
            "",
            "| K | log p(x) (IWAE bound) | ELBO, same samples | Pareto k > 0.7 |",
            "|---:|---:|---:|---:|",
        ]
        for r in data["rows"]:
            share = "n/a (K < 25)" if r["pareto_k_share_above_0_7"] is None else f"{r['pareto_k_share_above_0_7']:.0%}"
            lines.append(f"| {r['num_samples']} | {r['log_px']:.2f} | {r['elbo']:.2f} | {share} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "No results recorded yet."


def config_block() -> str:
    return "```\n" + describe_config() + "\n```"


BLOCKS = {"results-table": results_block, "iw-curve": iw_curve_block, "config-reference": config_block}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"<!-- {name} -->.*?(<!-- /{name} -->|$)", re.S)
        if f"<!-- /{name} -->" not in text:
            text = text.replace(f"<!-- {name} -->", f"<!-- {name} -->\n<!-- /{name} -->", 1)
        text = pattern.sub(lambda _m, n=name, f=make: f"<!-- {n} -->\n{f()}\n<!-- /{n} -->", text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md is out of date: run python benchmarks/render_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
