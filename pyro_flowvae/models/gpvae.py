"""The GP-VAE's generative model as a Pyro program: a latent trajectory over time, decoded frame by frame."""

from __future__ import annotations

import pyro
from torch import Tensor, nn

from pyro_flowvae.guides.sequence import check_sequence_batch
from pyro_flowvae.likelihoods import Likelihood

__all__ = ["SequenceVAEModel"]


class SequenceVAEModel(nn.Module):
    r"""The model of a VAE over sequences with missing values (Fortuin et al. 2020):

    .. math::
        z_{l,1:T} \sim p(z_{l,1:T} \mid t_{1:T}) \quad (l = 1..L), \qquad
        p(x \mid z) = \prod_{t, d} p\big(x_{td} \mid f_\theta(z_{:,t})_d\big)^{m_{td}},

    where the prior is a Gaussian process over the time stamps per latent channel
    (:class:`~pyro_flowvae.priors.GPPrior`, the GP-VAE) or N(0, I) (the frame-wise VAE), :math:`f_\theta`
    decodes each frame's latent vector, and the mask m (1 = observed) removes missing entries from the
    likelihood: they add nothing to the ELBO and receive no gradient. Calling it runs::

        with pyro.plate("data", B):
            z = pyro.sample("z", prior(times))                                     # (B, L, T)
            pyro.sample("x", likelihood(decoder(z^T)).mask(mask).to_event(2), obs=x)  # (B, T, D)

    Everything broadcasts over leading sample dimensions (vectorized particles, importance sampling).

    [1] Vincent Fortuin, Dmitry Baranchuk, Gunnar Rätsch, Stephan Mandt. GP-VAE: Deep Probabilistic Time
    Series Imputation. AISTATS 2020. [arXiv:1907.04155]
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

    def forward(self, x: Tensor, mask: Tensor, times: Tensor) -> Tensor:
        """Score sequences x (B, T, D) observed where ``mask`` is 1; returns z of shape (..., B, L, T)."""
        check_sequence_batch(x, mask, times)
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        pyro.module("prior", self.prior)
        with pyro.plate(self.data_plate, x.shape[0], dim=-1):
            z = pyro.sample(self.latent_site, self.prior(times))
            observed = self.likelihood.elementwise(self.decode(z)).mask(mask.bool()).to_event(2)
            pyro.sample("x", observed, obs=x)
        return z

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's raw parameters for each frame, (..., B, T, D), from z of shape (..., B, L, T)."""
        return self.decoder(z.transpose(-1, -2))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x | z] per frame, (..., B, T, D)."""
        return self.likelihood.mean(self.decode(z))
