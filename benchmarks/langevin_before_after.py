"""CPU cost of the Langevin loop after issue 13 (one step function, runners) against the loop before it, interleaved.

    python benchmarks/langevin_before_after.py [--repeats 15] [--steps 20] [--batch-size 256]

On a shared machine two runs of benchmarks/langevin_overhead.py minutes apart differ by 2x (the other jobs' load
moves), which hides a 10 % change. Here both loops run in one process, alternating, on the same default-size
networks (hvae 64/32/16, diffusion energy width 200, depth 2, T = 3; random weights: timings do not depend on
them) and the same conditional density; the minimum over repetitions is the least disturbed time. The "before"
loop is the one of commit 022b04f, copied verbatim below. Also checks that both give bitwise the same chain.
Writes benchmarks/results/langevin_before_after.json.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import emit

from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.samplers import anchor_step_sizes_sq, conditional_log_density, drl_schedule, langevin


def before(log_density, u_init, n_steps, s, generator):
    """The loop of hebmctl.samplers.langevin.langevin at commit 022b04f (statistics included)."""
    half_s_sq = 0.5 * s * s
    u, log_p_means, grad_norm_means = u_init.detach().clone(), [], []
    for _ in range(n_steps):
        with torch.enable_grad():
            u_req = u.detach().requires_grad_(True)
            log_p = log_density(u_req)
            (grad,) = torch.autograd.grad(log_p.sum(), u_req)
        grad = grad.detach()
        log_p_means.append(log_p.detach().mean())
        grad_norm_means.append(grad.flatten(1).norm(dim=1).mean())
        u = u + half_s_sq * grad
        u = u + s * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    torch.stack(log_p_means).cpu(), torch.stack(grad_norm_means).cpu()
    return u


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = HierarchicalVAE((28, 28, 1), (64, 32, 16)).eval().requires_grad_(False)
    energy = JointEnergy(model.group_dims, width=200, depth=2, n_levels=3).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(args.batch_size, model.latent_dim, generator=g)
    t = torch.randint(3, (args.batch_size,), generator=g)
    schedule = drl_schedule(3)
    s_sq = anchor_step_sizes_sq(schedule)
    density = conditional_log_density(lambda v, tt: energy(model.u_to_z(v), tt), u, t, schedule, s_sq)
    s = s_sq[t].sqrt().reshape(-1, 1)
    loops = {"before": lambda seed: before(density, u, args.steps, s, torch.Generator().manual_seed(seed)),
             "after": lambda seed: langevin(density, u, args.steps, s.flatten(), torch.Generator().manual_seed(seed))[0]}
    same = torch.equal(loops["before"](1), loops["after"](1))
    times: dict[str, list[float]] = {name: [] for name in loops}
    load = os.getloadavg()[0]
    for r in range(args.repeats):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            loops[name](r)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    summary = {name: {"min": min(v), "median": sorted(v)[len(v) // 2]} for name, v in times.items()}
    ratios = {f"after_over_before_{k}": round(summary["after"][k] / summary["before"][k], 3) for k in ("min", "median")}
    per_step = {name: {f"{k}_ms_per_step": round(x, 3) for k, x in v.items()} for name, v in summary.items()}
    emit("langevin_before_after", {"settings": vars(args), "bitwise_same_chain": same, "load_average_before": load,
                                   "load_average_after": os.getloadavg()[0], "per_step": per_step} | ratios)


if __name__ == "__main__":
    main()
