"""Training-step speed of every guide family: ours (Pyro) against a plain-PyTorch reference, side by side in one run.

    python benchmarks/speed.py            # full: 11 repeats, batch growth for every guide (about 8 min on this CPU)
    python benchmarks/speed.py --quick    # about 3 min: 7 repeats, batch growth for three guides
    python benchmarks/speed.py --smoke    # seconds, a tiny network; writes nothing unless --json/--plot given

One timed step is a full training step on one minibatch of random binary "images" (the cost does not depend on the
pixel values): single-sample ELBO, backward, global gradient-norm clipping and Adam, on an MLP VAE
(784-512-32 by default, Bernoulli likelihood, standard-normal prior), for

* ours: :meth:`pyro_flowvae.models.vae.FlowVAE.from_config` trained by
  :func:`~pyro_flowvae.infer.trainer.training_step` on :class:`~pyro_flowvae.infer.svi.AnnealedELBO` (Pyro's
  ``Trace_ELBO`` as a module, :class:`~pyro_flowvae.infer.svi.DeviceTrace_ELBO`, under the KL-weight messenger)
  with the config's ``torch.optim`` optimizer and ``clip_grad_norm_``, exactly as
  :class:`~pyro_flowvae.infer.trainer.Trainer` steps them;
* reference: ``benchmarks/torch_vae.py``, the same networks and loss in plain PyTorch (no Pyro: the ELBO and
  every flow written by hand), the same optimizer and clipping, starting from the same weights.

Before timing, each guide's two losses and gradients are compared in float64 for the same weights and the same
noise (``loss_check`` in the JSON), so that both do the same work. Figures are medians over repeats of the time
per step; a repeat runs as many steps as fill ``--min-repeat-s``. The side-by-side steps run round-robin (every
implementation once per repeat, the order rotating), so a change of machine load hits them alike; they run at
``--batch`` and again at ``--large-batch``. Then the cost of a step as the number of flows K grows (planar and
IAF) and as the batch grows, ours and reference interleaved.

Writes benchmarks/results/speed_cpu.json (machine, versions, load average, settings, every timing) and
docs/img/speed_cost_growth.png, and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pyro
import torch
from matplotlib.figure import Figure

from pyro_flowvae.config import Config, load_config
from pyro_flowvae.infer.optim import build_optimizer
from pyro_flowvae.infer.svi import AnnealedELBO, build_elbo
from pyro_flowvae.infer.trainer import training_step
from pyro_flowvae.models.vae import FlowVAE
from pyro_flowvae.runs import cpu_name, machine, parse_guide_specs, versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOT_PATH = ROOT / "docs" / "img" / "speed_cost_growth.png"
IMPLS = ("ours", "reference")
#: The guides side by side: every family, planar at the K of the issue's target.
GUIDES = ("mean_field", "planar:16", "radial:16", "householder:16", "iaf:2", "spline:2")
#: Targets of issue 11: ours / reference throughput at --batch and at --large-batch, and planar K=16 / mean-field
#: step time on a CPU.
TARGET_OURS_OVER_REFERENCE = 0.95
TARGET_OURS_OVER_REFERENCE_LARGE = 1.0
TARGET_PLANAR16_OVER_MEAN_FIELD = 1.8


def load_reference() -> ModuleType:
    """``benchmarks/torch_vae.py``, the plain-PyTorch reference (loaded by path: benchmarks/ is no package)."""
    name = "pyro_flowvae_bench_torch_vae"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("torch_vae.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# -- building the two implementations ----------------------------------------------------------------------------
def base_config(args: argparse.Namespace) -> Config:
    return load_config(
        None,
        {
            "model.hidden": list(args.hidden),
            "model.latent_dim": args.latent_dim,
            "model.likelihood": "bernoulli",
            "train.batch_size": args.batch,
            "guide.num_flows": 1,
        },
    )


def guide_config(args: argparse.Namespace, spec: str) -> Config:
    """The config of guide ``name:K`` (``name`` alone: K = 0 for mean-field, the default K otherwise)."""
    return parse_guide_specs([spec], base_config(args))[0]


def label(config: Config) -> str:
    flow, k = config.guide.flow, config.guide.num_flows
    return flow if flow == "mean_field" else f"{flow} K={k}"


def build_ours(config: Config, data_dim: int, seed: int) -> tuple[FlowVAE, Callable[[torch.Tensor], torch.Tensor]]:
    """A FlowVAE and its training step, as :class:`~pyro_flowvae.infer.trainer.Trainer` builds and takes them."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = FlowVAE.from_config(config, data_dim)
    loss = AnnealedELBO(vae.model, vae.guide, build_elbo(config.train))
    params = list(vae.parameters())
    optimizer = build_optimizer(params, config.train)

    def step(x: torch.Tensor) -> torch.Tensor:
        return training_step(loss, optimizer, params, (x,), config.train.clip_norm)

    return vae, step


