"""The GP-VAE's banded-precision posterior against the dense Gaussian with the same precision, as T grows.

    python benchmarks/banded_guide.py                  # T = 10, 100, 300, 1000, 3000; writes the JSON and plot
    python benchmarks/banded_guide.py --quick          # a few seconds; writes nothing unless --json/--plot given

One timed call draws z by reparameterization from q (batch of sequences x latent channels, one Gaussian over T
steps each), scores log q(z) and back-propagates to the factors (loc, d, s), as one ELBO step does:

* banded: :class:`~pyro_flowvae.guides.banded.BandedPrecisionNormal`, O(T) per row;
* dense: ``BandedPrecisionNormal(...).to_dense()``, torch's MultivariateNormal from the precision matrix (an O(T^3)
  Cholesky and triangular inverse per row, built inside the timed call as a guide would).

Figures are medians over repeats. The dense rows are processed in chunks that keep each T x T buffer below
``--dense-chunk-mb`` (same arithmetic, bounded memory). Where the whole dense batch would take longer than
``--dense-budget-s`` per call (predicted from the previous T by the T^3 law), only the first m of the rows are
timed and the time is multiplied by rows / m, assuming that batched dense factorizations cost the same per row; the
JSON's ``row_scaling_check`` tests that assumption at the largest T timed in full (scaled 1/8 of the rows vs all).

Writes benchmarks/results/banded_guide.json (machine, versions, settings, every timing, log-log slopes) and
docs/img/banded_vs_dense.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from pyro_flowvae.guides.banded import BandedPrecisionNormal
from pyro_flowvae.runs import cpu_name, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JSON_PATH = RESULTS / "banded_guide.json"
PLOT_PATH = ROOT / "docs" / "img" / "banded_vs_dense.png"
METHODS = ("banded", "dense")


def machine_info() -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def make_factors(rows: int, T: int, device: torch.device, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Leaf tensors loc, d in [0.5, 1.5], s ~ N(0, 0.3^2): a well-conditioned banded precision per row."""
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(rows, T, generator=gen, dtype=dtype)
    diag = 0.5 + torch.rand(rows, T, generator=gen, dtype=dtype)
    offdiag = 0.3 * torch.randn(rows, T - 1, generator=gen, dtype=dtype)
    return [p.to(device).requires_grad_() for p in (loc, diag, offdiag)]


def banded_step(params: list[torch.Tensor]) -> None:
    q = BandedPrecisionNormal(*params)
    q.log_prob(q.rsample()).sum().backward()


def dense_step(params: list[torch.Tensor], rows: int, chunk: int) -> None:
    for start in range(0, rows, chunk):
        q = BandedPrecisionNormal(*(p[start : start + chunk] for p in params)).to_dense()
        q.log_prob(q.rsample()).sum().backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    step: Callable[[], None], device: torch.device, repeats: int, budget_s: float, warmup: bool
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls (fewer, at least one, once ``budget_s`` is spent)."""
    if warmup:
        step()
        sync(device)
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def log_prob_gap(params: list[torch.Tensor], rows: int = 2) -> float:
    """Largest |log q(z)| difference between the two at z drawn from the banded one (first rows only)."""
    with torch.no_grad():
        q = BandedPrecisionNormal(*(p[:rows] for p in params))
        z = q.sample()
        return float((q.log_prob(z) - q.to_dense().log_prob(z)).abs().max())


def fit_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) against log(T)."""
    if len(points) < 2:
        return None
    t, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(t, y, 1)[0])


