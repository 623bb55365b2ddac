"""Many diffusion priors trained at once (issue 13 item 2): N priors of one architecture on N backbones of one
architecture (e.g. one per held-out digit and seed), stepped in lockstep in one process.

The N energy networks' weights are stacked (`torch.func.stack_module_state`, leading dimension N) and every
evaluation is one `torch.func.vmap` over them, so a Langevin step of all N priors is one batched forward and
backward instead of N small ones. Each prior keeps its own random stream: prior i draws, in the order
`train-prior` draws them, from a generator seeded like `train-prior` seeds it (config.seed), and its
batches come from its own `LatentBatches`. So prior i follows the same arithmetic as the same prior trained
alone, up to float rounding of batched against single matrix products (`tests/priors/test_sweep.py` states
the tolerance).

Per update, for each prior i (Diff-EBM eq. 12-13, DESIGN §3 "Diffusion scheme", as `DiffusionPrior.training_outcome`):
t ~ U{0..T-1}; (u_t, u_{t+1}) from the forward process; K Langevin steps of log p(u_t | u_{t+1}) from u_{t+1};
loss_i = mean(-(G_i(pos, t) - G_i(neg, t)) / s_t^2); Adam on the stacked weights (elementwise, so it is N
independent Adams); gradient clip per prior; EMA per prior.

On CUDA (`compile` auto/on, as train-prior's --compile) the sweep's Langevin step is captured in a CUDA graph like a
lone prior's (`hebmctl.samplers.graphs.StaticStep`), prior i's noise drawn into its rows from its own generator.

Scope: the diffusion scheme, vector-group MLP energies (what the MNIST anomaly benchmark trains). No
rollback on divergence: a non-finite or runaway prior stops the sweep with an error that names it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from hebmctl.errors import ConfigError, DivergenceError
from hebmctl.models.backbone import Backbone
from hebmctl.priors.diffusion import DiffusionPrior
from hebmctl.priors.factory import for_training
from hebmctl.samplers.diffusion import _conditional
from hebmctl.samplers.graphs import CaptureMode, StaticStep, capture_enabled
from hebmctl.samplers.langevin import Density, draw_noise, langevin_step
from hebmctl.samplers.schedules import forward_pairs
from hebmctl.schemas.prior import TrainPriorConfig

SHARED_FIELDS = ("scheme", "T", "schedule", "b2", "langevin_steps", "width", "depth", "activation", "spectral_norm", "time_embed_dim",
                 "batch_size", "lr", "beta1", "energy_l2", "grad_clip", "ema_decay", "steps", "conv_channels", "conv_depth")
"""Config fields every prior of a sweep must share (the seed, the paths and the backbone may differ)."""


class EnergyOnU(nn.Module):
    """G(u, t) = F(T(u), t): u `[B, D]`, t `[B]` -> `[B]` (DESIGN §3 "u-space"); the module whose weights are stacked."""

    def __init__(self, energy: nn.Module, backbone: Backbone) -> None:
        super().__init__()
        self.energy, self.backbone = energy, backbone

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        return self.energy(self.backbone.u_to_z(u), t)


def check_sweepable(configs: Sequence[TrainPriorConfig]) -> None:
    """Raise ConfigError unless the configs can share one batched computation."""
    first = configs[0]
    if first.scheme != "diffusion" or first.spectral_norm:
        raise ConfigError("The batched sweep trains diffusion priors without spectral normalisation; train the others one at a time "
                          "with train-prior.")
    if any(c.weight_decay is not None or c.lr_decay is not None for c in configs):
        raise ConfigError("The batched sweep trains with a constant learning rate and no weight decay; train priors with "
                          "--weight-decay or --lr-decay one at a time with train-prior.")
    for config in configs[1:]:
        differ = [name for name in SHARED_FIELDS if getattr(config, name) != getattr(first, name)]
        if differ:
            raise ConfigError(f"The priors of a sweep must share {', '.join(differ)} (one architecture and schedule); "
                              f"{config.out} differs from {first.out}.")


class DiffusionSweep:
    """N diffusion priors: stacked weights `[N, ...]`, N generators, one vmap per evaluation."""

    def __init__(self, configs: Sequence[TrainPriorConfig], backbones: Sequence[Backbone], device: torch.device,
                 compile: CaptureMode = "off") -> None:
        check_sweepable(configs)
        self.config, self.n, self.device = configs[0], len(configs), device
        singles: list[DiffusionPrior] = [for_training(c, b, device) for c, b in zip(configs, backbones, strict=True)]
        self.schedule, self.step_sizes_sq = singles[0].schedule, singles[0].step_sizes_sq  # [T] (same config: same values)
        modules = [EnergyOnU(p.energy, b) for p, b in zip(singles, backbones, strict=True)]
        params, buffers = stack_module_state(modules)
        self.trained = {k: v for k, v in params.items() if k.startswith("energy.")}  # leaves [N, ...] with gradients
        self.frozen = {k: v for k, v in params.items() if not k.startswith("energy.")} | buffers
        self.template = copy.deepcopy(modules[0]).to("meta")
        self.saved_keys = set(singles[0].energy.state_dict())  # without non-persistent buffers (the level tables)
        self.ema = {k: v.detach().clone() for k, v in self.trained.items()}
        self.optimizer = torch.optim.Adam(self.trained.values(), lr=self.config.lr, betas=(self.config.beta1, 0.999))
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
        self.static: StaticStep | None = None
        self.capture = capture_enabled(compile, device)
        self.use_static = self.capture  # the captured step's buffers (tests set this without capture)

    def neg_energy(self, u: Tensor, t: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """G_i(u_i, t_i) `[N, B]` for u `[N, B, D]`, t `[N, B]` (weights: the trained ones by default)."""
        state = (weights if weights is not None else self.trained) | self.frozen
        return vmap(lambda s, uu, tt: functional_call(self.template, s, (uu, tt)))(state, u, t)

    def _log_density(self, u: Tensor, *inputs: Tensor) -> Tensor:
        """log p(u_t | u_{t+1}) of every prior, its N chains of B as one batch: u `[N*B, D]` -> `[N*B]`; inputs are
        `_conditional`'s, each `[N, B, ...]` (DESIGN §3, the same function a lone diffusion prior uses)."""
        n, b = inputs[0].shape[:2]
        state = {k: v.detach() for k, v in self.trained.items()} | self.frozen  # Langevin moves u, never the weights

        def one_prior(state_i: dict[str, Tensor], u_i: Tensor, *inputs_i: Tensor) -> Tensor:
            return _conditional(lambda uu, tt: functional_call(self.template, state_i, (uu, tt)), u_i, *inputs_i)

        return vmap(one_prior)(state, u.reshape(n, b, -1), *inputs).reshape(n * b)

    def negatives(self, u0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(u_t, u_neg, t, s_t^2), `[N, B, D]`, `[N, B, D]`, `[N, B]`, `[N, B]`, for cached u0 `[N, B, D]`; prior i
        draws t, the forward noise and the Langevin noise from its own generator, in train-prior's order."""
        T = self.config.T
        t = torch.stack([torch.randint(T, (u0.shape[1],), generator=g, device=self.device) for g in self.generators])
        pairs = [forward_pairs(u0[i], t[i], self.schedule, g) for i, g in enumerate(self.generators)]
        u_t, u_tp1 = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        s_sq = self.step_sizes_sq[t]  # [N, B]
        alpha_next, sigma_next_sq = self.schedule.alpha[t + 1].unsqueeze(-1), self.schedule.sigma[t + 1] ** 2
        is_recovery = (t < T - 1).to(u0.dtype)  # the kernel term is dropped at the top level (DESIGN §3)
        inputs = (u_tp1, t, s_sq, alpha_next, sigma_next_sq, is_recovery)
        s = s_sq.sqrt().reshape(-1, 1)
        half_s_sq = 0.5 * s * s
        u = u_tp1.reshape(self.n * u0.shape[1], -1)
        u = self._chain_static(u, s, half_s_sq, inputs) if self.use_static else self._chain(u, s, half_s_sq, inputs)
        return u_t, u.reshape(u0.shape), t, s_sq

    def _chain(self, u: Tensor, s: Tensor, half_s_sq: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
        """K steps of the one Langevin step (hebmctl.samplers.langevin.langevin_step), N chains of B at once: u `[N*B, D]`."""
        for _ in range(self.config.langevin_steps):
            eps = torch.cat([draw_noise(inputs[0][i], g) for i, g in enumerate(self.generators)])  # prior i: its own [B, D] draw
            u, _ = langevin_step(self._log_density, u, eps, s, half_s_sq, inputs)
        return u

    def _chain_static(self, u: Tensor, s: Tensor, half_s_sq: Tensor, inputs: tuple[Tensor, ...]) -> Tensor:
        """`_chain` on static buffers, replayed as a CUDA graph when captured (hebmctl.samplers.graphs.StaticStep)."""
        density = Density(fn=self._log_density, inputs=inputs, key="sweep")
        if self.static is None:
            self.static = StaticStep(density, u, s, half_s_sq, True, self.capture, torch.cuda.graph_pool_handle() if self.capture else None)
        self.static.load(density, u, s, half_s_sq)
        n = self.n

        def fill(eps: Tensor) -> None:  # prior i's rows from its own generator, as _chain draws them
            for i, g in enumerate(self.generators):
                eps.view(n, -1, eps.shape[-1])[i].normal_(generator=g)

        return self.static.chain(self.config.langevin_steps, fill)[0]

    def update(self, u0: Tensor, step: int) -> Tensor:
        """One update of every prior on cached u0 `[N, B, D]`; returns per-prior statistics `[N, 6]` on the device
        (loss, gap in the loss's units, mean G(pos), mean G(neg), gradient norm, finite flag); raises
        DivergenceError (one host sync per update) when a prior is non-finite or runs away."""
        u_t, u_neg, t, s_sq = self.negatives(u0)
        pos, neg = self.neg_energy(u_t, t), self.neg_energy(u_neg, t)  # [N, B]
        scaled_gap = ((pos - neg) / s_sq).mean(1)  # [N]: the diffusion loss is its negative (Diff-EBM eq. 12-13)
        loss = -scaled_gap
        if self.config.energy_l2 > 0:
            loss = loss + self.config.energy_l2 * (pos.pow(2) + neg.pow(2)).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # the priors' weights are disjoint: each gets its own loss's gradient
        grad_norm = self._clip()
        finite = torch.isfinite(loss) & torch.isfinite(pos).all(1) & torch.isfinite(neg).all(1) & torch.isfinite(grad_norm)
        stats = torch.stack([loss, scaled_gap, pos.mean(1), neg.mean(1), grad_norm, finite.to(loss.dtype)], 1).detach()
        self._check(stats, step)
        self.optimizer.step()
        self._ema(step)
        return stats

    def _clip(self) -> Tensor:
        """Per-prior gradient-norm clip (torch.nn.utils.clip_grad_norm_ applied to each prior alone); norms `[N]`."""
        grads = [p.grad for p in self.trained.values()]
        norms = torch.stack([g.reshape(self.n, -1).norm(dim=1) for g in grads]).norm(dim=0)  # [N]
        coef = (self.config.grad_clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.reshape((self.n,) + (1,) * (g.dim() - 1)))
        return norms

    def _check(self, stats: Tensor, step: int) -> None:
        values = stats.tolist()  # the update's one host sync
        for i, (_, gap, _, _, _, finite) in enumerate(values):
            if not finite or abs(gap) > self.config.max_energy_gap:
                raise DivergenceError(f"Prior {i} of the batched sweep diverged at update {step + 1} (non-finite values or |energy gap| "
                                      f"{abs(gap):.3g} > --max-energy-gap). The sweep has no rollback: train that prior alone with "
                                      "train-prior, which rolls back with a halved learning rate.")

    def _ema(self, step: int) -> None:
        """ema <- d ema + (1 - d) w, d = min(decay, (1 + step) / (10 + step)) (hebmctl.models.ema.ema_update)."""
        d = min(self.config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, weight in self.trained.items():
                self.ema[name].lerp_(weight, 1 - d)

    def energy_state(self, i: int, ema: bool = True) -> dict[str, Tensor]:
        """Prior i's energy state dict (EMA weights by default), named as a lone JointEnergy's."""
        source = self.ema if ema else self.trained
        state = {name.removeprefix("energy."): w[i].detach().clone() for name, w in source.items()} | {
            name.removeprefix("energy."): b[i].clone() for name, b in self.frozen.items() if name.startswith("energy.")}
        return {name: value for name, value in state.items() if name in self.saved_keys}