def build_reference(config: Config, data_dim: int, vae: FlowVAE) -> tuple[torch.nn.Module, Callable]:
    """The plain-PyTorch VAE with ``vae``'s weights, and its training step (the same optimizer and clipping)."""
    ref = load_reference()
    g, m, train = config.guide, config.model, config.train
    num_flows = g.num_flows if g.flow != "mean_field" else 0
    options = g.options.get(g.flow, {})
    model = ref.TorchVAE(data_dim, m.hidden, m.latent_dim, g.flow, num_flows, g.min_scale, **options)
    model = model.to(next(vae.parameters()).dtype).load_flowvae(vae.state_dict())
    params = list(model.parameters())
    optim = build_optimizer(params, train)

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = model.loss(x)
        loss.backward()
        if train.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, train.clip_norm)
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss.detach()

    return model, step


def random_batch(rows: int, data_dim: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, data_dim, generator=gen) < 0.3).to(dtype)


def loss_check(args: argparse.Namespace, spec: str, rows: int = 16, seed: int = 1) -> dict[str, Any]:
    """Ours and the reference in float64 with the same weights and noise: their losses and gradients."""
    config = guide_config(args, spec)
    vae, _ = build_ours(config, args.data_dim, args.seed)
    vae = vae.double()
    model, _ = build_reference(config, args.data_dim, vae)
    x = random_batch(rows, args.data_dim, seed, torch.float64)
    pyro.clear_param_store()
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(seed)
        ours = AnnealedELBO(vae.model, vae.guide, build_elbo(config.train))(x)
        ours.backward()
    torch.manual_seed(seed)
    theirs = model.loss(x)
    theirs.backward()
    ours_grads = dict(vae.named_parameters())
    grad_diff = 0.0
    for key, p in model.named_parameters():
        g_ours = ours_grads[model.flowvae_key(key)].grad
        assert g_ours is not None and p.grad is not None, f"no gradient for {key}"
        grad_diff = max(grad_diff, float((g_ours - p.grad).norm() / p.grad.norm().clamp_min(1e-300)))
    pyro.clear_param_store()
    return {
        "rows": rows,
        "dtype": "float64",
        "ours_loss": ours.item(),
        "reference_loss": theirs.item(),
        "loss_rel_diff": abs(ours.item() - theirs.item()) / abs(theirs.item()),
        "grad_max_rel_diff": grad_diff,
    }


# -- timing --------------------------------------------------------------------------------------------------
class Timed:
    """One step function under test, with its own batch and the number of steps per repeat."""

    def __init__(self, key: tuple, step: Callable, x: torch.Tensor, uses_pyro: bool) -> None:
        self.key, self.step, self.x, self.uses_pyro = key, step, x, uses_pyro
        self.steps_per_repeat = 1
        self.times: list[float] = []

    def run(self, steps: int) -> float:
        if self.uses_pyro:
            pyro.clear_param_store()  # another FlowVAE may have registered the same names; pyro.module re-adds ours
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.x)
        return (time.perf_counter() - start) / steps

    def warm_up(self, warmup_steps: int, min_repeat_s: float) -> None:
        self.run(warmup_steps)
        self.steps_per_repeat = max(1, math.ceil(min_repeat_s / self.run(1)))

    def repeat(self) -> None:
        self.times.append(self.run(self.steps_per_repeat))

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def round_robin(items: list[Timed], repeats: int, warmup_steps: int, min_repeat_s: float) -> None:
    """Warm every item up, then time each once per repeat, the order rotating from repeat to repeat."""
    for item in items:
        item.warm_up(warmup_steps, min_repeat_s)
    for r in range(repeats):
        for i in range(len(items)):
            items[(i + r) % len(items)].repeat()


def pair(args: argparse.Namespace, spec: str, batch: int) -> list[Timed]:
    """Ours and the reference for guide ``spec`` at ``batch`` rows, from the same initial weights."""
    config = guide_config(args, spec)
    vae, ours = build_ours(config, args.data_dim, args.seed)
    _, reference = build_reference(config, args.data_dim, vae)
    x = random_batch(batch, args.data_dim, args.seed)
    name = label(config)
    return [Timed((name, "ours", batch), ours, x, True), Timed((name, "reference", batch), reference, x, False)]


