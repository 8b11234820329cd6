"""The sequence data sets a config can name (Healing MNIST, airline passengers) and their options."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pyro_flowvae.errors import ConfigError, DataError

__all__ = [
    "SEQUENCE_LOADERS",
    "check_sequence_options",
    "check_sequence_splits",
    "load_sequence_data",
    "sequence_option_names",
]

#: keys a loader takes from the run itself, not from [data.options]
_RESERVED = {"images", "labels", "series", "months", "root", "seed", "cache_dir", "download", "self"}


def _healing_mnist() -> list[Callable[..., Any]]:
    from pyro_flowvae.data.healing_mnist import load_healing_mnist, make_healing_mnist

    return [load_healing_mnist, make_healing_mnist]


def _airline() -> list[Callable[..., Any]]:
    from pyro_flowvae.data.airline import airline_windows

    return [airline_windows]


#: data.name -> the functions whose keyword arguments [data.options] may set
SEQUENCE_LOADERS: dict[str, Callable[[], list[Callable[..., Any]]]] = {
    "healing_mnist": _healing_mnist,
    "airline": _airline,
}


def sequence_option_names(name: str) -> list[str]:
    """The keys ``[data.options]`` accepts for the sequence data set ``name``."""
    names: list[str] = []
    for fn in SEQUENCE_LOADERS[name]():
        for param in inspect.signature(fn).parameters.values():
            keyword = param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            if keyword and param.name not in _RESERVED and param.name not in names:
                names.append(param.name)
    return names


def check_sequence_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError for a key of ``[data.options]`` that the data set does not take."""
    known = sequence_option_names(name)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean data.options.{close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown key data.options.{key} for data.name = {name!r}{hint}; valid keys: "
                + ", ".join(f"data.options.{k}" for k in known)
            )


def load_sequence_data(
    name: str,
    *,
    root: str,
    options: Mapping[str, Any],
    seed: int,
    cache_dir: str | None = None,
    download: bool = False,
    path: str | None = None,
) -> Any:
    """The :class:`~pyro_flowvae.data.sequences.SequenceSplits` of a sequence data set."""
    check_sequence_options(name, options)
    try:
        return _load(name, root=root, options=options, seed=seed, cache_dir=cache_dir, download=download, path=path)
    except DataError as error:  # "num_valid must be ..." from the loader reads "data.options.num_valid must be ..."
        message = str(error)
        if message.split(" ", 1)[0] in sequence_option_names(name):
            raise DataError(f"data.options.{message}") from None
        raise


def _load(
    name: str,
    *,
    root: str,
    options: Mapping[str, Any],
    seed: int,
    cache_dir: str | None,
    download: bool,
    path: str | None,
) -> Any:
    if name == "healing_mnist":
        from pyro_flowvae.data.healing_mnist import load_healing_mnist

        return load_healing_mnist(root, seed=seed, cache_dir=cache_dir, download=download, **options)
    if name == "airline":
        from pyro_flowvae.data.airline import airline_windows, load_airline

        months, passengers = load_airline(path)
        return airline_windows(passengers, months=months, **options)
    raise ConfigError(f"unknown sequence data set {name!r}; choose one of: {', '.join(SEQUENCE_LOADERS)}")


def check_sequence_splits(data: Any, likelihood: str) -> None:
    """Check every split of sequence data for the likelihood: observed values must be finite, and binary
    under a Bernoulli likelihood, in [0, 1] under a continuous Bernoulli (missing entries are not read)."""
    from pyro_flowvae.errors import DataError

    for split in ("train", "valid", "test"):
        seq = getattr(data, split)
        observed = seq.x[seq.mask.bool()]
        if not bool(observed.isfinite().all()):
            raise DataError(
                f"the {split} split of {data.name!r} has NaN or infinite observed values; mark missing entries "
                "with mask = 0 (their value is then ignored) instead of NaN"
            )
        if likelihood == "bernoulli" and not bool(((observed == 0) | (observed == 1)).all()):
            raise DataError(
                f"model.likelihood = 'bernoulli' needs binary observations, but the {split} split of {data.name!r} "
                "has other values; binarize the frames or use model.likelihood = 'continuous_bernoulli' (values in "
                "[0, 1]) or 'gaussian'"
            )
        if likelihood == "continuous_bernoulli" and not bool(((observed >= 0) & (observed <= 1)).all()):
            raise DataError(
                f"model.likelihood = 'continuous_bernoulli' needs values in [0, 1], but the {split} split of "
                f"{data.name!r} has others; rescale the data or use model.likelihood = 'gaussian'"
            )
