"""Run directories: train, evaluate, sample and compare, as the CLI and the Python API do them."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_flowvae.atomic import atomic_write
from pyro_flowvae.config import Config, GuideConfig, load_config
from pyro_flowvae.data import DataSplits, check_data, load_data
from pyro_flowvae.errors import ConfigError, FlowVAEError
from pyro_flowvae.infer.checkpoint import load_checkpoint
from pyro_flowvae.infer.evaluate import evaluate
from pyro_flowvae.infer.trainer import BEST, CHECKPOINT, Trainer, resolve_device
from pyro_flowvae.plots import interleave, plot_elbo_curve, plot_kl_per_dim, save_image_grid
from pyro_flowvae.vae import FlowVAE, build_vae

__all__ = [
    "RunResult",
    "as_config",
    "load_run_data",
    "train",
    "evaluate_run",
    "load_run",
    "sample_run",
    "compare",
    "parse_guide_specs",
    "format_table",
    "versions",
    "machine",
    "cpu_name",
]

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.json"


@dataclass
class RunResult:
    """A trained run: its directory (if any), figures and the trained model."""

    run_dir: Path | None
    metrics: dict[str, Any]
    vae: FlowVAE
    history: list[dict[str, Any]]


def as_config(
    config: Config | Mapping[str, Any] | str | Path | None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> Config:
    """A :class:`Config` from a Config, a nested dict, or a TOML path, with dotted overrides applied."""
    if isinstance(config, Config):
        return config.with_overrides(overrides) if overrides else config
    if isinstance(config, Mapping):
        return Config.from_dict(config).with_overrides(overrides or {})
    return load_config(config, overrides)


def load_run_data(config: Config) -> DataSplits | Any:
    """The data splits a config names (a SequenceSplits for sequence data)."""
    d = config.data
    if config.is_sequence:
        from pyro_flowvae.data.series import load_sequence_data

        return load_sequence_data(
            d.name,
            root=d.root,
            options=d.options,
            seed=config.train.seed,
            cache_dir=d.cache_dir,
            download=d.download,
            path=d.path,
        )
    return load_data(
        d.name,
        root=d.root,
        path=d.path,
        limit=d.limit,
        valid_size=d.valid_size,
        binarize=d.binarize,
        download=d.download,
        seed=config.train.seed,
        cache_dir=d.cache_dir,
    )


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what platform knows)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> str:
    """One line naming the hardware a figure came from: the GPU(s), or the CPU cores and torch's threads."""
    import os

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{os.cpu_count()} CPU cores ({cpu_name()}), torch threads {torch.get_num_threads()}, no GPU"


def versions() -> dict[str, str]:
    """Versions of what produced a figure."""
    import numpy
    import pyro

    import pyro_flowvae

    return {
        "pyro_flowvae": pyro_flowvae.__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda or "none",
    }


def train(
    config: Config | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    resume: bool = False,
    data: DataSplits | None = None,
    verbose: bool = False,
) -> RunResult:
    """Train, evaluate on the test set, and (with ``out``) write the run directory:

    ``config.toml`` (resolved), ``checkpoint.pt`` (last epoch), ``best.pt`` (best validation ELBO),
    ``log.jsonl`` (one line per epoch), ``elbo_curve.png``, ``samples.png``, ``reconstructions.png``
    (image data) and ``metrics.json`` (nats per datapoint; the test figures use the best-validation weights).
    """
    config = as_config(config, overrides)
    run_dir = Path(out) if out is not None else None

    def report(record: dict[str, Any]) -> None:
        if verbose:
            print(
                f"epoch {record['epoch']:>3}: train ELBO {record['train_elbo']:9.2f}  "
                f"valid ELBO {record['valid_elbo']:9.2f}  {record['examples_per_s']:8.0f} ex/s",
                file=sys.stderr,
                flush=True,
            )

    from pyro_flowvae.infer.distributed import torchrun_world_size

    if torchrun_world_size() is not None:
        return _train_distributed(config, run_dir, resume, data, report, verbose)
    if run_dir is not None:
        _prepare_run_dir(run_dir, config, resume)
    if data is None:
        data = load_run_data(config)
    trainer = Trainer(config, data, run_dir, on_epoch=report)
    result = trainer.fit(resume=resume)
    progress = verbose and config.train.progress and sys.stderr.isatty()
    if config.is_sequence:
        from pyro_flowvae.infer.evaluate_sequences import evaluate_sequences

        figures = evaluate_sequences(result.vae, trainer.data, config.eval, progress=progress)
    else:
        figures = evaluate(result.vae, data.test.to(trainer.device), config.eval, progress=progress)
    metrics = _run_metrics(figures, result, config, data)
    if run_dir is not None:
        if resume:
            config.save(run_dir / CONFIG_FILE)  # the resumed config may extend train.epochs
        _write_json(run_dir / METRICS_FILE, metrics)
        _write_figures(run_dir, result.vae, result.history, data, config, metrics)
    return RunResult(run_dir, metrics, result.vae, result.history)


