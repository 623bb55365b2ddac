"""Energy networks (negative energies F = sum_i f_i) and EBM losses (DESIGN §3)."""

from __future__ import annotations

import pytest
import torch

from hebmctl.models.ebm_losses import (
    diffusion_ebm_loss,
    joint_ebm_loss,
    label_cross_entropy,
)
from hebmctl.models.energy import GroupEnergy, JointEnergy, _level_embedding, sinusoidal_embedding

pytestmark = pytest.mark.usefixtures("single_thread")


DIMS = [3, 5, 2]


def z_batch(b=7, seed=0):
    return torch.randn(b, sum(DIMS), generator=torch.Generator().manual_seed(seed))


def test_group_energy_shapes():
    torch.manual_seed(0)
    f = GroupEnergy(4, width=16, depth=3)
    assert f(torch.randn(6, 4)).shape == (6,)
    f_multi = GroupEnergy(4, width=16, n_outputs=5)
    assert f_multi(torch.randn(6, 4)).shape == (6, 5)
    f_t = GroupEnergy(4, width=16, n_levels=3, time_embed_dim=8, activation="leaky_relu")
    out = f_t(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out.shape == (6,)
    with pytest.raises(ValueError):
        f_t(torch.randn(6, 4))  # time-conditioned: t required
    with pytest.raises(ValueError):
        f(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))  # unconditioned: t refused
    with pytest.raises(ValueError):
        f(torch.randn(6, 3))
    with pytest.raises(ValueError):
        GroupEnergy(4, activation="tanh")


def test_time_conditioning_changes_output():
    torch.manual_seed(0)
    f = GroupEnergy(2, width=16, n_levels=3, time_embed_dim=8)
    z = torch.randn(4, 2).repeat(2, 1)
    t = torch.tensor([0] * 4 + [2] * 4)
    out = f(z, t)
    assert not torch.allclose(out[:4], out[4:])
    emb = sinusoidal_embedding(torch.tensor([0, 1, 5]), 7)
    assert emb.shape == (3, 7) and torch.equal(emb[:, -1], torch.zeros(3))


def test_joint_energy_is_sum_of_groups_and_batch_independent():
    torch.manual_seed(0)
    model = JointEnergy(DIMS, width=16, depth=2)
    z = z_batch()
    F = model(z)
    assert F.shape == (7,)
    z1, z2, z3 = z[:, :3], z[:, 3:8], z[:, 8:]
    by_hand = model.groups[0](z1) + model.groups[1](z2) + model.groups[2](z3)
    assert torch.allclose(F, by_hand, atol=1e-6)
    # No batch coupling: the first 3 rows do not depend on the others.
    assert torch.allclose(model(z[:3]), F[:3], atol=1e-6)
    assert model.total_dim == 10
    with pytest.raises(ValueError):
        model(torch.randn(7, 9))
    with pytest.raises(ValueError):
        model(z, y=torch.zeros(7, dtype=torch.long))  # unlabelled


def test_joint_energy_time_conditioned_sum():
    torch.manual_seed(0)
    model = JointEnergy(DIMS, width=16, n_levels=3, time_embed_dim=8)
    z = z_batch()
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    F = model(z, t)
    assert F.shape == (7,)
    parts = model.group_neg_energies(z, t)
    assert torch.allclose(F, parts[0] + parts[1] + parts[2], atol=1e-6)
    with pytest.raises(ValueError):
        model(z)


def test_spectral_norm_builds_runs_and_bounds_weights():
    torch.manual_seed(0)
    model = JointEnergy(DIMS, width=32, spectral_norm=True, n_levels=2, time_embed_dim=8)
    z = z_batch()
    t = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    model.train()
    for _ in range(30):  # power iterations run in training-mode forwards
        out = model(z, t)
    out.sum().backward()
    assert out.shape == (7,)
    assert model.groups[0].hidden[0].parametrizations.weight.original.grad is not None
    for group in model.groups:
        for layer in list(group.hidden) + [group.out]:
            assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2) < 1.05
    model.eval()
    assert torch.isfinite(model(z, t)).all()


