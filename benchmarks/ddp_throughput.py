"""Training throughput of DDP data parallelism: 1 and 2 gloo processes on this CPU (or N NCCL processes on GPUs).

    python benchmarks/ddp_throughput.py            # writes benchmarks/results/ddp_throughput.json
    python benchmarks/ddp_throughput.py --quick    # a smaller run, seconds per row; nothing written unless --write

Every row trains the same config (the README's MLP 784-512-32, mean-field guide, Bernoulli likelihood) on
synthetic binary 784-pixel data for a few epochs and reports the training examples per second of the epochs
after the first (validation excluded). Rows:

- ``trainer``: :class:`~pyro_flowvae.infer.trainer.Trainer` in a single process, with 1 and with all threads;
- ``ddp``: the same Trainer under ``torchrun --standalone --nproc_per_node=N`` (gloo on the CPU, NCCL on GPUs),
  one thread per process on the CPU.

The global batch is the same in every row, so every row does the same work per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

NOTE_CPU = (
    "On a {cores}-core CPU the {n} gloo processes share the cores that one process with {cores} threads uses, so "
    "they can at best match it: these rows measure what DDP costs (the gradient all-reduce over loopback, one "
    "Python step loop per rank, the cores' shared memory bandwidth), not how training scales over devices. "
    "'efficiency' compares N ranks with N times one rank of one thread (1.0: no overhead); 'CPU per example' "
    "compares the CPU time every rank spent per example with one rank's (1.0x: DDP costs nothing), a figure that "
    "other work on the machine distorts less than wall-clock rates. Scaling over GPUs or machines needs a run on "
    "them (the same script runs NCCL rows on a GPU machine); none was measured here."
)
NOTE_GPU = "Each process owns one GPU; 'efficiency' compares N ranks with N times one rank: 1.0 is linear scaling."
MEASURED = (
    "Global batch {batch}: {n} ranks ran at {rate:,.0f} examples/s against {one:,.0f} for one rank of one thread "
    "(efficiency {eff:.0%}) and spent {cost:.2f}x its CPU time per example; each of their steps took {step:.1f} ms, "
    "of which an all-reduce of every gradient alone takes {allreduce:.1f} ms, and each rank also repeats the "
    "optimizer step over all weights and Pyro's per-step tracing, costs that a larger local batch amortizes."
)
SLOW_THREADS = (
    "At batch {batch} the single process ran slower with {cores} threads than with 1: while other processes hold "
    "a core, each of a step's many small OpenMP regions waits for its descheduled thread."
)
LOAD = (
    "The load average (1, 5, 15 min) was {before} before and {after} after the run on {cores} cores, so the "
    "wall-clock rows {loaded}."
)


def machine() -> str:
    from pyro_flowvae.runs import machine as describe

    return describe()


def make_data(path: Path, n: int, dim: int = 784, seed: int = 0) -> Path:
    """Binary images with structure: 10 random prototypes, each pixel flipped with probability 0.1."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, dim)) < 0.3
    labels = rng.integers(0, 10, n + 1000)
    x = np.logical_xor(prototypes[labels], rng.random((n + 1000, dim)) < 0.1).astype(np.float32)
    np.savez(path, train=x[:n], valid=x[n : n + 500], test=x[n + 500 :])
    return path


def config(npz: Path, args: argparse.Namespace, batch_size: int) -> dict:
    return {
        "data": {"name": "npz", "path": str(npz)},
        "model": {"latent_dim": 32, "hidden": [512], "likelihood": "bernoulli"},
        "guide": {"flow": "mean_field", "num_flows": 0},
        "train": {
            "epochs": args.epochs,
            "batch_size": batch_size,
            "lr": 1e-3,
            "progress": False,
            "log_every": 50,
            "device": args.device,
        },
        "eval": {"valid_samples": 1},
    }


# ----------------------------------------------------------------------------------------------------------
# one measurement (a child process: alone, or one rank of a torchrun job)


