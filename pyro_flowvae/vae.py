"""A model and its guide built together from a config: the unit that is trained, saved and scored."""

from __future__ import annotations

from torch import Tensor, nn

from pyro_flowvae.config import Config
from pyro_flowvae.guides import AmortizedFlowGuide
from pyro_flowvae.likelihoods import build_likelihood
from pyro_flowvae.models import VAEModel
from pyro_flowvae.nets import Decoder, Encoder, count_parameters
from pyro_flowvae.priors import build_prior

__all__ = ["FlowVAE", "build_vae"]


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


def build_vae(config: Config, data_dim: int, seq_len: int | None = None) -> nn.Module:
    """The model and guide a config describes, built by its task (``config.task``): a :class:`FlowVAE` for
    images, a :class:`~pyro_flowvae.gpvae.GPVAE` for sequence data of length ``seq_len``."""
    return config.task.build_model(config, {"data_dim": data_dim, "seq_len": seq_len})