def record(item: Timed) -> dict[str, Any]:
    batch = item.x.shape[0]
    return {
        "median_s": item.median_s,
        "examples_per_s": batch / item.median_s,
        "steps_per_repeat": item.steps_per_repeat,
        "times_s": item.times,
    }


# -- the three parts -------------------------------------------------------------------------------------------
def side_by_side(args: argparse.Namespace, batch: int) -> list[dict[str, Any]]:
    items: list[Timed] = []
    checks = {}
    for spec in args.guides:
        checks[spec] = loss_check(args, spec)
        items += pair(args, spec, batch)
    round_robin(items, args.repeats, args.warmup, args.min_repeat_s)
    rows = []
    for spec, (ours, ref) in zip(args.guides, zip(items[::2], items[1::2])):
        config = guide_config(args, spec)
        rows.append(
            {
                "guide": config.guide.flow,
                "num_flows": config.guide.num_flows if config.guide.flow != "mean_field" else 0,
                "label": ours.key[0],
                "batch": batch,
                "ours": record(ours),
                "reference": record(ref),
                "ours_over_reference": ref.median_s / ours.median_s,  # throughput ratio
                "loss_check": checks[spec],
            }
        )
    return rows


def growth(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_flows, by_batch = [], []
    for flow in args.growth_flows:
        for k in args.ks:
            items = pair(args, f"{flow}:{k}", args.batch)
            round_robin(items, args.growth_repeats, args.warmup, args.min_repeat_s)
            row = {"guide": flow, "num_flows": k, "batch": args.batch}
            by_flows.append(row | {impl: record(item) for impl, item in zip(IMPLS, items)})
            print(f"  K growth   {flow:<12} K={k:<3} " + timing_text(by_flows[-1]), flush=True)
    for spec in args.batch_guides:
        for batch in args.batches:
            items = pair(args, spec, batch)
            round_robin(items, args.growth_repeats, args.warmup, args.min_repeat_s)
            row = {"label": items[0].key[0], "batch": batch}
            by_batch.append(row | {impl: record(item) for impl, item in zip(IMPLS, items)})
            print(f"  batch      {row['label']:<16} B={batch:<5}" + timing_text(by_batch[-1]), flush=True)
    return by_flows, by_batch


def timing_text(row: dict[str, Any]) -> str:
    ours, ref = row["ours"]["median_s"], row["reference"]["median_s"]
    return f"ours {1e3 * ours:8.2f} ms   reference {1e3 * ref:8.2f} ms   ours/reference {ref / ours:5.2f}"


def summary(rows: list[dict[str, Any]], large: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "min_ours_over_reference": min(r["ours_over_reference"] for r in rows),
        "ours_over_reference_target": TARGET_OURS_OVER_REFERENCE,
        "min_ours_over_reference_large_batch": min(r["ours_over_reference"] for r in large),
        "ours_over_reference_large_batch_target": TARGET_OURS_OVER_REFERENCE_LARGE,
    }
    by_guide = {(r["guide"], r["num_flows"]): r for r in rows}
    mean_field, planar = by_guide.get(("mean_field", 0)), by_guide.get(("planar", 16))
    if mean_field and planar:
        out["planar16_over_mean_field"] = {
            impl: planar[impl]["median_s"] / mean_field[impl]["median_s"] for impl in IMPLS
        }
        out["planar16_over_mean_field_target"] = TARGET_PLANAR16_OVER_MEAN_FIELD
        out["planar16_over_mean_field_met"] = out["planar16_over_mean_field"]["ours"] <= TARGET_PLANAR16_OVER_MEAN_FIELD
    out["ours_over_reference_met"] = out["min_ours_over_reference"] >= TARGET_OURS_OVER_REFERENCE
    out["ours_over_reference_large_batch_met"] = (
        out["min_ours_over_reference_large_batch"] >= TARGET_OURS_OVER_REFERENCE_LARGE
    )
    return out


def side_by_side_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'guide':<16} {'ours ex/s':>10} {'ref ex/s':>10} {'ours/ref':>9} {'ours ms':>9} {'ref ms':>9} "
        f"{'vs mean-field (ours, ref)':>26} {'loss check (rel)':>17}",
    ]
    mf = next((r for r in rows if r["guide"] == "mean_field"), None)
    for r in rows:
        o, f = r["ours"], r["reference"]
        rel = (
            f"{o['median_s'] / mf['ours']['median_s']:.2f}x, {f['median_s'] / mf['reference']['median_s']:.2f}x"
            if mf
            else "-"
        )
        lines.append(
            f"{r['label']:<16} {o['examples_per_s']:>10,.0f} {f['examples_per_s']:>10,.0f} "
            f"{r['ours_over_reference']:>9.2f} {1e3 * o['median_s']:>9.2f} {1e3 * f['median_s']:>9.2f} "
            f"{rel:>26} {r['loss_check']['loss_rel_diff']:>17.1e}"
        )
    return lines


