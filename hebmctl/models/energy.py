"""Energy networks on the latent groups (DESIGN §3, "Energy sign", "Labels").

Every network here outputs a *negative energy* (a log-density term): the joint prior density is
proportional to ``exp(F(z, t))`` with ``F(z, t) = sum_i f_i(z_i, t)`` (Joint-EBM), one small MLP
``f_i`` per latent group. Optional time conditioning (the diffusion scheme's level ``t``) and an
optional label head (one output per class, DESIGN "Labels").

No normalisation layer couples the batch (no BatchNorm), so ``F`` of one example never depends on
the rest of the batch and Langevin gradients are per-example.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = ["ConvGroupEnergy", "GroupEnergy", "JointEnergy", "sinusoidal_embedding", "make_activation"]

_ACTIVATIONS = ("silu", "leaky_relu")


def make_activation(name: str) -> nn.Module:
    """``"silu"`` -> SiLU, ``"leaky_relu"`` -> LeakyReLU(0.2)."""
    if name == "silu":
        return nn.SiLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"unknown activation {name!r}; expected one of {_ACTIVATIONS}")


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding of integer levels: t ``[B]`` -> ``[B, dim]`` (float32).

    ``[sin(t w_k), cos(t w_k)]`` with ``w_k = max_period^(-k / (dim // 2))``, ``k < dim // 2``;
    zero-padded by one column when ``dim`` is odd.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def _time_mlp(time_embed_dim: int, activation: str) -> nn.Sequential:
    """The 2-layer MLP applied to the sinusoidal level embedding (shared by vector and conv group energies)."""
    return nn.Sequential(
        nn.Linear(time_embed_dim, time_embed_dim),
        make_activation(activation),
        nn.Linear(time_embed_dim, time_embed_dim),
        make_activation(activation),
    )


def _level_table(n_levels: int, time_embed_dim: int) -> Tensor | None:
    """``sinusoidal_embedding`` of every level ``[n_levels, time_embed_dim]``, computed once: a row lookup then replaces
    the eight or so small kernels the formula costs at every Langevin step (rows are bitwise the formula's values;
    a non-persistent buffer, so saved energies keep their keys)."""
    return sinusoidal_embedding(torch.arange(n_levels), time_embed_dim) if n_levels > 0 else None


def _level_embedding(time_mlp: nn.Module | None, table: Tensor | None, z: Tensor, t: Tensor | None) -> Tensor | None:
    """The embedded level ``[B, time_embed_dim]`` (None for an energy without levels): the time MLP of the level's
    row of ``table`` (``_level_table``); checks that t ``[B]`` is given exactly when the energy is time-conditioned."""
    if time_mlp is None:
        if t is not None:
            raise ValueError("this energy is not time-conditioned (n_levels = 0) but t was given")
        return None
    if t is None:
        raise ValueError("this energy is time-conditioned (n_levels > 0): pass t [B]")
    if t.shape != (z.shape[0],):
        raise ValueError(f"t must have shape [B]=[{z.shape[0]}], got {tuple(t.shape)}")
    return time_mlp(table[t].to(z.dtype))


class GroupEnergy(nn.Module):
    """``f_i(z_i, t)``: an MLP on one vector latent group, a negative energy.

    ``depth`` hidden layers of ``width`` units, then a linear output. With ``n_levels > 0`` the
    level ``t`` is embedded (sinusoidal, :func:`sinusoidal_embedding`, then a 2-layer MLP), and a
    per-layer linear projection of that embedding is ADDED to each hidden layer's pre-activation.
    ``spectral_norm=True`` wraps the z-path linear layers (hidden and output) in spectral
    normalisation; the time-embedding layers are left plain (t is discrete, not sampled).

    Args:
        dim: size of the group's latent vector.
        width: hidden units.
        depth: number of hidden layers (>= 1).
        activation: ``"silu"`` or ``"leaky_relu"`` (slope 0.2).
        spectral_norm: spectral normalisation of the z-path linear layers.
        n_levels: number of diffusion levels T; 0 = no time conditioning.
        time_embed_dim: size of the sinusoidal embedding and of the time MLP.
        n_outputs: 1 -> output ``[B]``; > 1 -> ``[B, n_outputs]`` (one logit per class).

    Shapes: ``forward(z [B, dim], t LongTensor [B] | None) -> [B]`` or ``[B, n_outputs]``.
    """

    def __init__(
        self,
        dim: int,
        width: int = 200,
        depth: int = 2,
        activation: str = "silu",
        spectral_norm: bool = False,
        n_levels: int = 0,
        time_embed_dim: int = 64,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or width < 1 or depth < 1 or n_outputs < 1 or n_levels < 0:
            raise ValueError(
                f"need dim, width, depth, n_outputs >= 1 and n_levels >= 0; got dim={dim}, "
                f"width={width}, depth={depth}, n_outputs={n_outputs}, n_levels={n_levels}"
            )
        if n_levels > 0 and time_embed_dim < 2:
            raise ValueError(f"time_embed_dim must be >= 2, got {time_embed_dim}")
        make_activation(activation)  # validate early
        self.dim = dim
        self.width = width
        self.depth = depth
        self.activation_name = activation
        self.n_levels = n_levels
        self.time_embed_dim = time_embed_dim
        self.n_outputs = n_outputs

        def lin(n_in: int, n_out: int) -> nn.Module:
            layer = nn.Linear(n_in, n_out)
            return _spectral_norm(layer) if spectral_norm else layer

        self.hidden = nn.ModuleList(
            [lin(dim if i == 0 else width, width) for i in range(depth)]
        )
        self.acts = nn.ModuleList([make_activation(activation) for _ in range(depth)])
        self.out = lin(width, n_outputs)
        self.register_buffer("level_table", _level_table(n_levels, time_embed_dim), persistent=False)
        if n_levels > 0:
            self.time_mlp: nn.Module | None = _time_mlp(time_embed_dim, activation)
            self.time_proj: nn.ModuleList | None = nn.ModuleList(
                [nn.Linear(time_embed_dim, width) for _ in range(depth)]
            )
        else:
            self.time_mlp = None
            self.time_proj = None

    def forward(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        """z ``[B, dim]``, t LongTensor ``[B]`` (required iff ``n_levels > 0``) -> ``[B]`` / ``[B, n_outputs]``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected z of shape [B, {self.dim}], got {tuple(z.shape)}")
        temb = _level_embedding(self.time_mlp, self.level_table, z, t)
        h = z
        for i, (layer, act) in enumerate(zip(self.hidden, self.acts)):
            pre = layer(h)
            if temb is not None:
                assert self.time_proj is not None
                pre = pre + self.time_proj[i](temb)  # time conditioning added to pre-activation
            h = act(pre)
        out = self.out(h)
        return out.squeeze(1) if self.n_outputs == 1 else out