def _train_distributed(
    config: Config,
    run_dir: Path | None,
    resume: bool,
    data: Any,
    report: Any,
    verbose: bool,
) -> RunResult:
    """:func:`train` under torchrun: DistributedDataParallel over the process group, rank 0 writing the run."""
    from pyro_flowvae.infer.distributed import DistributedTrainer, distributed_evaluate, init_distributed, on_main

    info = init_distributed(config.distributed.backend, config.distributed.timeout_s, config.train.device)
    if run_dir is not None:
        on_main(lambda: _prepare_run_dir(run_dir, config, resume), info)
    if data is None:
        data = on_main(lambda: load_run_data(config), info) or load_run_data(config)  # rank 0 extracts first
    trainer = DistributedTrainer(config, data, run_dir, info, on_epoch=report)
    result = trainer.fit(resume=resume)
    progress = verbose and info.is_main and config.train.progress and sys.stderr.isatty()
    figures = distributed_evaluate(
        result.vae, data.test.to(trainer.device), config.eval, info, seed=config.train.seed, progress=progress
    )
    metrics = {**_run_metrics(figures, result, config, data), "world_size": info.world_size}

    def write() -> None:
        if resume:
            config.save(run_dir / CONFIG_FILE)
        _write_json(run_dir / METRICS_FILE, metrics)
        _write_figures(run_dir, result.vae, result.history, data, config, metrics)

    if run_dir is not None:
        on_main(write, info)
    return RunResult(run_dir, metrics, result.vae, result.history)


def _run_metrics(figures: dict[str, Any], result: Any, config: Config, data: Any) -> dict[str, Any]:
    return {
        **figures,
        "valid_elbo_best": result.best_valid_elbo,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "stopped_early": result.stopped_early,
        "train_examples_per_s": result.examples_per_s,
        "guide": config.guide.flow,
        "num_flows": config.guide.num_flows if config.guide.flow != "mean_field" else 0,
        "num_params": result.vae.num_params,
        "latent_dim": config.model.latent_dim,
        "prior": config.model.prior,
        "data": config.data.name,
        "num_train": int(data.train.shape[0]),
        "device": result.device,
        "seed": config.train.seed,
        "versions": versions(),
    }


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[Config, FlowVAE, dict[str, Any]]:
    """The config, the best-validation model and the checkpoint metadata of a run directory."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FlowVAEError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with "
            "pyro-flowvae train CONFIG --out RUN_DIR"
        )
    config = load_config(config_path)
    use_best = config.train.restore_best and (run_dir / BEST).is_file()
    path = run_dir / BEST if use_best else run_dir / CHECKPOINT
    state = load_checkpoint(path, config)
    vae = build_vae(config, state["data_dim"], state.get("seq_len"))
    vae.load_state_dict(state["vae"])
    return config, vae.to(resolve_device(device)).eval(), state


def evaluate_run(
    run_dir: str | Path,
    iw_samples: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Re-score a run's best model on its test set (optionally with another K), updating metrics.json."""
    run_dir = Path(run_dir)
    config, vae, state = load_run(run_dir)
    extra = dict(overrides or {})
    if iw_samples is not None:
        extra["eval.iw_samples"] = iw_samples
    config = config.with_overrides(extra) if extra else config
    data = load_run_data(config)
    device = next(vae.parameters()).device
    if config.is_sequence:
        from pyro_flowvae.data.series import check_sequence_splits
        from pyro_flowvae.infer.evaluate_sequences import evaluate_sequences

        check_sequence_splits(data, config.model.likelihood)
        figures = evaluate_sequences(vae, data.to(device), config.eval, progress=verbose)
    else:
        check_data(data.test, likelihood=config.model.likelihood, data_dim=state["data_dim"], split="test")
        figures = evaluate(vae, data.test.to(device), config.eval, progress=verbose)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update(figures)
    metrics["versions"] = versions()
    _write_json(metrics_path, metrics)
    return metrics


@torch.no_grad()
def sample_run(run_dir: str | Path, num: int = 64, out: str | Path | None = None, seed: int = 0) -> torch.Tensor:
    """``num`` images E[x | z], z ~ p(z), from a run's model; written as a PNG grid when ``out`` is given."""
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    config, vae, state = load_run(run_dir)
    if config.is_sequence:
        raise FlowVAEError(
            f"{run_dir} is a sequence run ({config.data.name}); `sample` draws single images from the prior. Its "
            "imputations and forecasts are in the run directory (imputations.png / forecast.png, metrics.json)"
        )
    torch.manual_seed(seed)
    images = vae.generate(num).cpu()
    if out is not None:
        if state.get("image_shape") is None:
            raise FlowVAEError(f"{run_dir} was trained on data of no image shape; nothing to draw as a grid")
        save_image_grid(images, state["image_shape"], out, nrow=int(num**0.5) or 1)
    return images


