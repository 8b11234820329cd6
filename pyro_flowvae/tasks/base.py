"""What a kind of data brings to a run: a task loads its data, builds its model, scores it and draws it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from pyro_flowvae.errors import ConfigError

if TYPE_CHECKING:
    from pyro_flowvae.config import Config
    from pyro_flowvae.infer.distributed import DistInfo

__all__ = ["Task", "TASKS", "register_task", "task_for", "build_vae"]


class Task(ABC):
    """One workflow (images, sequences, ...), chosen by ``data.name`` through :data:`TASKS`.

    A task owns everything that depends on the kind of data: which config keys apply (:meth:`check_config`),
    loading and checking the data, the model and guide it builds, its metrics for ``metrics.json``, the
    extra columns ``compare`` shows (:attr:`metric_keys`) and the plots of its run directory. The training
    loop (:class:`~pyro_flowvae.infer.trainer.Trainer`) takes what the task built and knows none of it.
    """

    #: the task's name, for messages
    name: ClassVar[str] = ""
    #: the ``data.name`` values this task serves
    datasets: ClassVar[tuple[str, ...]] = ()
    #: metrics of metrics.json that ``compare`` tabulates beside the ELBO and log p(x)
    metric_keys: ClassVar[tuple[str, ...]] = ()
    #: dotted config keys that only other tasks read: a value other than the default is an error that names them
    foreign_keys: ClassVar[tuple[str, ...]] = ()

    def check_config(self, config: Config) -> None:
        """Raise :class:`~pyro_flowvae.errors.ConfigError` for a key set that this task would ignore."""
        from pyro_flowvae.config import Config, flatten_config

        flat, defaults = flatten_config(config), flatten_config(Config())
        for key in self.foreign_keys:
            unset = defaults.get(key)
            if flat.get(key) != unset:
                raise ConfigError(
                    f"{key} = {flat.get(key)!r} does not apply to data.name = {config.data.name!r} ({self.name} "
                    f"data), which would ignore it; remove it from the config (its default is {unset!r})"
                )

    @abstractmethod
    def load_data(self, config: Config) -> Any:
        """The train, valid and test splits ``config.data`` names."""

    @abstractmethod
    def check_data(self, config: Config, data: Any) -> None:
        """Raise :class:`~pyro_flowvae.errors.DataError` when the data do not suit ``config.model``."""

    @abstractmethod
    def meta(self, data: Any) -> dict[str, Any]:
        """The data's dimension and shape, stored in every checkpoint and handed to :meth:`build_model`."""

    @abstractmethod
    def build_model(self, config: Config, meta: dict[str, Any]) -> nn.Module:
        """The model and guide (a module with Pyro callables ``.model`` and ``.guide``) for data of ``meta``."""

    def dynamic_binarize(self, data: Any) -> bool:
        """Whether the training batches are redrawn as Bernoulli(x) at every step."""
        return False

    @abstractmethod
    def evaluate(
        self, vae: nn.Module, data: Any, config: Config, dist_info: DistInfo, progress: bool = False
    ) -> dict[str, Any]:
        """The test metrics of ``metrics.json`` (the same on every rank)."""

    @abstractmethod
    def write_plots(self, run_dir: Path, vae: nn.Module, data: Any, config: Config, metrics: dict[str, Any]) -> None:
        """The task's plots in the run directory (the ELBO curve is every task's and drawn by the run)."""


#: data.name -> the task that serves it
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Serve every ``data.name`` of ``task.datasets`` with ``task``."""
    for name in task.datasets:
        if name in TASKS and TASKS[name] is not task:
            raise ValueError(f"data.name {name!r} is served by the {TASKS[name].name} task already")
        TASKS[name] = task
    return task


def task_for(data_name: str) -> Task:
    """The task of ``data.name``."""
    if data_name not in TASKS:
        raise ConfigError(f"data.name = {data_name!r} has no task; choose one of: {', '.join(TASKS)}")
    return TASKS[data_name]


def build_vae(config: Config, data_dim: int, seq_len: int | None = None) -> nn.Module:
    """The model and guide a config describes, built by its task (``config.task``): a
    :class:`~pyro_flowvae.models.FlowVAE` for images, a :class:`~pyro_flowvae.models.GPVAE` for sequence data of
    length ``seq_len``."""
    return config.task.build_model(config, {"data_dim": data_dim, "seq_len": seq_len})
