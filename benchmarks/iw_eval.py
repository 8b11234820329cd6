"""Importance-sampled evaluation: speed (datapoint-samples per second) and peak memory against K and chunk size.

    python benchmarks/iw_eval.py --data-root DATA                 # K = 100, 1000, 5000; writes the JSON
    python benchmarks/iw_eval.py --data-root DATA --smoke         # seconds, nothing written

``estimate_log_likelihood`` draws at most ``sample_chunk`` samples for ``data_chunk`` datapoints at once
and folds them into a running log-sum-exp, so its memory should depend on the chunk sizes and not on K.
Each setting runs in a fresh process (the likelihood benchmark's model, 784-300-300-40, on binarized
MNIST test images): peak memory is the rise of the process's peak resident set, VmHWM, over
the resident set just before the call (CPU; the peak is reset through /proc/self/clear_refs) or of
``torch.cuda.max_memory_allocated`` (CUDA) over what the loaded model and data already used.
Writes benchmarks/results/iw_eval_<device>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "examples" / "configs" / "binarized_mnist_likelihood.toml"


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")


def reset_peak_rss() -> float:
    """Reset the peak resident set to the current one (Linux: write 5 to /proc/self/clear_refs); return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def measure_one(args: argparse.Namespace) -> dict:
    """One setting in this process: time and peak memory of one estimate_log_likelihood call."""
    import pyro
    import torch

    from pyro_flowvae import FlowVAE, estimate_log_likelihood, load_config
    from pyro_flowvae.runs import load_run_data

    torch.set_num_threads(args.threads) if args.threads else None
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    config = load_config(CONFIG, [f"data.root={args.data_root}", f"guide.flow={args.guide}", "guide.num_flows=4"])
    data = load_run_data(config)
    test, data_dim = data.test[: args.num_test].clone().to(device), data.data_dim
    del data
    pyro.set_rng_seed(0)
    vae = FlowVAE.from_config(config, data_dim).to(device).eval()
    # Warm up on a few datapoints (lazy initialisation, allocator), then take the baseline.
    estimate_log_likelihood(vae.model, vae.guide, test[:2], num_samples=10, pareto_k=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        gc.collect()
        base = reset_peak_rss()
    start = time.perf_counter()
    estimate = estimate_log_likelihood(
        vae.model,
        vae.guide,
        test,
        num_samples=args.k,
        sample_chunk=args.sample_chunk,
        data_chunk=args.data_chunk,
        pareto_k=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    seconds = time.perf_counter() - start
    return {
        "k": args.k,
        "sample_chunk": args.sample_chunk,
        "data_chunk": args.data_chunk,
        "num_test": int(test.shape[0]),
        "guide": args.guide,
        "seconds": seconds,
        "datapoint_samples_per_s": test.shape[0] * args.k / seconds,
        "peak_extra_mib": peak - base,
        "log_px": estimate.summary()["log_px"],
        "device": device.type,
    }


SETTINGS = [  # (K, sample_chunk, data_chunk): K grows at a fixed chunk, then the chunk grows at a fixed K
    (100, 500, 100),
    (1000, 500, 100),
    (5000, 500, 100),
    (1000, 100, 100),
    (1000, 2000, 100),
    (1000, 500, 25),
]


def main(args: argparse.Namespace) -> dict:
    if args.one:
        row = measure_one(args)
        print(json.dumps(row))
        return row
    # smoke: K=500 with a sample chunk of 25 and of 500 (the chunk is capped at K, so it must not exceed it):
    # 20x the decoder outputs held at once, tens of MiB, well above the noise of the resident set
    settings = [(100, 25, 20), (500, 25, 20), (500, 500, 20)] if args.smoke else SETTINGS
    rows = []
    for guide in args.guides.split(","):
        for k, sample_chunk, data_chunk in settings:
            num_test = 20 if args.smoke else args.num_test
            cmd = [sys.executable, __file__, "--one", "--data-root", args.data_root, "--guide", guide]
            cmd += ["--k", str(k), "--sample-chunk", str(sample_chunk), "--data-chunk", str(data_chunk)]
            cmd += ["--num-test", str(num_test), "--threads", str(args.threads)] + (["--cpu"] if args.cpu else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{guide:>10} K={k:>5} sample_chunk={sample_chunk:>5} data_chunk={data_chunk:>4}: "
                f"{row['datapoint_samples_per_s']:>10,.0f} datapoint-samples/s, peak +{row['peak_extra_mib']:.0f} MiB",
                flush=True,
            )
    from pyro_flowvae.runs import machine, versions

    result = {
        "machine": machine(),
        "versions": versions(),
        "command": f"python benchmarks/iw_eval.py --data-root DATA --num-test {args.num_test} --threads {args.threads}",
        "rows": rows,
    }
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"iw_eval_{rows[0]['device']}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="folder holding binarized_mnist.npz")
    parser.add_argument("--guides", default="mean_field,iaf", help="guides to measure (iaf and others with K=4)")
    parser.add_argument("--num-test", type=int, default=100, help="test images scored per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    parser.add_argument("--smoke", action="store_true", help="seconds, nothing written")
    one = parser.add_argument_group("one setting (what each subprocess runs)")
    one.add_argument("--one", action="store_true")
    one.add_argument("--guide", default="mean_field")
    one.add_argument("--k", type=int, default=100)
    one.add_argument("--sample-chunk", type=int, default=500)
    one.add_argument("--data-chunk", type=int, default=100)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
