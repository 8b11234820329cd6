"""The registry of flow families: name -> builder, and :func:`build_flow` that checks names and options."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pyro_flowvae.errors import ConfigError
from pyro_flowvae.flows.base import ConditionalFlow, MeanField

__all__ = ["FLOWS", "register_flow", "flow_names", "flow_options", "check_flow_options", "build_flow"]

#: Registry name -> builder ``(latent_dim, context_dim, num_flows, **options) -> ConditionalFlow``.
FLOWS: dict[str, Callable[..., ConditionalFlow]] = {}

_SIZES = ("latent_dim", "context_dim", "num_flows")
Builder = TypeVar("Builder", bound=Callable[..., ConditionalFlow])


def register_flow(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder (a :class:`ConditionalFlow` subclass or a function) to :data:`FLOWS`.

    The builder takes ``(latent_dim, context_dim, num_flows, **options)``; its keyword parameters besides the
    three sizes are the family's options (``guide.options`` in the config).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a flow name must be a non-empty string, got {name!r}")

    def decorator(builder: Builder) -> Builder:
        if name in FLOWS:
            raise ValueError(f"flow {name!r} is already registered (by {FLOWS[name]!r})")
        FLOWS[name] = builder
        return builder

    return decorator


def flow_names() -> list[str]:
    """The registered flow names, sorted."""
    return sorted(FLOWS)


def _lookup(name: str) -> Callable[..., ConditionalFlow]:
    if name not in FLOWS:
        raise ConfigError(f"unknown flow {name!r}; choose guide.flow from: {', '.join(flow_names())}")
    return FLOWS[name]


def flow_options(name: str) -> dict[str, Any]:
    """The options a family accepts with their defaults (empty if it takes none or accepts ``**kwargs``)."""
    parameters = inspect.signature(_lookup(name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name not in _SIZES and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_flow_options(name: str, options: dict[str, Any]) -> None:
    """Raise :class:`~pyro_flowvae.errors.ConfigError` for an unknown flow name or an option it does not take."""
    builder = _lookup(name)
    if any(p.kind == p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
        return
    known = flow_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepts = (
            f"{name} accepts: {', '.join(f'guide.options.{name}.{k}' for k in sorted(known))}"
            if known
            else f"{name} takes no options"
        )
        close = [m for k in unknown for m in difflib.get_close_matches(k, known, n=1)]
        hint = f" (did you mean guide.options.{name}.{close[0]}?)" if close else ""
        keys = ", ".join(f"guide.options.{name}.{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {keys} for flow {name!r}{hint}; {accepts}")


def build_flow(name: str, latent_dim: int, context_dim: int, num_flows: int, **options: Any) -> ConditionalFlow:
    """Build the registered flow family ``name`` for q(z | x) with L = ``latent_dim``, H = ``context_dim``.

    Raises :class:`~pyro_flowvae.errors.ConfigError` for an unknown name, an option the family does not
    take, or invalid sizes.
    """
    check_flow_options(name, options)
    flow = FLOWS[name](latent_dim, context_dim, num_flows, **options)
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"the builder of flow {name!r} returned {type(flow).__name__}, not a ConditionalFlow")
    return flow


register_flow("mean_field")(MeanField)