def run_device(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[dict], dict]:
    rows = args.batch * args.channels
    results: list[dict] = []
    scaling_check: dict = {}
    last_dense: tuple[int, float] | None = None  # (T, per-row seconds) of the previous dense measurement
    for T in args.ts:
        params = make_factors(rows, T, device, dtype, args.seed)
        times = time_calls(partial(banded_step, params), device, args.repeats, args.budget_s, warmup=True)
        results.append(row(device, "banded", T, times, rows, rows, None))
        print(f"  {device.type} T={T:>5} banded {1e3 * results[-1]['median_s']:10.2f} ms", flush=True)

        chunk = max(1, int(args.dense_chunk_mb * 2**20 // (T * T * params[0].element_size())))
        predicted = rows * last_dense[1] * (T / last_dense[0]) ** 3 if last_dense else 0.0
        timed_rows = rows if predicted <= args.dense_budget_s else max(1, int(rows * args.dense_budget_s / predicted))
        timed_rows = min(timed_rows, rows)
        sub = [p[:timed_rows].detach().clone().requires_grad_() for p in params]
        warm = predicted * timed_rows / rows < 5.0  # a warm-up call only where it is cheap
        times = time_calls(partial(dense_step, sub, timed_rows, chunk), device, args.repeats, args.budget_s, warm)
        scale = rows / timed_rows
        dense = row(device, "dense", T, [t * scale for t in times], rows, timed_rows, chunk)
        dense["max_abs_log_prob_diff"] = log_prob_gap(params)
        results.append(dense)
        last_dense = (T, statistics.median(times) / timed_rows)
        note = f" (timed on {timed_rows} of {rows} rows, x{scale:.0f})" if timed_rows < rows else ""
        print(f"  {device.type} T={T:>5} dense  {1e3 * dense['median_s']:10.2f} ms{note}", flush=True)
        if timed_rows == rows and rows >= 8 and T >= 100:
            part = rows // 8
            psub = [p[:part].detach().clone().requires_grad_() for p in params]
            ptimes = time_calls(partial(dense_step, psub, part, chunk), device, 1, args.budget_s, warmup=False)
            scaling_check = {
                "T": T,
                "full_rows_median_s": dense["median_s"],
                "rows_timed": part,
                "scaled_s": ptimes[0] * rows / part,
                "ratio_scaled_to_full": ptimes[0] * rows / part / dense["median_s"],
            }
    return results, scaling_check


def row(device: torch.device, method: str, T: int, times: list[float], rows: int, timed_rows: int, chunk: int | None):
    return {
        "device": device.type,
        "method": method,
        "T": T,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "repeats": len(times),
        "rows": rows,
        "rows_timed": timed_rows,
        "dense_chunk_rows": chunk,
    }


def slopes(rows: list[dict]) -> dict:
    out: dict = {}
    for device in sorted({r["device"] for r in rows}):
        out[device] = {}
        for method in METHODS:
            points = [(r["T"], r["median_s"]) for r in rows if r["device"] == device and r["method"] == method]
            out[device][method] = {
                "all_T": fit_slope(points),
                "T_ge_100": fit_slope([p for p in points if p[0] >= 100]),
            }
    return out


def plot(result: dict, path: Path) -> None:
    """Log-log time against T; open markers: dense points timed on part of the rows and scaled."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = {"banded": ("o", "tab:blue"), "dense": ("s", "tab:red")}
    for device in sorted({r["device"] for r in result["rows"]}):
        for method in METHODS:
            pts = [r for r in result["rows"] if r["device"] == device and r["method"] == method]
            if not pts:
                continue
            marker, color = styles[method]
            fit = result["slopes"][device][method]
            slope = fit["T_ge_100"] if fit["T_ge_100"] is not None else fit["all_T"]
            label = f"{method}, {device}" + (f" (slope {slope:.2f} for T >= 100)" if slope is not None else "")
            ts, ys = [r["T"] for r in pts], [r["median_s"] for r in pts]
            alpha = 1.0 if device == "cpu" else 0.6
            ax.plot(ts, ys, "-", color=color, alpha=alpha, label=label)
            for r in pts:
                scaled = r["rows_timed"] < r["rows"]
                face = "none" if scaled else color
                ax.plot(r["T"], r["median_s"], marker, color=color, mfc=face, alpha=alpha)
            power = 1 if method == "banded" else 3
            ref = [ts[-1] * f for f in (0.1, 1.0)]
            ax.plot(ref, [ys[-1] * (x / ts[-1]) ** power for x in ref], ":", color=color, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("seconds per call (median)")
    s = result["settings"]
    ax.set_title(
        f"rsample + log_prob + backward, {s['batch']} x {s['channels']} rows ({s['dtype']})\n"
        "dotted: O(T) and O(T^3) through the last point\nopen markers: timed on part of the rows, then scaled",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def fmt(slope: float | None) -> str:
    return "-" if slope is None else f"{slope:.2f}"


def format_table(result: dict) -> str:
    lines = [f"{'device':<6} {'T':>6} {'banded ms':>12} {'dense ms':>14} {'dense/banded':>13}"]
    by_key = {(r["device"], r["method"], r["T"]): r for r in result["rows"]}
    for device, method, T in by_key:
        if method != "banded":
            continue
        b, d = by_key[(device, "banded", T)], by_key.get((device, "dense", T))
        dense_ms = f"{1e3 * d['median_s']:.2f}" + ("*" if d["rows_timed"] < d["rows"] else "") if d else "-"
        ratio = f"{d['median_s'] / b['median_s']:.1f}" if d else "-"
        lines.append(f"{device:<6} {T:>6} {1e3 * b['median_s']:>12.2f} {dense_ms:>14} {ratio:>13}")
    lines.append("* timed on part of the rows and scaled (see rows_timed in the JSON)")
    for device, per_method in result["slopes"].items():
        fits = ", ".join(f"{m} {fmt(v['all_T'])} (T >= 100: {fmt(v['T_ge_100'])})" for m, v in per_method.items())
        lines.append(f"log-log slope of time vs T on {device}: {fits}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    if args.quick:
        args.ts, args.batch, args.channels, args.repeats = [5, 20, 60], 4, 2, 2
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine_before = machine_info()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu or auto")
    devices = [torch.device(args.device)] if args.device != "auto" else [torch.device("cpu")]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows, checks = [], {}
    with pyro.validation_enabled(False):
        for device in devices:
            device_rows, checks[device.type] = run_device(args, device, dtype)
            rows += device_rows
    settings = {
        "ts": args.ts,
        "batch": args.batch,
        "channels": args.channels,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "dense_budget_s": args.dense_budget_s,
        "dense_chunk_mb": args.dense_chunk_mb,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    result = {
        "benchmark": "banded_guide",
        "what": "one call = rsample + log_prob + backward to (loc, d, s) for batch x channels Gaussians over T steps",
        "command": shlex.join(["python", "benchmarks/banded_guide.py", *args.argv]),
        "settings": settings,
        "machine": machine_before,
        "load_average_after": machine_info()["load_average_1_5_15_min"],
        "versions": versions(),
        "rows": rows,
        "slopes": {},
        "row_scaling_check": checks,
    }
    result["slopes"] = slopes(rows)
    print(format_table(result))
    json_path = args.json or (None if args.quick or args.no_write else JSON_PATH)
    plot_path = args.plot or (None if args.quick or args.no_write else PLOT_PATH)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if plot_path:
        plot(result, Path(plot_path))
    return result


def parse_ts(text: str) -> list[int]:
    ts = [int(t) for t in text.split(",")]
    if any(t < 2 for t in ts) or ts != sorted(set(ts)):
        raise argparse.ArgumentTypeError(f"--ts must be increasing integers >= 2, got {text!r}")
    return ts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts", type=parse_ts, default=parse_ts("10,100,300,1000,3000"), help="sequence lengths T")
    parser.add_argument("--batch", type=int, default=64, help="sequences per call")
    parser.add_argument("--channels", type=int, default=8, help="latent channels L per sequence")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per point (median reported)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="stop repeating a point after this many seconds")
    parser.add_argument("--dense-budget-s", type=float, default=30.0, help="time part of the dense rows beyond this")
    parser.add_argument("--dense-chunk-mb", type=float, default=256.0, help="largest T x T buffer of a dense chunk")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CPU, and CUDA too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="seconds-long run: T = 5, 20, 60 on 4 x 2 rows")
    parser.add_argument("--json", default=None, help=f"where to write the JSON (default {JSON_PATH.relative_to(ROOT)})")
    parser.add_argument("--plot", default=None, help=f"where to save the plot (default {PLOT_PATH.relative_to(ROOT)})")
    parser.add_argument("--no-write", action="store_true", help="write neither the JSON nor the plot")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    main(parse_args())
