"""The sequence task: a GP-VAE (or frame-wise VAE) on sequences with missing values, scored by imputation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from pyro_flowvae.data.series import SEQUENCE_LOADERS, check_sequence_options, check_sequence_splits
from pyro_flowvae.tasks.base import Task, register_task

if TYPE_CHECKING:
    from pyro_flowvae.config import Config
    from pyro_flowvae.infer.distributed import DistInfo

__all__ = ["SequenceTask"]


class SequenceTask(Task):
    """Healing MNIST or the airline series: :class:`~pyro_flowvae.models.gpvae.GPVAE`; the test ELBO and log p(x_obs),
    imputation NLL and MSE against mean and forward imputation, the AUROC of the latent means, or a forecast
    with its interval; imputation strips or the forecast plot."""

    name = "sequence"
    datasets = tuple(SEQUENCE_LOADERS)
    metric_keys = ("test_nll_missing", "test_mse_missing", "auroc", "rmse", "mape", "coverage90")
    foreign_keys = ("data.limit", "data.valid_size", "data.binarize")

    def check_config(self, config: Config) -> None:
        check_sequence_options(config.data.name, config.data.options)
        super().check_config(config)

    def load_data(self, config: Config) -> Any:
        from pyro_flowvae.data.series import load_sequence_data

        d = config.data
        return load_sequence_data(
            d.name,
            root=d.root,
            options=d.options,
            seed=config.train.seed,
            cache_dir=d.cache_dir,
            download=d.download,
            path=d.path,
        )

    def check_data(self, config: Config, data: Any) -> None:
        check_sequence_splits(data, config.model.likelihood)

    def meta(self, data: Any) -> dict[str, Any]:
        return {"data_dim": data.data_dim, "seq_len": data.seq_len, "image_shape": data.image_shape}

    def build_model(self, config: Config, meta: dict[str, Any]) -> nn.Module:
        from pyro_flowvae.models.gpvae import GPVAE

        return GPVAE.from_config(config, meta["data_dim"], meta["seq_len"], meta.get("image_shape"))

    def evaluate(
        self, vae: nn.Module, data: Any, config: Config, dist_info: DistInfo, progress: bool = False
    ) -> dict[str, Any]:
        """Every rank scores the whole test set with the same seeded draws (the sequence test sets are small)."""
        from pyro_flowvae.evaluation.sequences import evaluate_sequences
        from pyro_flowvae.infer.distributed import seeded, step_seed

        device = next(vae.parameters()).device
        with seeded(step_seed(config.train.seed, 0, 0, "eval"), device):
            return evaluate_sequences(vae, data.to(device), config.eval, progress=progress and dist_info.is_main)

    def write_plots(self, run_dir: Path, vae: nn.Module, data: Any, config: Config, metrics: dict[str, Any]) -> None:
        from pyro_flowvae.plots.sequences import write_sequence_figures

        write_sequence_figures(run_dir, vae, data, config, metrics)


SEQUENCES = register_task(SequenceTask())