def format_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"full training step, MLP {s['data_dim']}-{'-'.join(map(str, s['hidden']))}-{s['latent_dim']}, "
        f"{s['threads']} thread(s), median of {s['repeats']} round-robin repeats; load average "
        f"{result['load_average_before']} before, {result['load_average_after']} after",
        f"batch {s['batch']}:",
        *side_by_side_lines(result["side_by_side"]),
        f"batch {s['large_batch']}:",
        *side_by_side_lines(result["side_by_side_large_batch"]),
    ]
    sm = result["summary"]

    def met(flag: bool) -> str:
        return "met" if flag else "NOT met"

    lines.append(
        f"lowest ours/reference throughput, batch {s['batch']}: {sm['min_ours_over_reference']:.2f} "
        f"(target >= {TARGET_OURS_OVER_REFERENCE}: {met(sm['ours_over_reference_met'])}); batch {s['large_batch']}: "
        f"{sm['min_ours_over_reference_large_batch']:.2f} (target >= {TARGET_OURS_OVER_REFERENCE_LARGE}: "
        f"{met(sm['ours_over_reference_large_batch_met'])})"
    )
    if "planar16_over_mean_field" in sm:
        ratio = sm["planar16_over_mean_field"]
        lines.append(
            f"planar K=16 / mean-field step time: ours {ratio['ours']:.2f}, reference {ratio['reference']:.2f} "
            f"(target <= {TARGET_PLANAR16_OVER_MEAN_FIELD}: {met(sm['planar16_over_mean_field_met'])})"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: ms per step against K (planar, IAF), log-log; right: examples/s against batch size; solid: ours,
    dashed: the plain-PyTorch reference."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_k, ax_b = fig.subplots(1, 2)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray"]
    s = result["settings"]
    for i, flow in enumerate(sorted({r["guide"] for r in result["growth_num_flows"]})):
        pts = [r for r in result["growth_num_flows"] if r["guide"] == flow]
        for impl, style in zip(IMPLS, ("o-", "s--")):
            ks = [r["num_flows"] for r in pts]
            ax_k.plot(ks, [1e3 * r[impl]["median_s"] for r in pts], style, color=colors[i], label=f"{flow}, {impl}")
    mf = next((r for r in result["side_by_side"] if r["guide"] == "mean_field"), None)
    if mf:
        for impl, style in zip(IMPLS, ("-", "--")):
            ax_k.axhline(1e3 * mf[impl]["median_s"], ls=style, color="k", lw=0.8, label=f"mean-field, {impl}")
    ax_k.set_xscale("log", base=2)
    ax_k.set_yscale("log")
    ax_k.set_xlabel("number of flows K")
    ax_k.set_ylabel("ms per training step (median)")
    ax_k.set_title(f"cost against K, batch {s['batch']}", fontsize=10)
    labels = list(dict.fromkeys(r["label"] for r in result["growth_batch"]))
    for i, name in enumerate(labels):
        pts = [r for r in result["growth_batch"] if r["label"] == name]
        for impl, style in zip(IMPLS, ("o-", "s--")):
            bs = [r["batch"] for r in pts]
            ax_b.plot(bs, [r[impl]["examples_per_s"] for r in pts], style, color=colors[i], label=f"{name}, {impl}")
    ax_b.set_xscale("log", base=2)
    ax_b.set_yscale("log")
    ax_b.set_xlabel("batch size")
    ax_b.set_ylabel("training examples per second (median)")
    ax_b.set_title("throughput against batch size", fontsize=10)
    for ax in (ax_k, ax_b):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Full SVI step, MLP {s['data_dim']}-{'-'.join(map(str, s['hidden']))}-{s['latent_dim']} VAE, "
        f"{result['machine']} (load {result['load_average_before'][0] if result['load_average_before'] else '?'}); "
        "solid: ours (Pyro), dashed: plain PyTorch",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- main ------------------------------------------------------------------------------------------------------
