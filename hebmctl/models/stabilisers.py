"""NVAE's training aids (Vahdat & Kautz 2020, §3.2 and App. A) that `pretrain` offers as options.

- KL balancing (`--kl-balance`, App. A): during the KL warm-up, the KL of group l is weighted by
  `gamma_l` proportional to its KL per unit of group size, normalised to mean 1 over the groups,
  so a group with little KL pays a smaller penalty and is not switched off early.
- Spectral regularisation (`--spectral-reg LAMBDA`, §3.2): `L_SR = lambda * sum_i s^(i)` with `s^(i)` the
  largest singular value of the i-th convolution's weight, estimated by power iteration (one
  iteration per step, the vectors carried over between steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KL_BALANCE_OFFSET = 0.01
"""Added to each group's mean KL before balancing (NVAE's code), so that an empty group keeps a positive weight."""


def kl_balance_coefficients(kl_per_group: Tensor, group_dims: Tensor | tuple[int, ...]) -> Tensor:
    """NVAE's balancing coefficients `gamma` `[L]` from the batch-mean KL per group `[L]` (nats) and the group sizes `[L]`:
    `gamma_l = L * k_l / sum_j k_j` with `k_l = (|KL_l| + 0.01) / dim_l` (App. A: proportional to the KL, divided by the
    group's size, mean 1 over the groups). No gradient flows through gamma."""
    dims = torch.as_tensor(group_dims, dtype=kl_per_group.dtype, device=kl_per_group.device)
    per_size = (kl_per_group.detach().abs() + KL_BALANCE_OFFSET) / dims
    return per_size * (len(per_size) / per_size.sum())


def weight_matrix(module: nn.Module) -> Tensor:
    """A convolution's weight as the matrix whose spectral norm NVAE bounds: `[out, in * k * k]` (a transposed
    convolution's `[in, out * k * k]`; transposing a matrix keeps its singular values)."""
    return module.weight.flatten(1)


class SpectralRegulariser(nn.Module):
    """`sum_i s^(i)` over every Conv2d / ConvTranspose2d of `model`, by power iteration (§3.2).

    Holds one left singular vector estimate `u_i` `[rows_i]` per convolution (buffers, so a checkpoint resumes
    them). Each call runs `iterations` power steps under no_grad (`init_iterations` on the first call), then returns
    `sum_i u_i^T W_i v_i` with `v_i = normalise(W_i^T u_i)`, differentiable in the weights.
    """

    def __init__(self, model: nn.Module, iterations: int = 1, init_iterations: int = 20, seed: int = 0) -> None:
        super().__init__()
        self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        self.iterations, self.init_iterations = iterations, init_iterations
        generator = torch.Generator().manual_seed(seed)
        for i, conv in enumerate(self.convs):
            u = torch.randn(conv.weight.shape[0], generator=generator)
            self.register_buffer(f"u{i}", F.normalize(u, dim=0).to(conv.weight.device))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _power_steps(self, w: Tensor, u: Tensor, n: int) -> Tensor:
        """n power iterations u <- normalise(W normalise(W^T u)); w `[rows, cols]`, u `[rows]`."""
        for _ in range(n):
            u = F.normalize(w @ F.normalize(w.T @ u, dim=0), dim=0)
        return u

    def singular_values(self) -> Tensor:
        """Estimated largest singular value of each convolution `[n_convs]`, with gradients w.r.t. the weights."""
        n = self.iterations if bool(self.started) else self.init_iterations
        values = []
        for i, conv in enumerate(self.convs):
            w = weight_matrix(conv)
            u = self._power_steps(w.detach().float(), getattr(self, f"u{i}"), n)
            getattr(self, f"u{i}").copy_(u)
            v = F.normalize(w.detach().float().T @ u, dim=0)
            values.append(u @ w.float() @ v)
        self.started.fill_(True)
        return torch.stack(values)

    def forward(self) -> Tensor:
        """sum_i s^(i) (a scalar; multiply by lambda for the loss)."""
        return self.singular_values().sum()
