"""Guides q(z | x) written as Pyro programs."""

from pyro_flowvae.guides.amortized import AmortizedFlowGuide, ConstantContext
from pyro_flowvae.guides.banded import BandedPrecisionNormal
from pyro_flowvae.guides.sequence import COVARIANCES, GPVAEGuide, SequenceEncoder, check_sequence_batch

__all__ = [
    "AmortizedFlowGuide",
    "BandedPrecisionNormal",
    "COVARIANCES",
    "ConstantContext",
    "GPVAEGuide",
    "SequenceEncoder",
    "check_sequence_batch",
]
