"""Output likelihoods p(x | z) of a backbone's decoder (`--likelihood`), one class per kind.

Images are 8-bit, scaled to [-1, 1] by `x / 127.5 - 1`, so the 256 values sit on bins of width
`BIN_WIDTH = 2 / 255` centred at the data values. A decoder outputs the likelihood's *parameters*
`[B, P, H, W]` (`param_channels(C)` = P); every likelihood offers

- `nll(x, params, log_std)`: -log p(x | z) in nats `[B]`, the term the ELBO trains and every score uses;
- `discrete_nll(x, params, log_std)`: -log P(the 8-bit bin of x) in nats `[B]`, the common discrete scale
  on which likelihoods are compared (bits/dim = nats / (D ln 2), D = C H W);
- `mean(params)`: the image `[B, C, H, W]` shown, sampled and scored by FID.

`log_std` is the Gaussian's calibrated scalar log std (the backbone's stored one, or the batch's
closed-form optimum during training); likelihoods with their own scales ignore it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

BIN_WIDTH = 2.0 / 255.0
"""Width of one 8-bit bin on the [-1, 1] scale."""

EDGE = 1.0 - BIN_WIDTH / 2
"""Values beyond +-EDGE are the first / last bin (x = -1 or x = 1), whose outer edge is open (PixelCNN++)."""


def _full(params: Tensor) -> Tensor:
    """The decoder's output in float32 when an autocast region made it bfloat16 / float16 (unchanged otherwise)."""
    return params.float() if params.dtype in (torch.bfloat16, torch.float16) else params


class Likelihood(ABC):
    """p(x | z) given the decoder's parameters; see the module docstring."""

    name: str = ""

    @classmethod
    def build(cls, components: int | None) -> Likelihood:
        """An instance from the config's options (`components`: the mixture's K, read only by mixtures)."""
        return cls()

    @abstractmethod
    def param_channels(self, image_channels: int) -> int:
        """Channels P of the decoder output for images with `image_channels` channels."""

    @abstractmethod
    def mean(self, params: Tensor) -> Tensor:
        """params `[B, P, H, W]` -> the decoder's image `[B, C, H, W]` on the [-1, 1] scale."""

    @abstractmethod
    def nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        """-log p(x | z) in nats, `[B]`, for x `[B, C, H, W]` in [-1, 1]."""

    @abstractmethod
    def discrete_nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        """-log P(8-bit bin of x | z) in nats, `[B]`."""


