"""Factor analysis, a latent-variable model whose log p(x) and posterior are known exactly."""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms.planar import ConditionedPlanar


@dataclass
class FactorAnalysis:
    r"""z ~ N(0, I_L), x | z ~ N(W z + b, diag(psi)), in float64.

    Marginal: x ~ N(b, W W^T + diag(psi)). Posterior: z | x ~ N(mu(x), Sigma) with
    Sigma = (I + W^T Psi^{-1} W)^{-1} and mu(x) = Sigma W^T Psi^{-1} (x - b).
    """

    W: torch.Tensor
    b: torch.Tensor
    psi: torch.Tensor

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.psi.sqrt()).to_event(1), obs=x)

    def log_px(self, x):
        cov = self.W @ self.W.T + torch.diag(self.psi)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self, x):
        wt_psi_inv = self.W.T / self.psi
        sigma = torch.linalg.inv(torch.eye(self.latent_dim, dtype=x.dtype) + wt_psi_inv @ self.W)
        mu = (x - self.b) @ (sigma @ wt_psi_inv).T
        return mu, sigma

    def exact_guide(self, x):
        mu, sigma = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mu, scale_tril=torch.linalg.cholesky(sigma)))

    def mean_field_guide(self, scale_factor: float):
        """Diagonal Normal with the posterior's marginal means and ``scale_factor`` x its marginal sds."""

        def guide(x):
            mu, sigma = self.posterior(x)
            scale = scale_factor * sigma.diagonal().sqrt()
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(mu, scale).to_event(1))

        return guide

    def planar_guide(self, scale_factor: float = 1.3):
        """Base N(mu(x), scale_factor * marginal sd) pushed through one planar flow per datapoint.

        The flow's parameters are a fixed function of x_b alone, shapes (B, 1), (B, L), (B, L).
        Planar flows have no inverse: z can be scored only as the flow's last cached output.
        """
        gen = torch.Generator().manual_seed(1)
        a_u = 0.1 * torch.randn(self.W.shape[0], self.latent_dim, generator=gen, dtype=self.W.dtype)
        a_w = 0.3 * torch.randn(self.W.shape[0], self.latent_dim, generator=gen, dtype=self.W.dtype)

        def guide(x):
            mu, sigma = self.posterior(x)
            centred = x - self.b
            bias = 0.1 * centred[:, :1]
            u = torch.tanh(centred @ a_u)
            w = torch.tanh(centred @ a_w)
            base = dist.Normal(mu, scale_factor * sigma.diagonal().sqrt()).to_event(1)
            q = dist.TransformedDistribution(base, [ConditionedPlanar((bias, u, w))])
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", q)

        return guide

    def sample_x(self, n: int):
        z = torch.randn(n, self.latent_dim, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.psi.sqrt() * torch.randn(n, self.W.shape[0], dtype=self.W.dtype)


@pytest.fixture
def fa():
    gen = torch.Generator().manual_seed(0)
    L, D = 2, 5
    W = torch.randn(D, L, generator=gen, dtype=torch.float64)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    psi = 0.2 + torch.rand(D, generator=gen, dtype=torch.float64)
    return FactorAnalysis(W, b, psi)
