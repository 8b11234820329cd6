"""The VAE's generative model as a Pyro program: z ~ p(z), x | z ~ p(x | decoder(z))."""

from __future__ import annotations

import pyro
from torch import Tensor, nn

from pyro_flowvae.likelihoods import Likelihood

__all__ = ["VAEModel"]


class VAEModel(nn.Module):
    r"""The model :math:`p_\theta(x, z) = p(z)\, p_\theta(x \mid z)` of Kingma & Welling (2014).

    Calling it runs the Pyro program::

        with pyro.plate("data", B):
            z = pyro.sample("z", prior)                       # (B, L)
            pyro.sample("x", likelihood(decoder(z)), obs=x)   # (B, D)

    Everything broadcasts over extra leading dimensions, so it works under
    ``Trace_ELBO(num_particles=k, vectorize_particles=True)`` and vectorized importance sampling.
    The decoder's parameters go to Pyro's param store under ``"decoder"``; train it with any SVI loop::

        svi = SVI(vae_model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
        loss = svi.step(x)

    [1] Diederik P. Kingma, Max Welling. Auto-Encoding Variational Bayes. ICLR 2014. [arXiv:1312.6114]
    """

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: Likelihood,
        prior: nn.Module,
        latent_site: str = "z",
        data_plate: str = "data",
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior
        self.latent_site = latent_site
        self.data_plate = data_plate

    def forward(self, x: Tensor) -> Tensor:
        """Score data x of shape (B, D); returns the latent sample z of shape (..., B, L)."""
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1):
            z = pyro.sample(self.latent_site, self.prior((x.shape[0],)))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x | z] for latents z of shape (..., L)."""
        return self.likelihood.mean(self.decoder(z))

    def sample_prior(self, num: int) -> Tensor:
        """``num`` draws of z from the prior, shape (num, L)."""
        return self.prior((num,)).sample()
