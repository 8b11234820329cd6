"""Checkpoints written atomically, and checked against the config they are resumed with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_flowvae._atomic import atomic_write
from pyro_flowvae.config import Config, config_diff
from pyro_flowvae.errors import CheckpointError, FlowVAEError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "check_data_shape",
    "resumable",
    "RESUMABLE_KEYS",
    "RESUMABLE_PREFIXES",
    "NOTICED_KEYS",
    "FORMAT_VERSION",
]

#: 2: torch.optim optimizer state, a RunState, no RNG state (the noise is seeded per step); 1: pyro.optim state
#: 2: training moved to torch.optim. 3: the guide's flow acts on standardized noise and planar layers are
#: centered, so the same weights of format 2 mean another q(z | x).
#: 4: the banded GP-VAE guide bounds its coupling, phi = tanh(head output), so its weights of format 3 mean another
#: q(z | x); format 3 checkpoints of every other guide are read as they are.
#: 5: Householder flows act on z0 = mu + sigma * eps (on the standardized noise they changed nothing) and start at
#: the identity; radial flows scale alpha and beta by sqrt(L). Format 3 and 4 checkpoints of other flows are read.
FORMAT_VERSION = 5
#: flows whose weights of format 4 mean another q(z | x)
_CHANGED_IN_5 = ("householder", "radial")


def _flow_unchanged_since_4(config: dict[str, Any]) -> bool:
    return config.get("guide", {}).get("flow", "mean_field") not in _CHANGED_IN_5


#: older formats whose checkpoints this version reads, each with the config test that says when
_COMPATIBLE = {
    3: lambda config: (
        config.get("guide", {}).get("covariance", "diagonal") != "banded" and _flow_unchanged_since_4(config)
    ),
    4: _flow_unchanged_since_4,
}

#: keys that may change between a run and its resumption: they do not change the model or the trained state, or
#: they are a deliberate choice (a smaller ``train.lr`` is what the divergence message recommends). Where the data
#: live (``data.root``, ``data.path``) may change too: the data's fingerprint is compared instead.
RESUMABLE_KEYS = (
    "train.epochs",
    "train.lr",
    "distributed.backend",
    "distributed.timeout_s",
    "train.patience",
    "train.restore_best",
    "train.device",
    "train.progress",
    "train.log_every",
    "data.root",
    "data.download",
    "data.cache_dir",
    "data.path",
)
#: every key under these may change on resume (evaluation settings do not touch the trained state)
RESUMABLE_PREFIXES = ("eval.",)
#: resumable keys whose change alters the training from then on: the resumed run records a notice in log.jsonl
NOTICED_KEYS = ("train.lr",)


def resumable(key: str) -> bool:
    """Whether a resumed run may change config key ``key`` (:data:`RESUMABLE_KEYS`, :data:`RESUMABLE_PREFIXES`)."""
    return key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` written atomically (temporary file, fsync, ``os.replace``): a crash mid-write leaves
    the previous checkpoint intact."""
    atomic_write(path, lambda handle: torch.save({"format_version": FORMAT_VERSION, **state}, handle), binary=True)


def load_checkpoint(
    path: str | Path, config: Config | None = None, map_location: Any = "cpu", meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read a checkpoint; when ``config`` is given, refuse one written with a config that differs in any key
    outside :data:`RESUMABLE_KEYS`, naming each differing key; when ``meta`` is given (the data's dimension and
    shape), refuse one written for data of another shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (pyro-flowvae train CONFIG --out RUN_DIR)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pyro-flowvae checkpoint")
    version = state["format_version"]
    if version != FORMAT_VERSION and not (version in _COMPATIBLE and _COMPATIBLE[version](state.get("config", {}))):
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, this pyro-flowvae reads format "
            f"{FORMAT_VERSION} (format 5 moved Householder flows onto z0 and rescaled radial flows, so their weights "
            "of format 4 would describe another posterior; format 4 bounds the banded GP-VAE guide's coupling with a "
            "tanh, so banded weights of format 3 would describe another posterior; format 3 moved the guide's flow "
            "onto standardized noise and centered the planar layers; format 2 had moved training to torch.optim); "
            "its weights cannot be resumed or scored here: train it again into a new run directory, or "
            "use the pyro-flowvae version that wrote it"
        )
    if config is not None:
        diff = {k: v for k, v in config_diff(_with_defaults(state["config"]), config).items() if not resumable(k)}
        if diff:
            lines = "\n".join(f"  {k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"checkpoint {path} was written with a different config:\n{lines}\n"
                "resume with the run's own config (RUN_DIR/config.toml) or start a new run directory; a resumed run "
                f"may change only {', '.join(RESUMABLE_KEYS)} and the keys under {', '.join(RESUMABLE_PREFIXES)}"
            )
    if meta is not None:
        check_data_shape(state, meta, path, "resume with the data the run was trained on, or start a new run directory")
    return state


def _with_defaults(saved: dict[str, Any]) -> Config | dict[str, Any]:
    """The checkpoint's config with the keys added since it was written at their defaults (every new key's
    default is the behaviour of before it existed), so that a new key is no difference; as stored when it no
    longer validates (a key since removed: then that key is named)."""
    try:
        return Config.from_dict(saved)
    except FlowVAEError:
        return saved


def check_data_shape(state: dict[str, Any], meta: dict[str, Any], path: str | Path, fix: str) -> None:
    """Raise :class:`CheckpointError` naming every key of ``meta`` (the data's dimension and shape, and with
    ``data_fingerprint`` their content) in which the checkpoint ``state`` differs, and ``fix``. A checkpoint
    written before fingerprints were stored is not compared on the fingerprint."""
    differs = {
        k: (state.get(k), v)
        for k, v in meta.items()
        if state.get(k) != v and not (k == "data_fingerprint" and k not in state)
    }
    if differs:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, the data have {b!r}" for k, (a, b) in differs.items())
        what = "another shape" if set(differs) - {"data_fingerprint"} else "other content (the same shape)"
        raise CheckpointError(
            f"checkpoint {path} was trained on data of {what}:\n{lines}\n"
            "(data.path or data.root now names other data than the run was trained on, or the files changed); " + fix
        )