def measure(args: argparse.Namespace) -> None:
    import torch

    from pyro_flowvae.infer.distributed import cleanup, init_distributed
    from pyro_flowvae.runs import as_config, fit_model, load_run_data

    torch.set_num_threads(args.threads)
    cfg = as_config(json.loads(Path(args.config_file).read_text()))
    data = load_run_data(cfg)
    cpu = time.process_time()  # every thread of this process
    if args.engine == "trainer":
        result = fit_model(cfg, data)
        rank, world = 0, 1
    else:
        info = init_distributed("auto", timeout_s=300, device=cfg.train.device)
        result = fit_model(cfg, data, None, info)
        rank, world = info.rank, info.world_size
    cpu = time.process_time() - cpu
    allreduce_ms = None
    if args.engine == "ddp":  # what one step's gradient exchange costs alone: every gradient, one all-reduce
        import torch.distributed as dist

        grads = torch.zeros(result.vae.num_params, device=info.comm_device)
        dist.all_reduce(grads)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(grads)
        if grads.is_cuda:
            torch.cuda.synchronize()
        allreduce_ms = (time.perf_counter() - start) / 20 * 1000
        cleanup()
    timed = result.history[1:] or result.history  # the first epoch pays for warm-up
    record = {
        "examples_per_s": sum(r["examples"] for r in timed) / sum(r["seconds"] for r in timed),
        "examples": sum(r["examples"] for r in result.history),
        "cpu_seconds": cpu,
        "allreduce_ms": allreduce_ms,
        "steps_per_s": sum(r["examples"] for r in timed) / sum(r["seconds"] for r in timed) / cfg.train.batch_size,
        "world_size": world,
        "device": result.device,
    }
    Path(f"{args.result_file}.rank{rank}").write_text(json.dumps(record))


