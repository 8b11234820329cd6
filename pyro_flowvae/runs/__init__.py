"""Run directories: train, evaluate, sample and compare, as the CLI and the Python API do them; provenance.py says
what produced a figure."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pyro_flowvae._atomic import atomic_write
from pyro_flowvae.config import Config, GuideConfig, config_diff, load_config
from pyro_flowvae.data.fingerprint import data_fingerprint
from pyro_flowvae.errors import CheckpointError, ConfigError, FlowVAEError, OutputError, os_error_message
from pyro_flowvae.infer.checkpoint import check_data_shape, load_checkpoint
from pyro_flowvae.infer.distributed import DistInfo, init_distributed, on_main, resolve_device
from pyro_flowvae.infer.trainer import BEST, CHECKPOINT, Trainer, TrainResult
from pyro_flowvae.plots.images import plot_elbo_curve, run_title, save_image_grid
from pyro_flowvae.runs.provenance import cpu_name, machine, versions

__all__ = [
    "RunResult",
    "as_config",
    "load_run_data",
    "train",
    "finished_metrics",
    "train_or_reuse",
    "fit_model",
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
    """A trained run: its directory (if any), metrics and the trained model."""

    run_dir: Path | None
    metrics: dict[str, Any]
    vae: nn.Module
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


def load_run_data(config: Config) -> Any:
    """The data splits a config names, loaded by its task (a SequenceSplits for sequence data)."""
    return config.task.load_data(config)


def train(
    config: Config | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    resume: bool = False,
    data: Any = None,
    verbose: bool = False,
) -> RunResult:
    """Train, evaluate on the test set, and (with ``out``) write the run directory:

    ``config.toml`` (resolved), ``checkpoint.pt`` (last epoch), ``best.pt`` (best validation ELBO),
    ``log.jsonl`` (one line per epoch), ``elbo_curve.png``, the task's plots (``samples.png`` and
    ``reconstructions.png`` for images, imputations or the forecast for sequences) and ``metrics.json`` (nats
    per datapoint; the test metrics use the best-validation weights). Under torchrun every process runs this
    same function: the processes train data-parallel and rank 0 writes the run directory.
    """
    config = as_config(config, overrides)
    if out is not None:
        config = config.with_resolved_paths()  # so that the run directory works from any working directory
    task = config.task
    run_dir = Path(out) if out is not None else None

    def report(record: dict[str, Any]) -> None:
        if verbose:
            print(
                f"epoch {record['epoch']:>3}: train ELBO {record['train_elbo']:9.2f}  "
                f"valid ELBO {record['valid_elbo']:9.2f}  {record['examples_per_s']:8.0f} ex/s",
                file=sys.stderr,
                flush=True,
            )

    info = init_distributed(config.distributed.backend, config.distributed.timeout_s, config.train.device)
    if run_dir is not None:
        on_main(lambda: _prepare_run_dir(run_dir, config, resume), info)
    if data is None:  # rank 0 first (it may extract files), then the others read what it extracted
        data = on_main(lambda: task.load_data(config), info) or task.load_data(config)
    result = fit_model(config, data, run_dir, info, resume=resume, on_epoch=report)
    if verbose and info.is_main and result.stopped_early:
        scored = "is the one scored" if config.train.restore_best else "is not restored (train.restore_best = false)"
        print(
            f"early stopping after epoch {len(result.history)} of train.epochs = {config.train.epochs}: no better "
            f"validation ELBO for train.patience = {config.train.patience} epochs after the warm-up; the best, "
            f"{result.best_valid_elbo:.2f} at epoch {result.best_epoch}, {scored}",
            file=sys.stderr,
            flush=True,
        )
    progress = verbose and info.is_main and config.train.progress and sys.stderr.isatty()
    metrics = _run_metrics(task.evaluate(result.vae, data, config, info, progress=progress), result, config, data)
    if info.distributed:
        metrics["world_size"] = info.world_size

    def write() -> None:
        if resume:
            config.save(run_dir / CONFIG_FILE)  # the resumed config may extend train.epochs
        _write_json(run_dir / METRICS_FILE, metrics)
        _write_plots(run_dir, result.vae, result.history, data, config, metrics)

    if run_dir is not None:
        on_main(write, info)
    return RunResult(run_dir, metrics, result.vae, result.history)


def fit_model(
    config: Config,
    data: Any,
    run_dir: str | Path | None = None,
    dist_info: DistInfo | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Check ``data`` for the config's task, build its model from ``train.seed`` (the same weights on every
    rank) and train it with :class:`~pyro_flowvae.infer.trainer.Trainer`; :func:`train` without the evaluation
    and the plots."""
    task = config.task
    task.check_data(config, data)
    meta = _data_meta(config, data)
    pyro.clear_param_store()  # pyro.module keeps stale parameters of an earlier model with the same names
    pyro.set_rng_seed(config.train.seed)
    vae = task.build_model(config, meta)
    trainer = Trainer(
        vae,
        data.train,
        data.valid,
        config,
        run_dir,
        dist_info,
        on_epoch=on_epoch,
        dynamic_binarize=task.dynamic_binarize(data),
        meta=meta,
    )
    return trainer.fit(resume=resume)


