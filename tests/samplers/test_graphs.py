"""The Langevin step runners: the eager loop gives bitwise the numbers of the loop before issue 13, and the
CUDA-graph wrapper with capture off (its static buffers, the same step function) gives bitwise the eager numbers.
The capture itself needs CUDA (benchmarks/gpu_suite.py checks it there)."""

from __future__ import annotations

import pytest
import torch

from hebmctl import priors
from hebmctl.models.energy import JointEnergy
from hebmctl.models.hvae import HierarchicalVAE
from hebmctl.samplers import anchor_step_sizes_sq, conditional_log_density, drl_schedule, joint_prior_log_density, langevin
from hebmctl.samplers.graphs import CaptureUnavailable, LangevinGraphs, step_runner
from hebmctl.samplers.langevin import EAGER, langevin_step
from hebmctl.schemas.prior import TrainPriorConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_langevin(log_density, u_init, n_steps, s, generator):
    """The loop as it was before issue 13 (commit 022b04f), kept verbatim as the reference: -> (u_K, log_p means [K],
    grad norm means [K])."""
    s = torch.as_tensor(s, dtype=u_init.dtype).detach()
    s = (s.expand(u_init.shape[0]) if s.dim() == 0 else s).reshape(-1, 1)
    half_s_sq = 0.5 * s * s
    u, log_ps, norms = u_init.detach().clone(), [], []
    for _ in range(n_steps):
        with torch.enable_grad():
            u_req = u.detach().requires_grad_(True)
            log_p = log_density(u_req)
            (grad,) = torch.autograd.grad(log_p.sum(), u_req)
        grad = grad.detach()
        log_ps.append(log_p.detach().mean())
        norms.append(grad.flatten(1).norm(dim=1).mean())
        u = u + half_s_sq * grad
        u = u + s * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    return u, torch.stack(log_ps), torch.stack(norms)


@pytest.fixture(scope="module")
def nets():
    """A conditional-hierarchy backbone (non-trivial T) and a time-conditioned energy, random weights."""
    torch.manual_seed(0)
    model = HierarchicalVAE((28, 28, 1), (8, 4, 2), channels=8, mlp_hidden=16).eval().requires_grad_(False)
    energy = JointEnergy(model.group_dims, width=16, depth=2, n_levels=3)
    return model, energy


def conditional(nets, batch: int, seed: int):
    model, energy = nets
    g = torch.Generator().manual_seed(seed)
    u_tp1 = torch.randn(batch, model.latent_dim, generator=g)
    t = torch.randint(3, (batch,), generator=g)
    schedule = drl_schedule(3)
    s_sq = anchor_step_sizes_sq(schedule, 1e-2)
    density = conditional_log_density(lambda u, tt: energy(model.u_to_z(u), tt), u_tp1, t, schedule, s_sq)
    return density, u_tp1, s_sq[t].sqrt()


def test_eager_loop_is_bitwise_the_loop_before_issue_13(nets):
    density, u_init, s = conditional(nets, 32, 1)
    u_ref, log_p_ref, norm_ref = reference_langevin(density, u_init, 7, s, torch.Generator().manual_seed(5))
    u, stats = langevin(density, u_init, 7, s, torch.Generator().manual_seed(5))
    assert torch.equal(u, u_ref)
    assert torch.equal(stats.log_density, log_p_ref) and torch.equal(stats.grad_norm, norm_ref)
    model, energy = nets
    joint = joint_prior_log_density(lambda v: energy(model.u_to_z(v), torch.zeros(v.shape[0], dtype=torch.long)))
    u_ref, _, _ = reference_langevin(joint, u_init, 5, 0.1, torch.Generator().manual_seed(2))
    assert torch.equal(langevin(joint, u_init, 5, 0.1, torch.Generator().manual_seed(2))[0], u_ref)


def test_static_buffers_without_capture_give_the_eager_numbers_chain_after_chain(nets):
    runner = LangevinGraphs(capture=False)
    neg_energy = lambda u, t: nets[1](nets[0].u_to_z(u), t)  # noqa: E731 one callable: one cache key for every chain
    for seed in (1, 2, 3):  # new u_{t+1}, levels and step sizes each chain: the buffers must be refilled
        g = torch.Generator().manual_seed(seed)
        u_tp1, t = torch.randn(16, nets[0].latent_dim, generator=g), torch.randint(3, (16,), generator=g)
        schedule = drl_schedule(3)
        s_sq = anchor_step_sizes_sq(schedule, 1e-2)
        density = conditional_log_density(neg_energy, u_tp1, t, schedule, s_sq)
        u_e, stats_e = langevin(density, u_tp1, 6, s_sq[t].sqrt(), torch.Generator().manual_seed(seed), runner=EAGER)
        u_s, stats_s = langevin(density, u_tp1, 6, s_sq[t].sqrt(), torch.Generator().manual_seed(seed), runner=runner)
        assert torch.equal(u_e, u_s) and torch.equal(stats_e.log_density, stats_s.log_density)
        assert torch.equal(stats_e.grad_norm, stats_s.grad_norm)
    assert len(runner.steps) == 1  # one static step reused by the three chains
    smaller = conditional_log_density(neg_energy, u_tp1[:8], t[:8], schedule, s_sq)
    langevin(smaller, u_tp1[:8], 2, 0.01, torch.Generator().manual_seed(0), runner=runner)
    assert len(runner.steps) == 2  # another shape: another static step


