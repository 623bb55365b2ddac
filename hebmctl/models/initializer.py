"""The cooperative scheme's initializer network g(u_{t+1}, t) in u-space (DESIGN §3 "Cooperative scheme";
CDRL sec. 3.2: the initializer amortises the Langevin chain of the conditional EBM p(u_t | u_{t+1})).

Group-aware, like the energy network: the flat u `[B, D]` is split into the backbone's latent groups
(bottom to top); each group gets its own residual net that sees only that group of u_{t+1} and the
level t: an MLP for a vector group `[d]`, a small conv net for a spatial group `[c, h, w]`. The mean is
`g(u_{t+1}, t) = u_{t+1} + r(u_{t+1}, t)` with the last layer of r zero-initialised, so an untrained
initializer proposes exactly the diffusion scheme's chain start u_{t+1}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hebmctl.models.energy import make_activation, sinusoidal_embedding

__all__ = ["Initializer"]


class _VectorResidual(nn.Module):
    """r(u_i, t) for a vector group: u_i `[B, d]`, temb `[B, E]` -> `[B, d]` (MLP, level added to each hidden layer)."""

    def __init__(self, dim: int, width: int, depth: int, embed_dim: int, activation: str) -> None:
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(dim if i == 0 else width, width) for i in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(depth))
        self.act = make_activation(activation)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: Tensor, temb: Tensor) -> Tensor:
        h = u
        for layer, proj in zip(self.hidden, self.time_proj):
            h = self.act(layer(h) + proj(temb))
        return self.out(h)


class _ConvResidual(nn.Module):
    """r(u_i, t) for a spatial group: u_i `[B, c, h, w]`, temb `[B, E]` -> `[B, c, h, w]` (3x3 convs, level added per channel)."""

    def __init__(self, channels_in: int, channels: int, depth: int, embed_dim: int, activation: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels_in if i == 0 else channels, channels, 3, padding=1) for i in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(embed_dim, channels) for _ in range(depth))
        self.act = make_activation(activation)
        self.out = nn.Conv2d(channels, channels_in, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: Tensor, temb: Tensor) -> Tensor:
        h = u
        for conv, proj in zip(self.convs, self.time_proj):
            h = self.act(conv(h) + proj(temb)[:, :, None, None])
        return self.out(h)


class Initializer(nn.Module):
    """g(u_{t+1}, t): the mean `[B, D]` of the proposal for u_t given u_{t+1} `[B, D]` and the level t `[B]`.

    Args:
        group_shapes: the backbone's latent groups, bottom to top ([d] or [c, h, w]); D = sum of their sizes.
        width, depth: hidden units and layers of each vector group's MLP.
        conv_channels, conv_depth: channels and conv layers of each spatial group's net.
        time_embed_dim: size of the sinusoidal level embedding (then a 2-layer MLP, shared by the groups).
        activation: "silu" or "leaky_relu".
    """

    def __init__(self, group_shapes: Sequence[Sequence[int]], width: int = 200, depth: int = 2, conv_channels: int = 64,
                 conv_depth: int = 2, time_embed_dim: int = 64, activation: str = "silu") -> None:
        super().__init__()
        self.group_shapes = tuple(tuple(int(s) for s in shape) for shape in group_shapes)
        self.group_dims = tuple(math.prod(shape) for shape in self.group_shapes)
        self.time_embed_dim = time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, time_embed_dim), make_activation(activation),
                                      nn.Linear(time_embed_dim, time_embed_dim), make_activation(activation))
        self.groups = nn.ModuleList(
            _VectorResidual(shape[0], width, depth, time_embed_dim, activation) if len(shape) == 1
            else _ConvResidual(shape[0], conv_channels, conv_depth, time_embed_dim, activation)
            for shape in self.group_shapes
        )

    def forward(self, u_next: Tensor, t: Tensor) -> Tensor:
        """u_{t+1} `[B, D]`, t LongTensor `[B]` -> g(u_{t+1}, t) `[B, D]` = u_{t+1} + r(u_{t+1}, t)."""
        if u_next.dim() != 2 or u_next.shape[1] != sum(self.group_dims):
            raise ValueError(f"expected u of shape [B, {sum(self.group_dims)}], got {tuple(u_next.shape)}")
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_embed_dim).to(u_next.dtype))
        parts = []
        for net, shape, u_i in zip(self.groups, self.group_shapes, torch.split(u_next, list(self.group_dims), dim=1)):
            parts.append(net(u_i.reshape((u_i.shape[0],) + shape), temb).flatten(1))
        return u_next + torch.cat(parts, dim=1)
