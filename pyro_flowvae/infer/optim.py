"""The optimizers and learning-rate schedules a config chooses: ``torch.optim`` over the trained module's parameters.

The training loop steps a :class:`torch.optim.Optimizer` on ``module.parameters()`` after clipping the global
gradient norm with :func:`torch.nn.utils.clip_grad_norm_`, the way a plain PyTorch loop does (and Pyro's own
Lightning example). Users who write their own ``svi.step`` loop keep ``pyro.optim``; both update the same
parameters, since every model and guide here registers its ``nn.Module`` with ``pyro.module``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyro_flowvae.errors import ConfigError

if TYPE_CHECKING:
    from pyro_flowvae.config import TrainConfig

__all__ = [
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "build_optimizer",
    "build_scheduler",
    "cosine_factor",
    "load_scheduler_state",
    "step_scheduler",
]

#: ``train.optimizer``: Adam (Kingma & Ba 2015) and Adamax, its infinity-norm variant, which the flow literature
#: trains with (Kingma et al. 2016; van den Berg et al. 2018).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}

#: ``train.lr_schedule``, stepped once per epoch: constant; ``StepLR`` (times ``train.lr_gamma`` every
#: ``train.lr_step_epochs``); cosine annealing from ``train.lr`` to ``train.lr_min`` over ``train.epochs``;
#: ``ReduceLROnPlateau`` on the validation ELBO (times ``train.lr_gamma`` after ``train.lr_patience`` epochs
#: without a better one, down to ``train.lr_min``).
LR_SCHEDULES = ("constant", "step", "cosine", "plateau")


def build_optimizer(
    params: Iterable[nn.Parameter], train: TrainConfig, flow_params: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """``train.optimizer`` at ``train.lr`` over ``params``; those of them in ``flow_params`` (the guide's flow) in
    a second parameter group at ``train.lr * train.flow_lr_scale`` when that scale is not 1.

    Why a scale: a flow's parameters are read from the encoder's hidden state by linear heads of fan-in H (300
    on the likelihood benchmark). Adam moves every weight by about lr per step whatever its gradient's size,
    so a head's outputs, sums over H weights, move about H times faster than any one weight, and a flow
    trained at the encoder's rate wanders from the identity faster than the data can steer it."""
    if train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer = {train.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    params = list(params)
    if not params:
        raise ConfigError("the model and guide have no parameters to train; nothing for train.optimizer to update")
    scale = getattr(train, "flow_lr_scale", 1.0)
    flow_ids = {id(p) for p in flow_params}
    if scale == 1.0 or not flow_ids:
        return OPTIMIZERS[train.optimizer](params, lr=train.lr)
    groups = [
        {"params": [p for p in params if id(p) not in flow_ids]},
        {"params": [p for p in params if id(p) in flow_ids], "lr": train.lr * scale},
    ]
    return OPTIMIZERS[train.optimizer]([g for g in groups if g["params"]], lr=train.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> Any:
    """The ``torch.optim.lr_scheduler`` of ``train.lr_schedule`` (None for a constant rate)."""
    schedule = train.lr_schedule
    if schedule == "constant":
        return None
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step_epochs, gamma=train.lr_gamma)
    if schedule == "cosine":
        # the closed form of CosineAnnealingLR, as a LambdaLR of the epoch: its state is the epoch alone, so a
        # run resumed with the same train.epochs follows the same rates as an uninterrupted one
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(train.lr, train.lr_min, train.epochs))
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=train.lr_gamma, patience=train.lr_patience, min_lr=train.lr_min
        )
    raise ConfigError(f"train.lr_schedule = {schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")


def cosine_factor(lr: float, lr_min: float, epochs: int) -> Callable[[int], float]:
    r"""The factor of ``lr`` after ``e`` epochs of cosine annealing (Loshchilov & Hutter, SGDR, ICLR 2017):
    :math:`\eta_e = \eta_{\min} + (\eta - \eta_{\min}) (1 + \cos(\pi \min(e, E) / E)) / 2`."""

    def factor(epoch: int) -> float:
        progress = min(epoch, epochs) / epochs
        return (lr_min + (lr - lr_min) * (1 + math.cos(math.pi * progress)) / 2) / lr

    return factor


def load_scheduler_state(scheduler: Any, state: dict[str, Any]) -> None:
    """Restore a schedule from a checkpoint. The cosine schedule then sets the rate of the current epoch from the
    current ``train.epochs``: the checkpoint's optimizer holds the rate its own ``train.epochs`` gave (a run of
    one epoch ends at ``train.lr_min``), so extending a run continues the curve of the new length."""
    scheduler.load_state_dict(state)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)


def step_scheduler(scheduler: Any, valid_elbo: float) -> None:
    """Advance a schedule by one epoch; ``ReduceLROnPlateau`` reads the epoch's validation ELBO."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_elbo)
    else:
        scheduler.step()
