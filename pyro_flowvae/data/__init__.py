"""Data: MNIST, Fashion-MNIST, binarized MNIST and user arrays as (N, D) tensors; Healing MNIST and the airline
series as sequences with masks; minibatches and checks.

>>> data = load_data("mnist", root="data").to("cuda")  # doctest: +SKIP
>>> dynamic = data.binarize == "dynamic"
>>> for x in iterate_minibatches(data.train, 100, dynamic_binarize=dynamic):  # doctest: +SKIP
...     ...
"""

from pyro_flowvae.data.airline import AIRLINE_TRANSFORMS, airline_windows, load_airline, to_passengers
from pyro_flowvae.data.batching import iterate_minibatches, num_minibatches
from pyro_flowvae.data.checks import check_data, check_finite
from pyro_flowvae.data.healing_mnist import MISSING_MODES, load_healing_mnist, make_healing_mnist, missingness_stats
from pyro_flowvae.data.load import DATASETS, DEFAULT_BINARIZE, load_data
from pyro_flowvae.data.paths import default_cache_dir
from pyro_flowvae.data.sequences import SequenceData, SequenceSplits
from pyro_flowvae.data.splits import BINARIZE_MODES, DataSplits

__all__ = [
    "AIRLINE_TRANSFORMS",
    "MISSING_MODES",
    "SequenceData",
    "SequenceSplits",
    "airline_windows",
    "load_airline",
    "load_healing_mnist",
    "make_healing_mnist",
    "missingness_stats",
    "to_passengers",
    "BINARIZE_MODES",
    "DATASETS",
    "DEFAULT_BINARIZE",
    "DataSplits",
    "check_data",
    "check_finite",
    "default_cache_dir",
    "iterate_minibatches",
    "load_data",
    "num_minibatches",
]