def apply_modes(args: argparse.Namespace) -> None:
    if args.smoke:
        args.data_dim, args.hidden, args.latent_dim, args.batch, args.large_batch = 20, [16], 3, 8, 16
        args.guides = ["mean_field", "planar:2", "radial:2", "householder:2", "iaf:1", "spline:1"]
        args.ks, args.batches, args.batch_guides = [1, 2], [4, 8], ["mean_field"]
        args.repeats = args.growth_repeats = 2
        args.warmup, args.min_repeat_s = 1, 0.0
    elif args.quick:
        args.repeats, args.growth_repeats, args.min_repeat_s = 7, 3, 0.2
        args.batch_guides = args.batch_guides or ["mean_field", "planar:16", "iaf:2"]
    args.batch_guides = args.batch_guides or list(args.guides)


def main(args: argparse.Namespace) -> dict[str, Any]:
    apply_modes(args)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    print(f"load average before: {load_before}; torch threads {torch.get_num_threads()}", flush=True)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1")
        rows = side_by_side(args, args.batch)
        large = side_by_side(args, args.large_batch)
        by_flows, by_batch = growth(args)
    pyro.clear_param_store()
    settings = {
        "data_dim": args.data_dim,
        "hidden": list(args.hidden),
        "latent_dim": args.latent_dim,
        "likelihood": "bernoulli",
        "batch": args.batch,
        "large_batch": args.large_batch,
        "guides": list(args.guides),
        "growth_flows": list(args.growth_flows),
        "ks": list(args.ks),
        "batches": list(args.batches),
        "batch_guides": list(args.batch_guides),
        "repeats": args.repeats,
        "growth_repeats": args.growth_repeats,
        "warmup_steps": args.warmup,
        "min_repeat_s": args.min_repeat_s,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "dtype": "float32",
        "data": "random binary rows (P(1) = 0.3), one fixed minibatch",
        "ours": "FlowVAE.from_config + training_step(AnnealedELBO(DeviceTrace_ELBO), torch.optim.Adam lr 1e-3, "
        "clip_grad_norm_ 10)",
        "reference": "benchmarks/torch_vae.py: plain PyTorch, torch.optim.Adam lr 1e-3, clip_grad_norm_ 10",
        "quick": args.quick,
        "smoke": args.smoke,
    }
    result: dict[str, Any] = {
        "benchmark": "speed",
        "what": "examples/s of a full training step (ELBO, backward, clip, Adam), ours (Pyro) vs plain PyTorch",
        "command": shlex.join(["python", "benchmarks/speed.py", *args.argv]),
        "machine": machine(),
        "machine_details": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "versions": versions(),
        "settings": settings,
        "side_by_side": rows,
        "side_by_side_large_batch": large,
        "summary": summary(rows, large),
        "growth_num_flows": by_flows,
        "growth_batch": by_batch,
    }
    print(format_table(result))
    write = not (args.smoke or args.no_write)
    json_path = args.json or (RESULTS / "speed_cpu.json" if write else None)
    plot_path = args.plot or (PLOT_PATH if write else None)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if plot_path:
        plot(result, Path(plot_path))
    return result


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guides", type=lambda s: s.split(","), default=list(GUIDES), help="name:K, side by side")
    parser.add_argument("--data-dim", type=int, default=784)
    parser.add_argument("--hidden", type=int_list, default=[512], help="encoder widths (decoder reversed)")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--large-batch", type=int, default=512, help="the second side-by-side batch size")
    parser.add_argument("--growth-flows", type=lambda s: s.split(","), default=["planar", "iaf"])
    parser.add_argument("--ks", type=int_list, default=[1, 2, 4, 8, 16, 32, 64], help="numbers of flows K")
    parser.add_argument("--batches", type=int_list, default=[32, 64, 128, 256, 512, 1024], help="batch sizes")
    parser.add_argument("--batch-guides", type=lambda s: s.split(","), default=None, help="default: --guides")
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats side by side (median reported)")
    parser.add_argument("--growth-repeats", type=int, default=5, help="timed repeats per growth point")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--min-repeat-s", type=float, default=0.5, help="steps per repeat fill this many seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer repeats and batch-growth guides")
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny network; writes nothing by default")
    parser.add_argument("--json", default=None, help="where to write the JSON (default benchmarks/results/)")
    parser.add_argument("--plot", default=None, help="where to save the plot (default docs/img/)")
    parser.add_argument("--no-write", action="store_true", help="write neither the JSON nor the plot")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


if __name__ == "__main__":
    main(parse_args())
