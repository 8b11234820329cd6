"""The image task: a VAE with a flow guide on (N, D) images, scored by importance-sampled log p(x)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pyro_flowvae.data import DATASETS, check_data, load_data
from pyro_flowvae.errors import ConfigError
from pyro_flowvae.tasks.base import Task, register_task

if TYPE_CHECKING:
    from pyro_flowvae.config import Config
    from pyro_flowvae.infer.distributed import DistInfo

__all__ = ["ImageTask"]


class ImageTask(Task):
    """MNIST, Fashion-MNIST, binarized MNIST or a user's array: :class:`~pyro_flowvae.models.vae.FlowVAE`, the test
    ELBO and log p(x) with Pareto k, KL per latent dimension and active units; samples and reconstructions."""

    name = "image"
    datasets = DATASETS
    metric_keys = ("active_units",)
    foreign_keys = ("guide.covariance", "eval.impute_samples", "eval.level", "gp.kernel", "gp.lengthscale",
                    "gp.variance", "gp.period", "gp.learn", "gp.jitter", "model.decoder_hidden",
                    "model.frame_encoder", "model.conv_channels", "model.time_window")  # fmt: skip

    def check_config(self, config: Config) -> None:
        from pyro_flowvae.data.series import SEQUENCE_LOADERS

        sequences = ", ".join(SEQUENCE_LOADERS)
        if config.model.prior == "gp":
            raise ConfigError(
                f"model.prior = 'gp' is a prior over time and needs sequence data (data.name one of: {sequences}); "
                f"data.name = {config.data.name!r} holds single images, use model.prior = 'standard_normal'"
            )
        if config.data.options:
            raise ConfigError(
                f"data.options are read by the sequence data sets ({sequences}) only; remove [data.options] for "
                f"data.name = {config.data.name!r}"
            )
        super().check_config(config)

    def load_data(self, config: Config) -> Any:
        d = config.data
        return load_data(
            d.name,
            root=d.root,
            path=d.path,
            limit=d.limit,
            valid_size=d.valid_size,
            binarize=d.binarize,
            download=d.download,
            seed=config.train.seed,
            cache_dir=d.cache_dir,
        )

    def check_data(self, config: Config, data: Any) -> None:
        likelihood = config.model.likelihood
        check_data(data.train, likelihood=likelihood, split="train", binarize_dynamic=self.dynamic_binarize(data))
        check_data(data.valid, likelihood=likelihood, data_dim=data.data_dim, split="valid")
        check_data(data.test, likelihood=likelihood, data_dim=data.data_dim, split="test")

    def meta(self, data: Any) -> dict[str, Any]:
        return {"data_dim": data.data_dim, "image_shape": data.image_shape}

    def build_model(self, config: Config, meta: dict[str, Any]) -> nn.Module:
        from pyro_flowvae.models.vae import FlowVAE

        return FlowVAE.from_config(config, meta["data_dim"])

    def dynamic_binarize(self, data: Any) -> bool:
        return data.binarize == "dynamic"

    def evaluate(
        self, vae: nn.Module, data: Any, config: Config, dist_info: DistInfo, progress: bool = False
    ) -> dict[str, Any]:
        from pyro_flowvae.evaluation.images import evaluate

        device = next(vae.parameters()).device
        return evaluate(vae, data.test.to(device), config.eval, dist_info, seed=config.train.seed, progress=progress)

    @torch.no_grad()
    def write_plots(self, run_dir: Path, vae: nn.Module, data: Any, config: Config, metrics: dict[str, Any]) -> None:
        from pyro_flowvae.plots.images import interleave, plot_flow_health, plot_kl_per_dim, run_title, save_image_grid

        plot_kl_per_dim(
            metrics["kl_per_dim"],
            metrics["activity_per_dim"],
            run_dir / "kl_per_dim.png",
            title=f"{run_title(config)}: {metrics['active_units']} active units",
        )
        health = metrics.get("flow_health")
        if health is not None and health["layers"]:
            plot_flow_health(health, run_dir / "flow_health.png", title=run_title(config))
        if data.image_shape is None:
            return
        device = next(vae.parameters()).device
        torch.manual_seed(config.train.seed)
        save_image_grid(vae.generate(64), data.image_shape, run_dir / "samples.png", nrow=8)
        x = data.test[:32].to(device)
        save_image_grid(interleave(x, vae.reconstruct(x)), data.image_shape, run_dir / "reconstructions.png", nrow=8)

    def sample(self, vae: nn.Module, num: int, meta: dict[str, Any]) -> Tensor:
        return vae.generate(num)


IMAGES = register_task(ImageTask())
