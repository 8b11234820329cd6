"""Guides q(z | x) written as Pyro programs."""

from pyro_flowvae.guides.amortized import AmortizedFlowGuide, ConstantContext

__all__ = ["AmortizedFlowGuide", "ConstantContext"]
