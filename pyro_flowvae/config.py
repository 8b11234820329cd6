"""Declarative run configuration: dataclasses, TOML files, dotted overrides and validation."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin, get_type_hints

import tomli_w

from pyro_flowvae.data.load import DATASETS
from pyro_flowvae.data.series import SEQUENCE_LOADERS
from pyro_flowvae.data.splits import BINARIZE_MODES
from pyro_flowvae.errors import ConfigError
from pyro_flowvae.guides.sequence import COVARIANCES, FRAME_ENCODERS
from pyro_flowvae.infer.distributed import BACKENDS, DEVICES
from pyro_flowvae.infer.optim import LR_SCHEDULES, OPTIMIZERS
from pyro_flowvae.infer.svi import ANNEALINGS
from pyro_flowvae.infer.svi import ELBOS as ELBO_REGISTRY
from pyro_flowvae.models.likelihoods import LIKELIHOODS as LIKELIHOOD_REGISTRY
from pyro_flowvae.models.nets import ACTIVATIONS as ACTIVATION_REGISTRY
from pyro_flowvae.priors import PRIORS as PRIOR_REGISTRY

if TYPE_CHECKING:
    from pyro_flowvae.tasks import Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "ModelConfig",
    "GuideConfig",
    "TrainConfig",
    "EvalConfig",
    "GPConfig",
    "DistributedConfig",
    "Config",
    "load_config",
    "parse_overrides",
    "config_diff",
    "flatten_config",
    "describe_config",
    "PATH_KEYS",
]

LIKELIHOODS = tuple(LIKELIHOOD_REGISTRY)
DATASET_NAMES = DATASETS + tuple(SEQUENCE_LOADERS)
ELBOS = tuple(ELBO_REGISTRY)
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)
PRIORS = tuple(PRIOR_REGISTRY)


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class DataConfig:
    """Where the data come from and how they are prepared."""

    name: str = field(default="mnist", metadata=_doc("data set", choices=DATASET_NAMES))
    root: str = field(
        default="data",
        metadata=_doc("folder holding MNIST/raw, FashionMNIST/raw or binarized_mnist.npz (read-only is fine)"),
    )
    path: str | None = field(default=None, metadata=_doc("a .npy/.npz file, for data.name = 'npz'"))
    limit: int | None = field(default=None, metadata=_doc("use only the first N training examples (none: all)", min=1))
    valid_size: int = field(default=10000, metadata=_doc("examples held out of the training set for validation", min=1))
    binarize: str = field(
        default="dynamic",
        metadata=_doc(
            "grey images to binary: resampled every epoch (dynamic), thresholded once (static), or kept",
            choices=BINARIZE_MODES,
        ),
    )
    download: bool = field(default=False, metadata=_doc("download MNIST/Fashion-MNIST when absent"))
    cache_dir: str | None = field(
        default=None, metadata=_doc("writable folder for extracted files when data.root is read-only")
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_doc(
            "options of a sequence data set, e.g. [data.options] num_train = 2000, missing = 'mnar' "
            "(healing_mnist) or window = 36 (airline); unknown keys are errors that list the valid ones"
        ),
    )


@dataclass
class ModelConfig:
    """The generative model p(x, z) = p(z) p(x | z)."""

    latent_dim: int = field(default=32, metadata=_doc("dimension L of the latent z", min=1))
    hidden: list[int] = field(
        default_factory=lambda: [512],
        metadata=_doc("hidden widths of the encoder MLP; the decoder uses them reversed", min=1, nonempty=True),
    )
    activation: str = field(default="relu", metadata=_doc("hidden activation", choices=ACTIVATIONS))
    decoder_hidden: list[int] | None = field(
        default=None,
        metadata=_doc(
            "sequence data: hidden widths of the frame decoder (none: model.hidden reversed), e.g. [256, 256, 256] "
            "as Fortuin et al. 2020",
            min=1,
        ),
    )
    frame_encoder: str = field(
        default="mlp",
        metadata=_doc(
            "sequence data with image frames: mlp reads each frame's pixels and mask directly; conv first passes "
            "them through two 3x3 convolutions (2 -> model.conv_channels -> 1 channels, Fortuin et al.'s image "
            "preprocessor)",
            choices=FRAME_ENCODERS,
        ),
    )
    conv_channels: int = field(
        default=256, metadata=_doc("channels of the conv frame encoder's hidden convolution", min=1)
    )
    time_window: int = field(
        default=3,
        metadata=_doc("sequence data: steps the encoder's temporal convolution spans (odd keeps it centred)", min=1),
    )
    likelihood: str = field(
        default="bernoulli",
        metadata=_doc(
            "p(x | z): Bernoulli (binary data), ContinuousBernoulli ([0,1]), Gaussian (real)",
            choices=LIKELIHOODS,
        ),
    )
    prior: str = field(
        default="standard_normal",
        metadata=_doc(
            "p(z): N(0, I), or a Gaussian process over time per latent channel (sequence data)", choices=PRIORS
        ),
    )


@dataclass
class GuideConfig:
    """The amortized guide q(z | x): a Gaussian base, optionally pushed through a flow."""

    flow: str = field(
        default="mean_field",
        metadata=_doc("flow family (mean_field, planar, radial, householder, iaf, spline, ...)"),
    )
    num_flows: int = field(default=4, metadata=_doc("number of flow layers K (ignored by mean_field)", min=0))
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_doc(
            "options per flow family, one table each, e.g. [guide.options.iaf] hidden_dims = [64, 64] or "
            "--set guide.options.spline.count_bins=16; only the chosen family's table is used, so swapping "
            "guide.flow needs no other change"
        ),
    )
    min_scale: float = field(default=1e-4, metadata=_doc("floor added to the base Gaussian's scale", min=0.0))
    standardize: bool = field(
        default=True,
        metadata=_doc(
            "the flow acts on the standardized noise eps ~ N(0, I) and z = mu + sigma * f(eps) (true), or on "
            "z0 = mu + sigma * eps as in Rezende & Mohamed 2015 (false), where it follows the posterior's scale "
            "and planar layers saturate under KL warm-up"
        ),
    )
    covariance: str = field(
        default="diagonal",
        metadata=_doc(
            "sequence data only: the base Gaussian over time per latent channel, frame-wise (diagonal) or with "
            "a banded precision (Fortuin et al. 2020)",
            choices=COVARIANCES,
        ),
    )


@dataclass
class TrainConfig:
    """Stochastic variational inference."""

    epochs: int = field(default=10, metadata=_doc("passes over the training set", min=1))
    batch_size: int = field(default=128, metadata=_doc("minibatch size", min=1))
    lr: float = field(default=1e-3, metadata=_doc("learning rate of train.optimizer", min_exclusive=0.0))
    optimizer: str = field(
        default="adam",
        metadata=_doc("torch.optim optimizer over the model's and guide's parameters", choices=tuple(OPTIMIZERS)),
    )
    flow_lr_scale: float = field(
        default=0.1,
        metadata=_doc(
            "the guide's flow parameters learn at train.lr times this (a second parameter group): linear heads of "
            "fan-in H move their outputs about H times faster under Adam than one weight moves",
            min_exclusive=0.0,
            max=1.0,
        ),
    )
    clip_norm: float | None = field(
        default=10.0,
        metadata=_doc(
            "clip the global gradient norm, over all parameters (torch.nn.utils.clip_grad_norm_; none: no clipping)",
            min_exclusive=0.0,
        ),
    )
    lr_schedule: str = field(
        default="constant",
        metadata=_doc(
            "learning-rate schedule, stepped once per epoch: constant, step (times lr_gamma every lr_step_epochs), "
            "cosine (to lr_min over train.epochs) or plateau (times lr_gamma after lr_patience epochs without a "
            "better validation ELBO)",
            choices=LR_SCHEDULES,
        ),
    )
    lr_gamma: float = field(
        default=0.5, metadata=_doc("factor of the step and plateau schedules", min_exclusive=0.0, max=1.0)
    )
    lr_step_epochs: int = field(default=30, metadata=_doc("epochs between the step schedule's decays", min=1))
    lr_patience: int = field(
        default=10, metadata=_doc("epochs without a better validation ELBO before the plateau schedule decays", min=0)
    )
    lr_min: float = field(
        default=0.0, metadata=_doc("lowest learning rate of the cosine and plateau schedules", min=0.0)
    )
    kl_warmup_epochs: float = field(
        default=0.0,
        metadata=_doc("epochs over which the KL weight (temperature) rises linearly to 1", min=0.0),
    )
    annealing: str = field(
        default="kl",
        metadata=_doc(
            "what the warm-up weight beta multiplies: kl, the latent terms log p(z) - log q(z|x) (KL warm-up), or "
            "temperature, log p(x, z) with the entropy at weight 1 (Rezende & Mohamed 2015)",
            choices=ANNEALINGS,
        ),
    )
    hold_flows: bool = field(
        default=False,
        metadata=_doc(
            "keep the guide's flow at its identity initialisation (bypassed, untrained) until the warm-up weight "
            "reaches 1: a small weight lets q shrink or spread far from the scale the flow starts at, and its "
            "units saturate"
        ),
    )
    beta: float = field(
        default=1.0,
        metadata=_doc(
            "weight of the latent terms log p(z) - log q(z|x) once the warm-up is over: 1 trains the ELBO, another "
            "value a beta-weighted bound (Fortuin et al. 2020 train the GP-VAE at 0.8); validation, early stopping "
            "and every reported figure use the plain ELBO",
            min_exclusive=0.0,
        ),
    )
    kl_start: float = field(
        default=0.01,
        metadata=_doc(
            "KL weight at the first step of the warm-up, as a fraction of train.beta", min_exclusive=0.0, max=1.0
        ),
    )
    elbo: str = field(
        default="trace",
        metadata=_doc(
            "Trace_ELBO, TraceMeanField_ELBO (analytic KL where it exists), JitTrace_ELBO (torch.jit.trace, "
            "which torch marks deprecated) or iwae, the importance-weighted bound with train.num_particles samples "
            "(RenyiELBO, alpha = 0)",
            choices=ELBOS,
        ),
    )
    num_particles: int = field(default=1, metadata=_doc("ELBO particles per datapoint", min=1))
    vectorize_particles: bool = field(default=True, metadata=_doc("draw the particles in one vectorized pass"))
    patience: int | None = field(
        default=None,
        metadata=_doc(
            "stop after this many epochs without a better validation ELBO, counted after the KL warm-up (none: never)",
            min=1,
        ),
    )
    divergence_factor: float = field(
        default=10.0,
        metadata=_doc(
            "stop the run as diverged when the validation ELBO falls more than this many times its magnitude at "
            "initialisation below its value there (a finite divergence: a NaN or infinite loss stops it always)",
            min_exclusive=0.0,
        ),
    )
    restore_best: bool = field(
        default=True,
        metadata=_doc(
            "evaluate (and sample) with the weights of the best validation ELBO; false: the last epoch's, for a "
            "fixed schedule or a validation set too small to choose by"
        ),
    )
    device: str = field(default="auto", metadata=_doc("auto picks CUDA when present", choices=DEVICES))
    seed: int = field(default=0, metadata=_doc("seed of every random draw", min=0))
    log_every: int = field(default=50, metadata=_doc("steps between progress-bar updates and NaN checks", min=1))
    progress: bool = field(default=True, metadata=_doc("show a progress bar (on a terminal)"))


@dataclass
class EvalConfig:
    """Evaluation on the test set."""

    iw_samples: int = field(
        default=1000, metadata=_doc("importance samples K per datapoint for log p(x) (IWAE bound)", min=1)
    )
    sample_chunk: int = field(default=500, metadata=_doc("importance samples drawn at once", min=1))
    data_chunk: int = field(default=100, metadata=_doc("test datapoints scored at once", min=1))
    test_limit: int | None = field(
        default=None,
        metadata=_doc("score N test examples spread evenly over the test set, every (n/N)-th (none: all)", min=1),
    )
    valid_samples: int = field(default=1, metadata=_doc("samples per datapoint for the validation ELBO", min=1))
    impute_samples: int = field(
        default=100,
        metadata=_doc("sequence data: posterior-predictive draws per sequence for imputations and forecasts", min=1),
    )
    level: float = field(
        default=0.9,
        metadata=_doc("sequence data: probability of the forecast interval (arviz HDI)", min_exclusive=0.0, max=0.999),
    )


@dataclass
class GPConfig:
    """The Gaussian-process prior over time of each latent channel (model.prior = 'gp')."""

    kernel: str = field(
        default="cauchy",
        metadata=_doc(
            "kernel expression over pyro.contrib.gp.kernels: rbf, matern32, matern52, cauchy, periodic, linear, "
            "combined with + and *, e.g. 'periodic*rbf + linear'"
        ),
    )
    lengthscale: list[float] = field(
        default_factory=lambda: [2.0],
        metadata=_doc(
            "length scale(s) in time units: one value shared by all channels, one per channel, or a few spread "
            "over the channels in equal groups (Fortuin's several length scales)",
            min_exclusive=0.0,
            nonempty=True,
        ),
    )
    variance: float = field(default=1.0, metadata=_doc("kernel variance", min_exclusive=0.0))
    period: float = field(default=1.0, metadata=_doc("period of the periodic kernel, in time units", min_exclusive=0.0))
    learn: bool = field(default=False, metadata=_doc("learn the kernel hyperparameters by SVI (else fixed)"))
    jitter: float = field(
        default=1e-4,
        metadata=_doc(
            "added to the kernel matrix's diagonal: numerical jitter, or (0.01-0.1) white noise that lets each "
            "latent path leave the kernel's smooth family a little",
            min_exclusive=0.0,
        ),
    )


@dataclass
class DistributedConfig:
    """Data-parallel training under torchrun (read only when torchrun started the process)."""

    backend: str = field(
        default="auto",
        metadata=_doc("process-group backend: auto is nccl when training on CUDA, gloo on the CPU", choices=BACKENDS),
    )
    timeout_s: float = field(
        default=600.0,
        metadata=_doc(
            "seconds a process waits for the others before the job fails (a dead or hung rank)", min_exclusive=0.0
        ),
    )


@dataclass
class Config:
    """A whole run: data, model, guide, training, evaluation, the GP prior and data-parallel settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gp: GPConfig = field(default_factory=GPConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def task(self) -> Task:
        """The workflow of ``data.name`` (:data:`~pyro_flowvae.tasks.TASKS`): images or sequences."""
        from pyro_flowvae.tasks import task_for

        return task_for(self.data.name)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Config:
        """Build and validate a config from nested dicts (as read from TOML); unknown keys are errors."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config must be a table of sections, got {type(raw).__name__}")
        sections = {f.name: f for f in fields(cls)}
        kwargs = {}
        for name, value in raw.items():
            if name not in sections:
                raise ConfigError(_unknown_key_message(name, sections, prefix=""))
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
            kwargs[name] = _build_section(sections[name].default_factory, name, value)  # type: ignore[misc]
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
        """Read a TOML file, apply dotted overrides (``"guide.flow=iaf"`` or ``{"guide.flow": "iaf"}``)."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}; pass a TOML file such as examples/configs/mnist_iaf.toml")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); TOML files are UTF-8: save it "
                "as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
        return cls.from_dict(_apply_overrides(raw, overrides))

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> Config:
        """A new validated config with dotted overrides applied."""
        return Config.from_dict(_apply_overrides(self.to_dict(), overrides))

    # -- output ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts; keys whose value is None are left out (TOML has no null)."""
        return _drop_none(dataclasses.asdict(self))

    def with_resolved_paths(self, base: str | Path | None = None) -> Config:
        """A copy whose file and folder keys (:data:`PATH_KEYS`) are absolute: relative ones are read against
        ``base`` (default: the working directory), as the command that typed them meant. A run directory then
        works from any working directory."""
        base_path = Path.cwd() if base is None else Path(base)
        changes = {}
        for key in PATH_KEYS:
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is not None:
                resolved = str((base_path / Path(value).expanduser()).resolve())
                if resolved != value:
                    changes[key] = resolved
        return self.with_overrides(changes) if changes else self

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        """Write the TOML atomically (a reader never sees a torn file)."""
        from pyro_flowvae._atomic import atomic_write

        text = self.to_toml()
        atomic_write(path, lambda handle: handle.write(text))

    # -- checks ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every key's type, range and choices; raise ConfigError naming the key and the fix."""
        for section in fields(self):
            _validate_section(getattr(self, section.name), section.name)
        if self.data.name == "npz" and not self.data.path:
            raise ConfigError("data.name = 'npz' needs data.path, the .npy/.npz file to read")
        from pyro_flowvae.flows import check_flow_options

        check_flow_options(self.guide.flow, {})  # an unknown flow fails before any work, listing the known ones
        for family, options in self.guide.options.items():
            if not isinstance(options, Mapping):
                raise ConfigError(
                    f"guide.options.{family} must be a table of that family's options, e.g. "
                    f"[guide.options.iaf] hidden_dims = [64, 64]; got {options!r}"
                )
            from pyro_flowvae.flows import FLOWS

            if family not in FLOWS:
                raise ConfigError(
                    f"guide.options.{family}: unknown flow {family!r}; the tables of guide.options are named by "
                    f"flow: {', '.join(sorted(FLOWS))}"
                )
            check_flow_options(family, dict(options))  # the message names guide.options.<family>.<key>
        self.task.check_config(self)  # keys another task reads are errors here
        if self.model.prior == "gp":
            from pyro_flowvae.priors.kernels import build_kernel

            build_kernel(self.gp.kernel)  # an unknown kernel or a malformed expression fails here, naming the fix
            count = len(self.gp.lengthscale)
            if count == 0 or self.model.latent_dim % count:
                raise ConfigError(
                    f"gp.lengthscale has {count} values but model.latent_dim = {self.model.latent_dim}; give one "
                    "value, one per latent channel, or a number of values that divides latent_dim"
                )
        if self.train.elbo == "iwae" and self.train.num_particles < 2:
            raise ConfigError(
                "train.elbo = 'iwae' with train.num_particles = 1 is the plain ELBO; set train.num_particles >= 2 "
                "(e.g. 5, Burda et al. 2016) or train.elbo = 'trace'"
            )
        if self.train.annealing == "temperature" and self.train.elbo in ("mean_field", "jit"):
            raise ConfigError(
                f"train.annealing = 'temperature' weights the model's sites only, which train.elbo = "
                f"{self.train.elbo!r} cannot score; use train.elbo = 'trace' or train.annealing = 'kl'"
            )
        if self.train.annealing == "temperature" and self.train.beta != 1.0:
            raise ConfigError(
                f"train.beta = {self.train.beta} weights the latent terms, but train.annealing = 'temperature' "
                "weights log p(x, z) with the entropy at 1; use train.annealing = 'kl' with train.beta, or "
                "train.beta = 1"
            )
        if self.guide.flow != "mean_field" and self.guide.num_flows < 1:
            raise ConfigError(
                f"guide.num_flows = {self.guide.num_flows} but guide.flow = {self.guide.flow!r} needs at least 1 "
                "layer; set guide.num_flows >= 1 or guide.flow = 'mean_field'"
            )