class ConvGroupEnergy(nn.Module):
    """``f_i(z_i, t)`` for a spatial group ``[c, h, w]``: a small conv net with global average pooling.

    ``depth`` 3x3 convolutions of ``channels`` channels (activation after each; with ``n_levels > 0``
    a per-layer linear projection of the level embedding is added to each pre-activation as a
    per-channel bias), global average pooling, then a linear output. The input arrives flattened.

    Shapes: ``forward(z [B, c*h*w], t LongTensor [B] | None) -> [B]`` or ``[B, n_outputs]``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        channels: int = 64,
        depth: int = 2,
        activation: str = "silu",
        spectral_norm: bool = False,
        n_levels: int = 0,
        time_embed_dim: int = 64,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if len(shape) != 3 or min(shape) < 1 or channels < 1 or depth < 1 or n_outputs < 1:
            raise ValueError(f"need a [c, h, w] shape and channels, depth, n_outputs >= 1; got {tuple(shape)}, {channels}, {depth}, {n_outputs}")
        self.shape = tuple(int(s) for s in shape)
        self.dim = math.prod(self.shape)
        self.n_levels, self.n_outputs, self.time_embed_dim = n_levels, n_outputs, time_embed_dim

        def wrap(layer: nn.Module) -> nn.Module:
            return _spectral_norm(layer) if spectral_norm else layer

        self.convs = nn.ModuleList(wrap(nn.Conv2d(self.shape[0] if i == 0 else channels, channels, 3, padding=1)) for i in range(depth))
        self.acts = nn.ModuleList(make_activation(activation) for _ in range(depth))
        self.out = wrap(nn.Linear(channels, n_outputs))
        self.time_mlp: nn.Module | None = None
        self.time_proj: nn.ModuleList | None = None
        self.register_buffer("level_table", _level_table(n_levels, time_embed_dim), persistent=False)
        if n_levels > 0:
            self.time_mlp = _time_mlp(time_embed_dim, activation)
            self.time_proj = nn.ModuleList(nn.Linear(time_embed_dim, channels) for _ in range(depth))

    def forward(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        """z ``[B, c*h*w]`` (flattened group), t ``[B]`` iff ``n_levels > 0`` -> ``[B]`` / ``[B, n_outputs]``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected z of shape [B, {self.dim}] (a flattened {self.shape} group), got {tuple(z.shape)}")
        temb = _level_embedding(self.time_mlp, self.level_table, z, t)
        h = z.view(z.shape[0], *self.shape)
        for i, (conv, act) in enumerate(zip(self.convs, self.acts)):
            pre = conv(h)
            if temb is not None:
                pre = pre + self.time_proj[i](temb)[:, :, None, None]  # level as a per-channel bias
            h = act(pre)
        out = self.out(h.mean(dim=(2, 3)))
        return out.squeeze(1) if self.n_outputs == 1 else out