def test_a_plain_closure_is_never_captured(nets):
    runner = LangevinGraphs(capture=False)
    u = torch.randn(4, nets[0].latent_dim)
    out, _ = langevin(lambda v: -v.pow(2).sum(1), u, 3, 0.1, torch.Generator().manual_seed(0), runner=runner)
    assert not runner.steps
    assert torch.equal(out, langevin(lambda v: -v.pow(2).sum(1), u, 3, 0.1, torch.Generator().manual_seed(0))[0])


@pytest.mark.parametrize("scheme", ["diffusion", "joint", "cooperative"])
def test_prior_training_and_sampling_see_in_place_weight_updates(nets, scheme):
    """Two updates with an optimizer step between them: the static path (which reads the parameters in place, as a
    replayed graph does) gives bitwise the eager prior's negatives, losses and samples."""
    model = nets[0]
    config = TrainPriorConfig(run=".", scheme=scheme, width=16, depth=1, langevin_steps=4, batch_size=16)
    outcomes = {}
    for name in ("eager", "static"):
        prior = priors.for_training(config, model, torch.device("cpu"))
        if name == "static":
            prior.runner = LangevinGraphs(capture=False)
        optimizer = torch.optim.Adam(prior.energy.parameters(), lr=1e-2)
        g, u0, records = torch.Generator().manual_seed(3), torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(9)), []
        for _ in range(2):
            outcome = prior.training_outcome(u0, g)
            optimizer.zero_grad()
            outcome.loss.backward()
            optimizer.step()
            records += [outcome.neg.detach(), outcome.loss.detach()]
        records.append(prior.draw(8, torch.Generator().manual_seed(4))[0])
        outcomes[name] = records
    assert all(torch.equal(a, b) for a, b in zip(outcomes["eager"], outcomes["static"], strict=True))


def test_compile_modes_on_a_cpu_only_device():
    cpu = torch.device("cpu")
    assert step_runner("off", cpu) is EAGER and step_runner("auto", cpu) is EAGER
    with pytest.raises(CaptureUnavailable, match="--compile auto"):
        step_runner("on", cpu)
    config = TrainPriorConfig(run=".", scheme="diffusion", width=8, depth=1)
    with pytest.raises(CaptureUnavailable):
        priors.for_training(config, HierarchicalVAE((28, 28, 1), (8, 4, 2), channels=8, mlp_hidden=16), cpu, "on")


@pytest.mark.parametrize("kind", ["conditional", "joint"])
def test_the_step_has_no_host_sync_so_a_cuda_graph_can_capture_it(nets, kind):
    """Tracing the step with fake tensors (make_fx) fails on anything that reads a value on the host (.item(), float(),
    a branch on a tensor): exactly what a CUDA-graph capture cannot contain. The step of both densities traces; a
    density with a float() does not (the check can fail)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    density, u, s = conditional(nets, 6, 0)
    if kind == "joint":
        model, energy = nets
        density = joint_prior_log_density(lambda v: energy(model.u_to_z(v), torch.zeros(v.shape[0], dtype=torch.long)))

    def traced(fn):
        step = lambda u, eps, s, h, *inputs: langevin_step(fn, u, eps, s, h, inputs)  # noqa: E731
        return make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True)(u, torch.randn_like(u), s.reshape(-1, 1),
                                                                                  0.5 * s.reshape(-1, 1) ** 2, *density.inputs)

    assert len(traced(density.fn).graph.nodes) > 50
    with pytest.raises(Exception, match="data-dependent"):
        traced(lambda x, *inputs: density.fn(x, *inputs) * float(x.sum()))


@pytest.mark.parametrize("stage", ["train-prior", "sample"])
def test_compile_on_without_cuda_is_refused_before_any_folder_work(stage, tmp_path):
    from typer.testing import CliRunner

    from hebmctl.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, [stage, "--run", str(tmp_path / "run"), "--compile", "on", "--device", "cpu"])
    assert result.exit_code == 2 and "--compile auto" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
