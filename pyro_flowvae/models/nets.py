"""Encoder and decoder networks: plain multilayer perceptrons."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pyro_flowvae.errors import ConfigError

__all__ = ["ACTIVATIONS", "mlp", "Encoder", "Decoder", "count_parameters"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def mlp(sizes: Sequence[int], activation: str = "relu", final_activation: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between them."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ConfigError(f"an MLP needs at least two positive layer sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> h: the hidden state from which the guide's base Gaussian and flow parameters are read."""

    def __init__(self, data_dim: int, hidden: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        self.data_dim = data_dim
        self.context_dim = hidden[-1]
        self.net = mlp([data_dim, *hidden], activation, final_activation=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z -> the likelihood's raw parameters (logits or means), one per data dimension."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], data_dim: int, activation: str = "relu") -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        self.net = mlp([latent_dim, *hidden, data_dim], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