def _run_metrics(test_metrics: dict[str, Any], result: Any, config: Config, data: Any) -> dict[str, Any]:
    return {
        **test_metrics,
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


def load_run(run_dir: str | Path, device: str = "auto") -> tuple[Config, nn.Module, dict[str, Any]]:
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
    vae = config.task.build_model(config, state)
    vae.load_state_dict(state["vae"])
    return config, vae.to(resolve_device(device)).eval(), state


#: what ``evaluate`` may override: how the run is scored and on which data, never the model it rebuilds
EVALUATE_PREFIXES = ("eval.", "data.")
EVALUATE_KEYS = ("train.device", "train.progress")


def evaluation_file(overrides: Mapping[str, Any]) -> str:
    """The file ``evaluate`` writes in the run directory, named by its overrides: ``evaluate.json`` without
    any, else e.g. ``evaluate_eval.iw_samples=5000.json`` (a digest stands in for a long name)."""
    if not overrides:
        return "evaluate.json"
    parts = "_".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    slug = "".join(c if c.isalnum() or c in "._=-" else "-" for c in parts)
    if len(slug) > 100:
        import hashlib

        slug = slug[:80] + "-" + hashlib.sha256(parts.encode()).hexdigest()[:12]
    return f"evaluate_{slug}.json"


def evaluate_run(
    run_dir: str | Path,
    iw_samples: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Re-score a run's best model on its test set, optionally with other ``eval.*`` settings (``iw_samples``
    is ``eval.iw_samples``) or other data of the same shape (``data.*``).

    ``metrics.json`` keeps the figures of training; these go to :func:`evaluation_file` in the run directory
    (its path is ``metrics["evaluation_file"]``), with the overrides, the data's fingerprint and whether those
    are the data the run was trained on. Overrides of the model, the guide or the training are refused: the
    checkpoint's weights belong to the model they built."""
    run_dir = Path(run_dir)
    extra = dict(overrides or {})
    if iw_samples is not None:
        extra["eval.iw_samples"] = iw_samples
    refused = sorted(k for k in extra if not (k.startswith(EVALUATE_PREFIXES) or k in EVALUATE_KEYS))
    if refused:
        raise ConfigError(
            f"evaluate scores the model a run trained and cannot change it: {', '.join(refused)} would build "
            "another model (or training) than the checkpoint's weights belong to. evaluate takes only keys under "
            f"{', '.join(EVALUATE_PREFIXES)} (and {', '.join(EVALUATE_KEYS)}); to try "
            f"{refused[0]} = {extra[refused[0]]!r}, train a new run: pyro-flowvae train {run_dir / CONFIG_FILE} "
            f"--out NEW_RUN --set {refused[0]}={extra[refused[0]]}"
        )
    config, vae, state = load_run(run_dir)
    config = config.with_overrides(extra) if extra else config
    task = config.task
    data = task.load_data(config)
    task.check_data(config, data)
    check_data_shape(state, task.meta(data), run_dir, "score the run on data of the shape it was trained on")
    test_metrics = task.evaluate(vae, data, config, DistInfo(device=next(vae.parameters()).device), progress=verbose)
    fingerprint = data_fingerprint(data)
    name = evaluation_file(extra)
    metrics = {
        **test_metrics,
        "overrides": extra,
        "data_fingerprint": fingerprint,
        "same_data_as_training": state.get("data_fingerprint") == fingerprint if "data_fingerprint" in state else None,
        "checkpoint_epoch": state.get("epoch"),
        "versions": versions(),
    }
    _write_json(run_dir / name, metrics)
    return {**metrics, "evaluation_file": str(run_dir / name)}


@torch.no_grad()
def sample_run(run_dir: str | Path, num: int = 64, out: str | Path | None = None, seed: int = 0) -> torch.Tensor:
    """``num`` images E[x | z], z ~ p(z), from a run's model; written as a PNG grid when ``out`` is given."""
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    config, vae, state = load_run(run_dir)
    task = config.task
    if not hasattr(task, "sample"):
        raise FlowVAEError(
            f"{run_dir} is a {task.name} run ({config.data.name}); `sample` draws single images from the prior. Its "
            "imputations and forecasts are in the run directory (imputations.png / forecast.png, metrics.json)"
        )
    torch.manual_seed(seed)
    images = task.sample(vae, num, state).cpu()
    if out is not None:
        if state.get("image_shape") is None:
            raise FlowVAEError(f"{run_dir} was trained on data of no image shape; nothing to draw as a grid")
        save_image_grid(images, state["image_shape"], out, nrow=int(num**0.5) or 1)
    return images


def parse_guide_specs(specs: Sequence[str], base: Config) -> list[Config]:
    """``name`` or ``name:K`` per guide, each turned into a validated copy of ``base`` with ``guide.flow`` (and
    ``guide.num_flows``) swapped; a flow without K keeps the base config's K, or the default when that is 0."""
    from pyro_flowvae.flows import FLOWS

    if not specs:
        raise ConfigError("--guides names no guide; give at least one, e.g. --guides mean_field,planar:16,iaf:2")
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
    seen: dict[tuple[str, int], str] = {}
    for spec, cfg in zip(specs, configs):
        key = (cfg.guide.flow, cfg.guide.num_flows if cfg.guide.flow != "mean_field" else 0)
        if key in seen:
            raise ConfigError(
                f"--guides entries {seen[key]!r} and {spec!r} are the same guide ({key[0]}, K={key[1]}); name each "
                "guide once"
            )
        seen[key] = spec
    return configs


def compare(
    config: Config | Mapping[str, Any] | str | Path,
    guides: Sequence[str],
    out: str | Path,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train the same model with each guide (``guide.flow`` swapped, all else equal) into ``out/<guide>``;
    ``guides`` holds ``name`` or ``name:K`` (K flow layers). Every config is checked before any training.
    Writes ``out/comparison.json`` and returns one row per guide.

    With ``resume``, an interrupted comparison goes on: a guide whose run finished (its ``metrics.json``
    written, its checkpoint made with the same config) is not trained again, the one that was cut off resumes
    from its checkpoint, the others start. Without it, an ``out`` that holds runs already is refused."""
    configs = parse_guide_specs(guides, as_config(config, overrides))
    out = Path(out)
    run_dirs = [out / spec.replace(":", "_") for spec in guides]
    started = [d for d in run_dirs if (d / CHECKPOINT).is_file()]
    if started and not resume:
        raise FlowVAEError(
            f"{out} already holds runs of this comparison ({', '.join(d.name for d in started)}); pass --resume to "
            "continue it (finished guides are reused, an interrupted one resumes), or choose another --out"
        )
    data = configs[0].task.load_data(configs[0])
    rows = []
    for cfg, spec, run_dir in zip(configs, guides, run_dirs):
        if resume:
            m, reused = train_or_reuse(cfg, run_dir, data, verbose=verbose)
            if reused and verbose:
                print(f"{spec}: finished in {run_dir}, reused", file=sys.stderr, flush=True)
        else:
            m = train(cfg, run_dir, data=data, verbose=verbose).metrics
        keys = (
            "guide", "num_flows", "test_elbo", "test_elbo_stderr", "test_log_px", "test_log_px_stderr", "iw_samples",
            "num_test", "pareto_k_share_above_0_7", "train_examples_per_s", "num_params", "epochs",
            "best_epoch", "device",
        )  # fmt: skip
        keys = (*keys, *(k for k in cfg.task.metric_keys if k not in keys))  # the task's own metrics
        rows.append({key: m.get(key) for key in keys})
        _write_json(
            out / "comparison.json",
            {"rows": rows, "config": configs[0].with_resolved_paths().to_dict(), "versions": versions()},
        )
    return rows


#: resumable keys (see :data:`~pyro_flowvae.infer.checkpoint.RESUMABLE_KEYS`) that change a finished run's figures:
#: a finished run is reused only when they match (the other resumable keys cannot change them, and where the data
#: live is checked by the data's fingerprint instead)
_FIGURE_KEYS = ("train.lr", "train.patience", "train.restore_best")
_FIGURE_PREFIXES = ("eval.",)


def _data_meta(config: Config, data: Any) -> dict[str, Any]:
    """What a checkpoint records of its data: the task's shapes and a fingerprint of the content."""
    meta = config.task.meta(data)
    meta["data_fingerprint"] = data_fingerprint(data)  # resume refuses other data of the same shape
    return meta


def train_or_reuse(config: Config, run_dir: Path, data: Any, verbose: bool = False) -> tuple[dict[str, Any], bool]:
    """The metrics of ``config`` trained on ``data`` into ``run_dir``, and whether they were reused: a run that
    finished there with the same config and data is reused (:func:`finished_metrics`), an interrupted one resumes
    from its checkpoint, otherwise the run starts."""
    finished = finished_metrics(run_dir, config, data)
    if finished is not None:
        return finished, True
    again = (run_dir / CHECKPOINT).is_file()
    return train(config, run_dir, data=data, verbose=verbose, resume=again).metrics, False


def finished_metrics(run_dir: Path, config: Config, data: Any) -> dict[str, Any] | None:
    """The metrics of a finished run in ``run_dir`` trained and scored with ``config`` on ``data``; None when the
    run has not finished. A checkpoint of another model config or other data is refused, naming what differs; so is
    a finished run whose config differs in a key that changes its figures (``eval.*``, ``train.lr``,
    ``train.patience``, ``train.restore_best``): reusing it would report figures the comparison did not ask for."""
    metrics = run_dir / METRICS_FILE
    if not (metrics.is_file() and (run_dir / CHECKPOINT).is_file()):
        return None
    config = config.with_resolved_paths()
    run_state = load_checkpoint(run_dir / CHECKPOINT, config, meta=_data_meta(config, data))["run_state"]
    stopped_early = run_state["patience_left"] is not None and run_state["patience_left"] <= 0
    if run_state["epoch"] < config.train.epochs and not stopped_early:
        return None  # scored after a shorter schedule: train.epochs was raised since
    try:
        saved = load_config(run_dir / CONFIG_FILE)
    except FlowVAEError:
        return None  # unreadable: train and score the run again
    changed = {
        k: v for k, v in config_diff(saved, config).items() if k in _FIGURE_KEYS or k.startswith(_FIGURE_PREFIXES)
    }
    if changed:
        lines = "\n".join(f"  {k}: the run has {a!r}, this comparison asks for {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"{run_dir} finished with other settings than this comparison's, so its figures are not the ones asked "
            f"for:\n{lines}\nre-score it with pyro-flowvae evaluate {run_dir} --set KEY=VALUE (eval.* keys), compare "
            "into another --out, or compare with the settings the run was made with"
        )
    try:
        return json.loads(metrics.read_text())
    except (OSError, ValueError):
        return None  # unreadable: score the run again


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of compare's rows, with the columns of each task's metrics that the rows have
    (active units for images; imputation or forecast metrics for sequences)."""
    from pyro_flowvae.tasks import TASKS

    task_keys = dict.fromkeys(k for task in TASKS.values() for k in task.metric_keys)
    extra = [k for k in task_keys if any(r.get(k) is not None for r in rows)]
    header = "| guide | K | test ELBO | log p(x) (IW) | Pareto k>0.7 | train ex/s | params |"
    header += "".join(f" {k.replace('_', ' ')} |" for k in extra)
    rule = "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)

    def share(value: float | None) -> str:
        return "n/a (K < 25)" if value is None else f"{value:.1%}"

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [
        f"| {r['guide']} | {r['num_flows']} | {r['test_elbo']:.2f} | {r['test_log_px']:.2f} ± "
        f"{r['test_log_px_stderr']:.2f} | {share(r['pareto_k_share_above_0_7'])} | "
        f"{r['train_examples_per_s']:.0f} | {r['num_params']:,} |" + "".join(f" {cell(r.get(k))} |" for k in extra)
        for r in rows
    ]
    return "\n".join([header, rule, *lines])


# ----------------------------------------------------------------------------------------------------------


def _prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a folder; choose a folder for the run directory")
    checkpoint = run_dir / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise FlowVAEError(f"--resume: {run_dir} holds no {CHECKPOINT} to resume from")
        return  # load_checkpoint compares the configs and names any differing key
    if checkpoint.is_file():
        raise FlowVAEError(
            f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, or choose another --out"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(os_error_message(error, f"creating the run directory --out {run_dir}")) from error
    config.save(run_dir / CONFIG_FILE)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda handle: handle.write(json.dumps(obj, indent=2) + "\n"))


@torch.no_grad()
def _write_plots(
    run_dir: Path, vae: nn.Module, history: list[dict[str, Any]], data: Any, config: Config, metrics: dict[str, Any]
) -> None:
    if history:
        plot_elbo_curve(history, run_dir / "elbo_curve.png", title=run_title(config))
    config.task.write_plots(run_dir, vae, data, config, metrics)