def run_row(engine: str, procs: int, threads: int, cfg: dict, workdir: Path) -> dict:
    batch = cfg["train"]["batch_size"]
    result_file = workdir / f"{engine}_{procs}_{threads}_{batch}.json"
    config_file = workdir / f"config_{batch}.json"
    config_file.write_text(json.dumps(cfg))
    worker = [
        "--measure", "--engine", engine, "--threads", str(threads),
        "--config-file", str(config_file), "--result-file", str(result_file),
    ]  # fmt: skip
    if engine == "trainer":
        command = [sys.executable, __file__, *worker]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        command += [__file__, *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{result_file}.rank{r}").read_text()) for r in range(procs)]
    cpu = sum(r["cpu_seconds"] for r in ranks)
    return {
        "engine": engine,
        "processes": procs,
        "threads_per_process": threads,
        "global_batch_size": batch,
        "examples_per_s": ranks[0]["examples_per_s"],
        # the work per example whatever else runs on the machine: CPU time of every rank, the whole fit
        # (validation included, the same in every row) over the training examples
        "examples_per_cpu_s": ranks[0]["examples"] / cpu,
        "ms_per_step": 1000 / ranks[0]["steps_per_s"],
        "allreduce_ms": ranks[0]["allreduce_ms"],
        "device": ranks[0]["device"],
    }


# ----------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    import torch

    from pyro_flowvae.runs import versions

    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    cores = os.cpu_count() or 1
    counts = [int(n) for n in args.nprocs.split(",")] if args.nprocs else ([1, gpus] if gpus > 1 else [1, 2])
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if gpus:  # one GPU per process; the CPU threads only feed it
        kinds = [("trainer", 1, cores)] + [("ddp", n, max(cores // n, 1)) for n in counts]
    else:  # one core per process, and the single process with every core
        kinds = [("trainer", 1, 1), ("trainer", 1, cores)] + [("ddp", n, 1) for n in counts]
    plan = [(*kind, batch) for batch in batches for kind in dict.fromkeys(kinds)]
    best: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        npz = make_data(workdir / "synthetic.npz", args.examples)
        load_before = os.getloadavg()
        for repeat in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every row
            for engine, procs, threads, batch in plan:
                row = run_row(engine, procs, threads, config(npz, args, batch), workdir)
                what = f"batch {batch:>5} {engine:>7} x{procs} ({threads} thread{'s' * (threads > 1)}/process)"
                print(f"[{repeat + 1}/{args.repeats}] {what}: {row['examples_per_s']:9.0f} examples/s", flush=True)
                key = (engine, procs, threads, batch)
                if key not in best or row["examples_per_s"] > best[key]["examples_per_s"]:
                    best[key] = row
        load_after = os.getloadavg()
    rows = [best[key] for key in plan]
    largest = max(counts)
    note = NOTE_GPU if gpus else NOTE_CPU.format(cores=cores, n=largest)
    for batch in batches:
        same = [r for r in rows if r["global_batch_size"] == batch]
        one_rank = next((r for r in same if r["engine"] == "ddp" and r["processes"] == 1), None)
        for row in same:
            if one_rank is not None and row["engine"] == "ddp":
                row["speedup_vs_1_rank"] = row["examples_per_s"] / one_rank["examples_per_s"]
                row["efficiency"] = row["speedup_vs_1_rank"] / row["processes"]
                row["cpu_cost_vs_1_rank"] = one_rank["examples_per_cpu_s"] / row["examples_per_cpu_s"]
        top = next((r for r in same if r["engine"] == "ddp" and r["processes"] == largest), None)
        if one_rank is not None and top is not None and largest > 1:
            note += " " + MEASURED.format(
                batch=batch,
                n=largest,
                rate=top["examples_per_s"],
                one=one_rank["examples_per_s"],
                eff=top["efficiency"],
                cost=top["cpu_cost_vs_1_rank"],
                allreduce=top["allreduce_ms"],
                step=top["ms_per_step"],
            )
        single = {r["threads_per_process"]: r for r in same if r["engine"] == "trainer"}
        threads_hurt = not gpus and cores > 1 and 1 in single and cores in single
        if threads_hurt and single[cores]["examples_per_s"] < single[1]["examples_per_s"]:
            note += " " + SLOW_THREADS.format(batch=batch, cores=cores)
    busy = max(load_before[0], load_after[0]) > 0.5
    note += " " + LOAD.format(
        before="/".join(f"{v:.1f}" for v in load_before),
        after="/".join(f"{v:.1f}" for v in load_after),
        cores=cores,
        loaded="shared the cores with other work and understate what an idle machine gives"
        if busy
        else "had the machine to themselves",
    )
    result = {
        "machine": machine(),
        "command": "python benchmarks/ddp_throughput.py" + (" --quick" if args.quick else ""),
        "settings": {
            "model": "MLP 784-512-32, mean-field guide, Bernoulli likelihood, Adam 1e-3",
            "data": f"{args.examples} synthetic binary 784-pixel images",
            "global_batch_sizes": batches,
            "epochs": args.epochs,
            "timed": "training examples/s over the epochs after the first (validation excluded)",
            "backend": "nccl" if gpus else "gloo",
            "repeats": f"best of {args.repeats} interleaved runs per row",
            "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        },
        "rows": rows,
        "note": note,
        "versions": versions(),
    }
    print(format_table(rows))
    print(note)
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "ddp_throughput" + ("_cuda" if gpus else "") + ".json"
        (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(rows: list[dict]) -> str:
    lines = [
        "| global batch | engine | processes | threads/process | examples/s | speedup vs 1 rank | efficiency "
        "| examples per CPU-s | CPU per example vs 1 rank | ms per step | all-reduce of all gradients, ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup_vs_1_rank']:.2f}" if "speedup_vs_1_rank" in r else ""
        efficiency = f"{r['efficiency']:.0%}" if "efficiency" in r else ""
        cost = f"{r['cpu_cost_vs_1_rank']:.2f}x" if "cpu_cost_vs_1_rank" in r else ""
        lines.append(
            f"| {r['global_batch_size']} | {r['engine']} | {r['processes']} | {r['threads_per_process']} | "
            f"{r['examples_per_s']:,.0f} | "
            f"{speedup} | {efficiency} | {r['examples_per_cpu_s']:,.0f} | {cost} | {r['ms_per_step']:.1f} | "
            f"{'' if r['allreduce_ms'] is None else format(r['allreduce_ms'], '.2f')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2000 examples, 2 epochs, 1 run per row; no file")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default 20000, quick 2000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per row (default 3, quick 2)")
    parser.add_argument("--batch-sizes", default=None, help="global batch sizes (default 256,1024; quick 256)")
    parser.add_argument("--nprocs", default=None, help="process counts for the ddp rows, e.g. 1,2 (default 1,2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None, help="runs per row, best kept (default 2, quick 1)")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write benchmarks/results/ddp_throughput.json (default: yes, except with --quick)",
    )
    # the child processes
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=("trainer", "ddp"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.examples is None:
        args.examples = 2000 if args.quick else 20000
    if args.epochs is None:
        args.epochs = 2 if args.quick else 3
    if args.batch_sizes is None:
        args.batch_sizes = "256" if args.quick else "256,1024"
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.write is None:
        args.write = not args.quick
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.measure:
        measure(arguments)
    else:
        main(arguments)
