"""Normalizing flows for amortized guides q(z | x), conditioned on the encoder's hidden state h."""

from __future__ import annotations

from pyro_flowvae.flows.base import AutoregressiveFlow, ConditionalFlow, MeanField
from pyro_flowvae.flows.householder import HouseholderFlow
from pyro_flowvae.flows.iaf import IAFFlow
from pyro_flowvae.flows.planar import PlanarFlow
from pyro_flowvae.flows.radial import RadialFlow
from pyro_flowvae.flows.registry import (
    FLOWS,
    build_flow,
    check_flow_options,
    flow_names,
    flow_options,
    register_flow,
)
from pyro_flowvae.flows.spline import SplineFlow
from pyro_flowvae.flows.sylvester import (
    HouseholderSylvesterFlow,
    OrthogonalSylvesterFlow,
    SylvesterFlow,
    TriangularSylvesterFlow,
)

__all__ = [
    "FLOWS",
    "AutoregressiveFlow",
    "ConditionalFlow",
    "HouseholderFlow",
    "IAFFlow",
    "MeanField",
    "PlanarFlow",
    "RadialFlow",
    "SplineFlow",
    "SylvesterFlow",
    "OrthogonalSylvesterFlow",
    "HouseholderSylvesterFlow",
    "TriangularSylvesterFlow",
    "build_flow",
    "check_flow_options",
    "flow_names",
    "flow_options",
    "register_flow",
]