class GaussianLikelihood(Likelihood):
    """N(x; mean, s_x^2) per pixel with one shared std s_x = exp(log_std) (calibrated in closed form,
    Rybkin et al. 2021), a continuous density on [-1, 1]; params = the mean `[B, C, H, W]`."""

    name = "gaussian"

    def param_channels(self, image_channels: int) -> int:
        return image_channels

    def mean(self, params: Tensor) -> Tensor:
        return params

    def nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        """Continuous density: 0.5 ((x - mu) / s)^2 + log s + 0.5 log 2 pi per pixel, summed."""
        per_pixel = 0.5 * ((x - _full(params)) / log_std.exp()) ** 2 + log_std + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(-1)

    def discrete_nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        """The Gaussian's mass on x's bin: Phi((x + w/2 - mu) / s) - Phi((x - w/2 - mu) / s), the outer edges of the
        bins at -1 and 1 open (as for the logistic mixture), in float64. Where the mass underflows, the density
        times the bin width, p(x) w, stands in (the usual conversion -log P ~ -log p(x) - log w)."""
        x64, mu, std = x.double(), params.double(), log_std.double().exp()
        # Work in the lower tail (flip the sign where x > mu) so that both Phi values are small and exact.
        sign = torch.where(x64 > mu, -1.0, 1.0)
        upper_edge = torch.where(x64 > EDGE, math.inf, (x64 + BIN_WIDTH / 2 - mu) / std)
        lower_edge = torch.where(x64 < -EDGE, -math.inf, (x64 - BIN_WIDTH / 2 - mu) / std)
        hi, lo = torch.where(sign > 0, upper_edge, -lower_edge), torch.where(sign > 0, lower_edge, -upper_edge)
        mass = torch.special.ndtr(hi) - torch.special.ndtr(lo)
        density = -0.5 * ((x64 - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi) + math.log(BIN_WIDTH)
        log_mass = torch.where(mass > 1e-300, torch.log(mass.clamp_min(1e-300)), density)
        return -log_mass.flatten(1).sum(-1).to(x.dtype)


class LogisticMixtureLikelihood(Likelihood):
    """Discretised mixture of K logistics per pixel and channel (PixelCNN++, Salimans et al. 2017, eq. 2):
    P(x) = sum_k pi_k [sigmoid((x + w/2 - mu_k) / s_k) - sigmoid((x - w/2 - mu_k) / s_k)], with the outer edge of
    the first and last bin open, so the 256 bins' masses sum to 1.

    Colour channels are independent mixtures (PixelCNN++ couples the means of R, G, B linearly; we do not).
    params `[B, C * 3K, H, W]`, read as `[B, C, 3, K, H, W]`: mixture logits, means, log scales.
    """

    name = "logistic-mixture"
    MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on log s

    def __init__(self, components: int) -> None:
        self.components = components

    @classmethod
    def build(cls, components: int | None) -> Likelihood:
        return cls(components or 1)

    def param_channels(self, image_channels: int) -> int:
        return image_channels * 3 * self.components

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """params `[B, C * 3K, H, W]` -> (log pi, mu, log s), each `[B, C, K, H, W]` (float32 at least)."""
        b, _, h, w = params.shape
        logits, mu, log_s = _full(params).reshape(b, -1, 3, self.components, h, w).unbind(2)
        return F.log_softmax(logits, dim=2), mu, log_s.clamp_min(self.MIN_LOG_SCALE)

    def mean(self, params: Tensor) -> Tensor:
        """sum_k pi_k clamp(mu_k, -1, 1): the mixture of the components' locations, clamped to the data range (the exact
        mean of the discretised distribution differs only where a component spreads mass past -1 or 1)."""
        log_pi, mu, _ = self._split(params)
        return (log_pi.exp() * mu.clamp(-1, 1)).sum(2)

    def log_prob_per_pixel(self, x: Tensor, params: Tensor) -> Tensor:
        """log P(bin of x) `[B, C, H, W]` (PixelCNN++'s discretized_mix_logistic_loss, per channel)."""
        log_pi, mu, log_s = self._split(params)
        centred, inv_s = x.unsqueeze(2) - mu, torch.exp(-log_s)
        plus_in, min_in = inv_s * (centred + BIN_WIDTH / 2), inv_s * (centred - BIN_WIDTH / 2)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the bin at -1 (lower edge open)
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)): the bin at 1 (upper edge open)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_s * centred  # for a vanishing cdf_delta: log density at the centre + log w
        log_pdf_mid = mid_in - log_s - 2.0 * F.softplus(mid_in) + math.log(BIN_WIDTH)
        log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
        xk = x.unsqueeze(2).expand_as(mu)
        log_probs = torch.where(xk < -EDGE, log_cdf_plus, torch.where(xk > EDGE, log_one_minus_cdf_min, log_mid))
        return torch.logsumexp(log_probs + log_pi, dim=2)

    def nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        return -self.log_prob_per_pixel(x, params).flatten(1).sum(-1)

    def discrete_nll(self, x: Tensor, params: Tensor, log_std: Tensor) -> Tensor:
        return self.nll(x, params, log_std)


LIKELIHOODS: dict[str, type[Likelihood]] = {GaussianLikelihood.name: GaussianLikelihood, LogisticMixtureLikelihood.name: LogisticMixtureLikelihood}
"""`--likelihood` name -> class."""


def make_likelihood(name: str | None, components: int | None) -> Likelihood:
    """The likelihood a config names (None: the Gaussian, the default); `components` only for the mixture."""
    return LIKELIHOODS[name or GaussianLikelihood.name].build(components)
