"""Tasks: what each kind of data brings to a run (its data, model, metrics and plots), chosen by ``data.name``."""

from pyro_flowvae.tasks.base import TASKS, Task, build_vae, register_task, task_for
from pyro_flowvae.tasks.images import ImageTask
from pyro_flowvae.tasks.sequences import SequenceTask

__all__ = ["TASKS", "Task", "ImageTask", "SequenceTask", "build_vae", "register_task", "task_for"]
