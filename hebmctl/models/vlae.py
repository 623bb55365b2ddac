"""`vlae`: an architectural hierarchy (variational ladder autoencoder; Zhao et al. 2017, Hier-EBM).

Every group is an independent N(0, I) vector, so `T` is the identity and `log p_Gauss` a plain
standard normal. The hierarchy lives in the networks instead: the generator starts from the top group
z_L at its most abstract (deepest) stage and injects each lower group at a later, less abstract stage;
inference is a ladder, each group read from the encoder's features at the matching depth.

Stages, for L groups (0-based index i, bottom i = 0):
- generator: `g = MLP(z_{L-1})`; groups i = L-2 .. 2 join the vector path, `g = MLP([g, z_i])`; then g
  becomes a `[2C, H/4, W/4]` map, group 1 (if it is not the top) is added there through a linear
  map, a transposed convolution goes to H/2 where group 0 (if not the top) is added, and a second one to
  the pixels.
- encoder: `e_0` at H/2 (conv), `e_1` at H/4 (conv), then vector features `v_1 = MLP(flatten(e_1))`,
  `v_k = MLP(v_{k-1})`. Group i < L-1 reads `e_i` (i < 2) or `v_{i-1}` (i >= 2); the top group reads
  the deepest vector feature `v_{max(L-1, 1)}`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hebmctl.models.backbone import Backbone, BackboneMisfit, draw_gaussian, gaussian_kl, gaussian_log_prob
from hebmctl.models.hvae import GaussianHead
from hebmctl.models.likelihood import Likelihood


def _vector_mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out), nn.SiLU())


class VLAE(Backbone):
    """Architectural hierarchy with vector groups; see the module docstring.

    Args:
        image_shape: (H, W, C), H and W divisible by 4.
        latent_dims: group sizes, bottom (z_1) to top (z_L).
        channels: width C of the first convolution (2C at H/4).
        mlp_hidden: width of the vector path (encoder and generator).
        likelihood: p(x | z) (default: the Gaussian); the last convolution has its parameter channels.
    """

    family = "vlae"

    def __init__(self, image_shape: tuple[int, int, int], latent_dims: tuple[int, ...], channels: int = 32, mlp_hidden: int = 256,
                 likelihood: Likelihood | None = None) -> None:
        super().__init__(likelihood)
        self.check_fits(image_shape)
        height, width, n_channels = image_shape
        self.image_shape = tuple(image_shape)
        self.group_shapes = tuple((int(d),) for d in latent_dims)
        dims, n_layers, c = self.group_dims, len(latent_dims), channels
        self.map_shapes = ((c, height // 2, width // 2), (2 * c, height // 4, width // 4))
        n_vector = max(n_layers - 1, 1)
        flat = 2 * c * (height // 4) * (width // 4)
        # Encoder (ladder).
        self.enc_convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(n_channels, c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU()),
            nn.Sequential(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU()),
        ])
        self.enc_vectors = nn.ModuleList(_vector_mlp(flat if k == 0 else mlp_hidden, mlp_hidden) for k in range(n_vector))
        self.q_heads = nn.ModuleList(GaussianHead(self._feature_size(i, mlp_hidden), mlp_hidden, dims[i]) for i in range(n_layers))
        # Generator.
        self.gen_top = _vector_mlp(dims[-1], mlp_hidden)
        self.gen_vector = nn.ModuleDict({str(i): _vector_mlp(mlp_hidden + dims[i], mlp_hidden) for i in range(2, n_layers - 1)})
        self.to_map = nn.Sequential(nn.Linear(mlp_hidden, flat), nn.SiLU())
        self.inject = nn.ModuleDict({str(i): nn.Linear(dims[i], self._map_size(i)) for i in range(min(2, n_layers - 1))})
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU())
        self.up0 = nn.Sequential(nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, self.likelihood.param_channels(n_channels), 3, padding=1))

    @staticmethod
    def check_fits(image_shape: tuple[int, int, int]) -> None:
        height, width, _ = image_shape
        if height < 4 or width < 4 or height % 4 or width % 4:
            raise BackboneMisfit(f"the vlae backbone needs image height and width divisible by 4 (two stride-2 convolutions), got {height}x{width}")

    def _map_size(self, i: int) -> int:
        c, h, w = self.map_shapes[i]
        return c * h * w

    def _feature_size(self, i: int, hidden: int) -> int:
        """Width of group i's ladder feature: a flattened map for the two lowest non-top groups, else the vector width."""
        if i == self.num_layers - 1 or i >= 2:
            return hidden
        return self._map_size(i)

    # ---- inference ----------------------------------------------------------------------
    def encode(self, x: Tensor) -> list[Tensor]:
        """x -> ladder features, one flat `[B, f_i]` per group, bottom first."""
        e0 = self.enc_convs[0](x)
        e1 = self.enc_convs[1](e0)
        vectors, v = [], e1.flatten(1)
        for mlp in self.enc_vectors:
            v = mlp(v)
            vectors.append(v)
        rungs = [e0.flatten(1), e1.flatten(1)] + vectors  # group i < L-1 reads rungs[i]; the top reads the deepest
        return [rungs[i] for i in range(self.num_layers - 1)] + [vectors[-1]]

    def posterior_from_features(self, features: list[Tensor], generator: torch.Generator | None, sample: bool = True) -> tuple[Tensor, Tensor]:
        """Independent q(z_i | x) per group: (z `[B, D]`, closed-form KL against N(0, I) `[B, L]`)."""
        groups, kls = [], []
        for head, f in zip(self.q_heads, features):
            mu, std = head(f)
            groups.append(draw_gaussian(mu, std, generator, sample))
            kls.append(gaussian_kl(mu, std, torch.zeros_like(mu), torch.ones_like(std)))
        return self.join_groups(groups), torch.stack(kls, dim=-1)

    # ---- generative model ---------------------------------------------------------------
    def decode_params(self, z: Tensor) -> Tensor:
        """z `[B, D]` -> likelihood parameters `[B, P, H, W]`: top group first, each lower group at a later stage."""
        groups, n = self.split_groups(z), self.num_layers
        g = self.gen_top(groups[-1])
        for i in range(n - 2, 1, -1):
            g = self.gen_vector[str(i)](torch.cat([g, groups[i]], dim=-1))
        m1 = self.to_map(g).view(-1, *self.map_shapes[1])
        if "1" in self.inject:
            m1 = m1 + self.inject["1"](groups[1]).view(-1, *self.map_shapes[1])
        m0 = self.up1(m1)
        if "0" in self.inject:
            m0 = m0 + self.inject["0"](groups[0]).view(-1, *self.map_shapes[0])
        return self.up0(m0)

    def u_to_z(self, u: Tensor) -> Tensor:
        """T is the identity (independent N(0, I) groups)."""
        return u

    def z_to_u(self, z: Tensor) -> Tensor:
        return z

    def log_prior_gauss(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) `[B]` (log|det dT/du| = 0)."""
        return gaussian_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