def test_labels_class_logits_and_marginal():
    torch.manual_seed(0)
    n_classes = 4
    model = JointEnergy(DIMS, width=16, n_classes=n_classes, label_groups=[1])
    assert model.groups[1].n_outputs == n_classes
    assert model.groups[0].n_outputs == 1 and model.groups[2].n_outputs == 1
    z = z_batch()
    logits = model.class_logits(z)
    assert logits.shape == (7, n_classes)
    f0, f1, f2 = model.group_neg_energies(z)
    assert f1.shape == (7, n_classes) and f0.shape == (7,)
    assert torch.allclose(logits, f1 + (f0 + f2)[:, None], atol=1e-6)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    assert torch.allclose(model(z, y=y), logits[torch.arange(7), y])
    marginal = model(z)
    manual = torch.log(torch.exp(logits).sum(dim=1))
    assert torch.allclose(marginal, manual, atol=1e-5)
    # Default label_groups = all groups, with time conditioning.
    all_groups = JointEnergy(DIMS, width=16, n_classes=3, n_levels=2, time_embed_dim=8)
    t = torch.zeros(7, dtype=torch.long)
    assert all(g.n_outputs == 3 for g in all_groups.groups)
    lg = all_groups.class_logits(z, t)
    assert torch.allclose(all_groups(z, t), torch.logsumexp(lg, 1))
    with pytest.raises(ValueError):
        JointEnergy(DIMS, n_classes=3, label_groups=[5])
    with pytest.raises(ValueError):
        JointEnergy(DIMS, label_groups=[0])
    with pytest.raises(ValueError):
        JointEnergy(DIMS).class_logits(z)


def test_losses():
    pos = torch.tensor([1.0, 2.0, 3.0])
    neg = torch.tensor([0.0, -1.0, 4.0])
    # Joint-EBM eq. 17: mean F(neg) - mean F(pos) = 1 - 2 = -1.
    assert torch.isclose(joint_ebm_loss(pos, neg), torch.tensor(-1.0))
    # Diff-EBM eq. 12-13: mean(-(pos - neg) / s^2) = mean(-1/1, -3/0.5, 1/0.25) = (-1 - 6 + 4) / 3.
    s_sq = torch.tensor([1.0, 0.5, 0.25])
    assert torch.isclose(diffusion_ebm_loss(pos, neg, s_sq), torch.tensor(-1.0))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ce = label_cross_entropy(logits, torch.tensor([0, 0]))
    expected = 0.5 * (-torch.log_softmax(logits, 1)[0, 0] - torch.log_softmax(logits, 1)[1, 0])
    assert torch.isclose(ce, expected)
    with pytest.raises(ValueError):
        diffusion_ebm_loss(pos, neg, torch.ones(2))
    with pytest.raises(ValueError):
        joint_ebm_loss(pos[:, None], neg)


def test_loss_gradient_direction():
    """Minimising the joint loss raises F on positives and lowers it on negatives."""
    torch.manual_seed(0)
    model = JointEnergy([2], width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pos, neg = torch.full((32, 2), 1.0), torch.full((32, 2), -1.0)
    def energy_gap(pos_energy, neg_energy):  # mean F(pos) - mean F(neg)
        return float(pos_energy.detach().mean() - neg_energy.detach().mean())

    before = energy_gap(model(pos), model(neg))
    for _ in range(10):
        loss = joint_ebm_loss(model(pos), model(neg))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert energy_gap(model(pos), model(neg)) > before + 0.1


@pytest.mark.parametrize("shape", [(6,), (2, 4, 4)])
def test_the_level_table_gives_bitwise_the_formula_and_is_not_saved(shape):
    """The per-level lookup that replaced the per-step sinusoidal formula: same numbers to the bit for every level in
    a batch, same energy as the formula-based path, and no new key in a saved energy (old artifacts still load)."""
    torch.manual_seed(0)
    energy = JointEnergy(group_shapes=[shape], width=8, depth=1, n_levels=4, time_embed_dim=10, conv_channels=4)
    group = energy.groups[0]
    t = torch.randint(4, (37,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(group.level_table[t], sinusoidal_embedding(t, 10))
    assert not any("level_table" in key for key in energy.state_dict())
    z = torch.randn(37, energy.total_dim)
    by_formula = group.time_mlp(sinusoidal_embedding(t, 10))
    assert torch.equal(_level_embedding(group.time_mlp, group.level_table, z, t), by_formula)
    copy = JointEnergy(group_shapes=[shape], width=8, depth=1, n_levels=4, time_embed_dim=10, conv_channels=4)
    copy.load_state_dict(energy.state_dict())  # strict: the table is rebuilt, not loaded
    assert torch.equal(copy(z, t), energy(z, t))