class JointEnergy(nn.Module):
    """``F(z, t) = sum_i f_i(z_i, t)``: the joint negative energy over all latent groups.

    Density ``p(z) ∝ exp(F(z)) * p_Gauss(z)`` (Joint-EBM); in u-space the caller evaluates it on
    ``z = T(u)``. With ``n_classes > 0`` the groups listed in ``label_groups`` (default: all)
    output one value per class, giving ``F(z, y)`` (DESIGN "Labels", Diff-EBM sec. 3.3):
    ``class_logits(z, t)[:, y] = sum_{i in label} f_i(z_i, t)[y] + sum_{j not in label} f_j(z_j, t)``.
    ``forward`` with ``y`` returns ``F(z, y)``; with ``y=None`` the marginal
    ``logsumexp_y F(z, y)``. (Classifier-free guidance ``(1 + w) F(z, y) - w F(z, null)`` can use
    this marginal as ``F(z, null)``; that choice is the caller's.)

    Args:
        group_dims: latent size of each group, bottom (z_1) to top (z_L); z is their concatenation.
            Each entry may also be a shape: ``d`` or ``(d,)`` (vector) or ``(c, h, w)`` (spatial).
        width, depth, activation, spectral_norm, n_levels, time_embed_dim: as :class:`GroupEnergy`.
        n_classes: 0 = unlabelled.
        label_groups: indices of the groups coupled to the label (default: all groups).

    Shapes: ``forward(z [B, sum(group_dims)], t [B] | None, y [B] | None) -> [B]``.
    """

    def __init__(
        self,
        group_dims: Sequence[int | Sequence[int]] | None = None,
        width: int = 200,
        depth: int = 2,
        activation: str = "silu",
        spectral_norm: bool = False,
        n_levels: int = 0,
        time_embed_dim: int = 64,
        n_classes: int = 0,
        label_groups: Sequence[int] | None = None,
        group_shapes: Sequence[Sequence[int]] | None = None,
        conv_channels: int = 64,
        conv_depth: int = 2,
    ) -> None:
        super().__init__()
        entries = group_shapes if group_shapes is not None else (group_dims or [])
        shapes = [tuple(int(s) for s in e) if isinstance(e, Sequence) else (int(e),) for e in entries]
        dims = [math.prod(shape) for shape in shapes]
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"group_dims must be a non-empty list of positive sizes, got {dims}")
        if n_classes < 0 or n_classes == 1:
            raise ValueError(f"n_classes must be 0 (unlabelled) or >= 2, got {n_classes}")
        if n_classes > 0:
            groups = list(range(len(dims))) if label_groups is None else [int(i) for i in label_groups]
            if not groups or len(set(groups)) != len(groups) or any(
                not 0 <= i < len(dims) for i in groups
            ):
                raise ValueError(
                    f"label_groups must be distinct indices in 0..{len(dims) - 1}, got {label_groups}"
                )
        else:
            if label_groups is not None:
                raise ValueError("label_groups given but n_classes = 0")
            groups = []
        self.group_dims: tuple[int, ...] = tuple(dims)
        self.n_levels = n_levels
        self.n_classes = n_classes
        self.label_groups: tuple[int, ...] = tuple(sorted(groups))
        self.group_shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        common = dict(activation=activation, spectral_norm=spectral_norm, n_levels=n_levels, time_embed_dim=time_embed_dim)
        group_net = {
            1: lambda shape, n_out: GroupEnergy(shape[0], width=width, depth=depth, n_outputs=n_out, **common),
            3: lambda shape, n_out: ConvGroupEnergy(shape, channels=conv_channels, depth=conv_depth, n_outputs=n_out, **common),
        }
        for shape in shapes:
            if len(shape) not in group_net:
                raise ValueError(f"a latent group is a vector [d] or a map [c, h, w], got shape {shape}")
        self.groups = nn.ModuleList(
            group_net[len(shape)](shape, n_classes if i in self.label_groups else 1) for i, shape in enumerate(shapes)
        )

    @property
    def total_dim(self) -> int:
        """``sum(group_dims)``, the size of the concatenated latent z."""
        return sum(self.group_dims)

    def split(self, z: Tensor) -> list[Tensor]:
        """z ``[B, sum(dims)]`` -> per-group ``[B, dim_i]`` (bottom to top)."""
        if z.dim() != 2 or z.shape[1] != self.total_dim:
            raise ValueError(f"expected z of shape [B, {self.total_dim}], got {tuple(z.shape)}")
        return list(torch.split(z, list(self.group_dims), dim=1))

    def group_neg_energies(self, z: Tensor, t: Tensor | None = None) -> list[Tensor]:
        """Each ``f_i(z_i, t)``: ``[B]``, or ``[B, n_classes]`` for label groups."""
        return [f(z_i, t) for f, z_i in zip(self.groups, self.split(z))]

    def class_logits(self, z: Tensor, t: Tensor | None = None, groups: Sequence[int] | None = None) -> Tensor:
        """``F(z, y)`` for every class: ``[B, n_classes]`` (label groups' per-class outputs summed,
        the other groups' scalars broadcast over classes); with ``groups``, the sum over those groups only."""
        if self.n_classes == 0:
            raise ValueError("class_logits needs a labelled energy (n_classes > 0)")
        parts = self.group_neg_energies(z, t)
        chosen = set(range(len(parts))) if groups is None else set(groups)
        scalar = torch.zeros(z.shape[0], 1, device=z.device, dtype=z.dtype)
        per_class = torch.zeros(z.shape[0], self.n_classes, device=z.device, dtype=z.dtype)
        for i, p in enumerate(parts):
            if i not in chosen:
                continue
            if i in self.label_groups:
                per_class = per_class + p
            else:
                scalar = scalar + p.unsqueeze(1)
        return per_class + scalar

    def forward(self, z: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """The negative energy ``F(z, t)`` ``[B]`` (``F(z, y)`` with y, ``logsumexp_y F`` without).

        Args:
            z: ``[B, sum(group_dims)]``.
            t: LongTensor ``[B]``, required iff ``n_levels > 0``.
            y: LongTensor ``[B]`` of class indices; only for ``n_classes > 0``.
        """
        if self.n_classes == 0:
            if y is not None:
                raise ValueError("y given but this energy is unlabelled (n_classes = 0)")
            parts = self.group_neg_energies(z, t)
            return torch.stack(parts, dim=0).sum(dim=0)  # F = sum_i f_i
        logits = self.class_logits(z, t)
        if y is None:
            return torch.logsumexp(logits, dim=1)  # marginal: logsumexp_y F(z, y)
        if y.shape != (z.shape[0],):
            raise ValueError(f"y must have shape [B]=[{z.shape[0]}], got {tuple(y.shape)}")
        return logits.gather(1, y.to(device=z.device, dtype=torch.long).unsqueeze(1)).squeeze(1)
