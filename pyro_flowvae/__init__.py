"""pyro-flowvae: VAEs whose guides are normalizing flows, and GP-VAEs over time, written as plain Pyro programs.

>>> from pyro_flowvae import load_config, train
>>> result = train(load_config("examples/configs/mnist_iaf.toml", ["train.epochs=1"]), out="runs/iaf")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from pyro_flowvae.config import Config, load_config
from pyro_flowvae.errors import CheckpointError, ConfigError, DataError, FlowVAEError, TrainingDivergedError
from pyro_flowvae.evaluation.importance import estimate_log_likelihood, log_importance_weights
from pyro_flowvae.flows import FLOWS, build_flow, register_flow
from pyro_flowvae.guides import AmortizedFlowGuide, BandedPrecisionNormal, ConstantContext, GPVAEGuide
from pyro_flowvae.infer.annealing import ScaleLatents
from pyro_flowvae.models import GPVAE, FlowVAE, SequenceVAEModel, VAEModel
from pyro_flowvae.priors import GPPrior
from pyro_flowvae.runs import compare, evaluate_run, sample_run, train
from pyro_flowvae.tasks import build_vae

__all__ = [
    "__version__",
    "Config",
    "load_config",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FlowVAEError",
    "TrainingDivergedError",
    "FLOWS",
    "build_flow",
    "register_flow",
    "AmortizedFlowGuide",
    "ConstantContext",
    "ScaleLatents",
    "estimate_log_likelihood",
    "log_importance_weights",
    "VAEModel",
    "SequenceVAEModel",
    "GPPrior",
    "GPVAEGuide",
    "BandedPrecisionNormal",
    "FlowVAE",
    "GPVAE",
    "build_vae",
    "train",
    "evaluate_run",
    "sample_run",
    "compare",
]
