"""The VAE's generative model as a Pyro program, z ~ p(z), x | z ~ p(x | decoder(z)), and the VAE that holds it with
its flow guide."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro
from torch import Tensor, nn

from pyro_flowvae.models.likelihoods import Likelihood, build_likelihood
from pyro_flowvae.models.nets import Decoder, Encoder, count_parameters

if TYPE_CHECKING:
    from pyro_flowvae.config import Config
    from pyro_flowvae.guides import AmortizedFlowGuide

__all__ = ["VAEModel", "FlowVAE"]


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


class FlowVAE(nn.Module):
    """Holds ``model`` (a :class:`VAEModel`) and ``guide`` (an :class:`AmortizedFlowGuide`), both plain Pyro
    callables: ``SVI(vae.model, vae.guide, optim, Trace_ELBO())`` trains them. Its ``state_dict`` is the
    whole trainable state."""

    def __init__(self, model: VAEModel, guide: AmortizedFlowGuide) -> None:
        super().__init__()
        self.model = model
        self.guide = guide

    @classmethod
    def from_config(cls, config: Config, data_dim: int) -> FlowVAE:
        """Encoder x -> hidden -> h, decoder z -> reversed hidden -> x, prior, likelihood and flow guide."""
        from pyro_flowvae.guides import AmortizedFlowGuide  # here: the guides import this package's networks
        from pyro_flowvae.priors import build_prior

        m, g = config.model, config.guide
        encoder = Encoder(data_dim, m.hidden, m.activation)
        decoder = Decoder(m.latent_dim, list(reversed(m.hidden)), data_dim, m.activation)
        model = VAEModel(decoder, build_likelihood(m.likelihood, data_dim), build_prior(m.prior, m.latent_dim))
        guide = AmortizedFlowGuide(
            encoder,
            m.latent_dim,
            flow=g.flow,
            num_flows=g.num_flows if g.flow != "mean_field" else 0,
            flow_options=g.options.get(g.flow, {}),
            min_scale=g.min_scale,
            standardize=g.standardize,
        )
        return cls(model, guide)

    @property
    def num_params(self) -> int:
        return count_parameters(self)

    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z] at the guide's draw of z for each row of x."""
        z = self.guide.get_posterior(x).sample()
        return self.model.decode_mean(z)

    def generate(self, num: int) -> Tensor:
        """E[x | z] for ``num`` draws of z from the prior."""
        return self.model.decode_mean(self.model.sample_prior(num))