#: config keys that name a file or folder; stored resolved in a run directory (:meth:`Config.with_resolved_paths`)
PATH_KEYS = ("data.root", "data.path", "data.cache_dir")


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
    """The defaults, or a TOML file, with dotted overrides applied and everything validated."""
    if path is None:
        return Config.from_dict(_apply_overrides({}, overrides))
    return Config.from_file(path, overrides)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key.sub=value`` strings; values are read as TOML (``4``, ``1e-3``, ``[400, 400]``,
    ``true``), bare words as strings; ``none``/``null`` unset a key that may be unset (``data.limit=none``)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(
                f"override {item!r} must look like section.key=value, e.g. guide.flow=iaf or train.epochs=5"
            )
        parsed[key] = _parse_value(text.strip())
    return parsed


def config_diff(a: Config | Mapping[str, Any], b: Config | Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs, mapped to (value in a, value in b)."""
    flat_a, flat_b = flatten_config(a), flatten_config(b)
    return {
        k: (flat_a.get(k), flat_b.get(k)) for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)
    }


def flatten_config(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys and their values (keys whose value is None are left out, as in :meth:`Config.to_dict`)."""
    return _flatten(config.to_dict() if isinstance(config, Config) else dict(config))


def describe_config() -> str:
    """One line per key: dotted name, type, default, meaning and allowed values (for --help and docs)."""
    lines = []
    for section in fields(Config):
        instance = section.default_factory()  # type: ignore[misc]
        hints = get_type_hints(type(instance))
        lines.append(f"[{section.name}]  {type(instance).__doc__}")
        for f in fields(instance):
            meta = f.metadata
            extra = f"; one of: {', '.join(meta['choices'])}" if "choices" in meta else ""
            type_name = _type_name(hints[f.name])
            default = getattr(instance, f.name)
            lines.append(f"  {section.name}.{f.name} ({type_name}, default {default!r}): {meta['help']}{extra}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# helpers


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    result = _deepcopy_dict(raw)
    if overrides is None:
        return result
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(f"override key {key!r} must be dotted, e.g. guide.flow")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is a value, not a table")
        node[parts[-1]] = value
    return result


def _deepcopy_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _unknown_key_message(name: str, known: Iterable[str], prefix: str) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    where = f"[{prefix.rstrip('.')}]" if prefix else "the config"
    return f"unknown key {prefix}{name!r} in {where}{hint}; valid keys: " + ", ".join(prefix + k for k in known)


def _build_section(factory: type, name: str, values: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(factory)}
    for key in values:
        if key not in known:
            raise ConfigError(_unknown_key_message(key, known, prefix=f"{name}."))
    return factory(**values)


def _type_name(hint: Any) -> str:
    if get_origin(hint) is not None and get_args(hint):
        args = [a for a in get_args(hint) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        if get_origin(hint) is list:
            return f"list[{inner}]"
        if get_origin(hint) is dict:
            return "table"
        return inner + (" | none" if type(None) in get_args(hint) else "")
    return getattr(hint, "__name__", str(hint))


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return value coerced to hint (int -> float only), or raise ConfigError."""
    args = get_args(hint)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = get_origin(hint)
    expected = _type_name(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list ({expected}), got {value!r}")
        (item,) = get_args(hint)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key} must be a {expected}, got {value!r}")
    return value


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if v is None or isinstance(v, (str, bool)):
            continue
        if "min" in meta and v < meta["min"]:
            raise ConfigError(f"{key} = {value!r} is out of range: it must be >= {meta['min']}")
        if "min_exclusive" in meta and v <= meta["min_exclusive"]:
            raise ConfigError(f"{key} = {value!r} is out of range: it must be > {meta['min_exclusive']}")
        if "max" in meta and v > meta["max"]:
            raise ConfigError(f"{key} = {value!r} is out of range: it must be <= {meta['max']}")


def _validate_section(section: Any, name: str) -> None:
    hints = get_type_hints(type(section))
    for f in fields(section):
        key = f"{name}.{f.name}"
        value = _check_type(getattr(section, f.name), hints[f.name], key)
        setattr(section, f.name, value)
        meta = f.metadata
        if meta.get("nonempty") and isinstance(value, list) and not value:
            raise ConfigError(f"{key} = [] is empty; give at least one value, e.g. {key} = {f.default_factory()!r}")
        if "choices" in meta and value not in meta["choices"]:
            close = difflib.get_close_matches(str(value), meta["choices"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key} = {value!r} is not valid{hint}; choose one of: {', '.join(meta['choices'])}")
        _check_range(value, meta, key)