def parse_guide_specs(specs: Sequence[str], base: Config) -> list[Config]:
    """``name`` or ``name:K`` per guide, each turned into a validated copy of ``base`` with ``guide.flow`` (and
    ``guide.num_flows``) swapped; a flow without K keeps the base config's K, or the default when that is 0."""
    from pyro_flowvae.flows import FLOWS

    configs = []
    for spec in specs:
        name, _, count = spec.partition(":")
        if name not in FLOWS:
            raise ConfigError(f"unknown guide {name!r} in --guides; choose from: {', '.join(sorted(FLOWS))}")
        overrides: dict[str, Any] = {"guide.flow": name}
        if count:
            if not count.isdigit():
                raise ConfigError(f"--guides entry {spec!r}: K after the colon must be a whole number, e.g. planar:16")
            overrides["guide.num_flows"] = int(count)
        elif name != "mean_field" and base.guide.num_flows == 0:
            overrides["guide.num_flows"] = GuideConfig().num_flows
        configs.append(base.with_overrides(overrides))
    return configs


def compare(
    config: Config | Mapping[str, Any] | str | Path,
    guides: Sequence[str],
    out: str | Path,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Train the same model with each guide (``guide.flow`` swapped, all else equal) into ``out/<guide>``;
    ``guides`` holds ``name`` or ``name:K`` (K flow layers). Every config is checked before any training.
    Writes ``out/comparison.json`` and returns one row per guide."""
    configs = parse_guide_specs(guides, as_config(config, overrides))
    data = load_run_data(configs[0])
    rows = []
    for cfg, spec in zip(configs, guides):
        result = train(cfg, Path(out) / spec.replace(":", "_"), data=data, verbose=verbose)
        m = result.metrics
        keys = (
            "guide", "num_flows", "test_elbo", "test_elbo_stderr", "test_log_px", "test_log_px_stderr", "iw_samples",
            "num_test", "pareto_k_share_above_0_7", "active_units", "train_examples_per_s", "num_params", "epochs",
            "best_epoch", "device",
        )  # fmt: skip
        if cfg.is_sequence:  # sequence runs report imputation / forecast figures instead of active units
            keys = (*keys, "test_nll_missing", "test_mse_missing", "auroc", "rmse", "mape", "coverage90")
        rows.append({key: m.get(key) for key in keys})
        _write_json(
            Path(out) / "comparison.json", {"rows": rows, "config": configs[0].to_dict(), "versions": versions()}
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of compare's rows (with the imputation or forecast figures of sequence runs)."""
    extra = [k for k in ("test_nll_missing", "test_mse_missing", "auroc", "rmse", "mape", "coverage90")
             if any(r.get(k) is not None for r in rows)]  # fmt: skip
    header = "| guide | K | test ELBO | log p(x) (IW) | Pareto k>0.7 | active units | train ex/s | params |"
    header += "".join(f" {k} |" for k in extra)
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)

    def share(value: float | None) -> str:
        return "n/a (K < 25)" if value is None else f"{value:.1%}"

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [
        f"| {r['guide']} | {r['num_flows']} | {r['test_elbo']:.2f} | {r['test_log_px']:.2f} ± "
        f"{r['test_log_px_stderr']:.2f} | {share(r['pareto_k_share_above_0_7'])} | {cell(r.get('active_units'))} | "
        f"{r['train_examples_per_s']:.0f} | {r['num_params']:,} |" + "".join(f" {cell(r.get(k))} |" for k in extra)
        for r in rows
    ]
    return "\n".join([header, rule, *lines])


# ----------------------------------------------------------------------------------------------------------


def _prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> None:
    checkpoint = run_dir / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise FlowVAEError(f"--resume: {run_dir} holds no {CHECKPOINT} to resume from")
        return  # load_checkpoint compares the configs and names any differing key
    if checkpoint.is_file():
        raise FlowVAEError(
            f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda handle: handle.write(json.dumps(obj, indent=2) + "\n"))


@torch.no_grad()
def _write_figures(
    run_dir: Path,
    vae: FlowVAE,
    history: list[dict[str, Any]],
    data: DataSplits,
    config: Config,
    metrics: dict[str, Any],
) -> None:
    title = f"{config.guide.flow} guide, latent {config.model.latent_dim}, {config.data.name}"
    if history:
        plot_elbo_curve(history, run_dir / "elbo_curve.png", title=title)
    if config.is_sequence:
        from pyro_flowvae.plots_sequences import write_sequence_figures

        write_sequence_figures(run_dir, vae, data, config, metrics)
        return
    plot_kl_per_dim(
        metrics["kl_per_dim"],
        metrics["activity_per_dim"],
        run_dir / "kl_per_dim.png",
        title=f"{title}: {metrics['active_units']} active units",
    )
    if data.image_shape is None:
        return
    device = next(vae.parameters()).device
    torch.manual_seed(config.train.seed)
    save_image_grid(vae.generate(64), data.image_shape, run_dir / "samples.png", nrow=8)
    x = data.test[:32].to(device)
    save_image_grid(interleave(x, vae.reconstruct(x)), data.image_shape, run_dir / "reconstructions.png", nrow=8)
