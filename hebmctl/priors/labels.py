"""Label coupling (DESIGN §3 "Labels"; Diff-EBM sec. 3.3 / App. A.2; CDRL sec. 3.5, 4.5): how a labelled energy's
per-class outputs become the negative energy a sampler or a loss sees.

The energy network's label heads give logits `[B, K]`: F(z, y) for the classes y = 0..C-1, then (with label dropout)
F(z, null) at index C. Every quantity is formed in the units of the density the sampler uses: a level's density holds
G / c with c = s_t^2 (diffusion scheme, scaled parametrisation) or c = 1 (joint scheme), so
- the marginal is c * logsumexp_y (F(z, y) / c) over the real classes (Diff-EBM: p(u_0 | u_1) = sum_y p(u_0, y | u_1));
- p(y | z) = softmax_y (F(z, y) / c), whose cross-entropy the training adds;
- a conditional target is F(z, y), guided (1 + w) F(z, y) - w F(z, null) (CDRL sec. 3.5), and several targets compose
  as a product of experts, the sum of their energies (CDRL sec. 4.5).

Targets per row `[B, M]` (M experts): a class index, MARGINAL (-1), or C (the null class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn
from torch import Tensor

from hebmctl.schemas.prior import LabelCoupling

MARGINAL = -1
"""Target of a row that uses the marginal logsumexp_y F(z, y)."""


def class_set_table(sets: Sequence[Sequence[int]], n_classes: int) -> Tensor:
    """`[S, C]` bool: row s marks the classes of set s (the `members` rows of a set expert, `sample --class 9+10+11`)."""
    table = torch.zeros(len(sets), n_classes, dtype=torch.bool)
    for row, members in enumerate(sets):
        table[row, list(members)] = True
    return table


@dataclass(frozen=True)
class ClassCondition:
    """What `sample --class / --guidance` asks at the coupled level: targets `[B, M]` (class indices, M experts composed
    as a product of experts) and the guidance weight w (0: no guidance)."""

    targets: Tensor
    guidance: float = 0.0
    members: Tensor | None = None
    """`[B, M, C]` bool, only when an expert is a set of classes (`sample --class 9+10+11`): the classes each expert
    admits, its energy c * logsumexp over them (y in the set: p(z | y in S) = sum_{y in S} p(z, y) / p(S)); None: every
    expert is its single target."""

    composition: str = "sum"
    """How M > 1 experts combine: "sum" (CDRL sec. 4.5's product of experts, sum_j E_j, which counts the prior p(z) M
    times) or "conjunction" (Liu et al. 2022's AND, the prior counted once: U + sum_j (E_j - U), U the marginal)."""

    def rows(self, start: int, stop: int) -> "ClassCondition":
        """The condition of images start..stop-1."""
        members = None if self.members is None else self.members[start:stop]
        return ClassCondition(self.targets[start:stop], self.guidance, members, self.composition)


@dataclass(frozen=True)
class LabelHeads:
    """The label coupling of a trained energy (from its `LabelCoupling` record)."""

    coupling: LabelCoupling

    @property
    def n_classes(self) -> int:
        return self.coupling.n_classes

    @property
    def null_index(self) -> int:
        return self.coupling.n_classes

    def marginal(self, logits: Tensor, scale: Tensor) -> Tensor:
        """c * logsumexp_y (F(z, y) / c) over the real classes: logits `[B, K]`, scale c `[B]` -> `[B]`."""
        return scale * torch.logsumexp(logits[:, : self.n_classes] / scale[:, None], dim=1)

    def conditional(self, logits: Tensor, targets: Tensor, guidance: float, scale: Tensor, members: Tensor | None = None,
                    composition: str = "sum") -> Tensor:
        """sum_j E_j `[B]` over the experts targets `[B, M]`: E_j = F(z, y_j), the marginal where y_j = MARGINAL, the set's
        c * logsumexp_{y in S_j} (F(z, y) / c) where `members` `[B, M, C]` admits more than one class, and with guidance
        w > 0 the guided (1 + w) E_j - w F(z, null) (CDRL sec. 3.5); the sum is the product of experts (sec. 4.5). With
        composition "conjunction" the marginal U = c * logsumexp_y F / c is counted once: U + sum_j (E_j - U) (Liu et al.
        2022, in energies); one expert is the same either way."""
        picked = logits.gather(1, targets.clamp(min=0).to(logits.device))  # [B, M]
        picked = torch.where(targets.to(logits.device) == MARGINAL, self.marginal(logits, scale)[:, None], picked)
        if members is not None:
            picked = torch.where(members.sum(2).to(logits.device) > 1, self.set_energy(logits, scale, members), picked)
        if guidance:
            picked = (1 + guidance) * picked - guidance * logits[:, self.null_index : self.null_index + 1]
        if composition == "conjunction" and picked.shape[1] > 1:
            return picked.sum(dim=1) - (picked.shape[1] - 1) * self.marginal(logits, scale)
        return picked.sum(dim=1)

    def set_energy(self, logits: Tensor, scale: Tensor, members: Tensor) -> Tensor:
        """c * logsumexp_{y in S_j} (F(z, y) / c) `[B, M]` of the class sets `members` `[B, M, C]` (bool); the marginal is the
        set of every class."""
        scaled = (logits[:, None, : self.n_classes] / scale[:, None, None]).expand(-1, members.shape[1], -1)  # [B, M, C]
        return scale[:, None] * torch.logsumexp(scaled.masked_fill(~members.to(logits.device), float("-inf")), dim=2)

    def neg_energy(self, logits: Tensor, scale: Tensor, coupled: Tensor, condition: ClassCondition | None) -> Tensor:
        """The negative energy `[B]` of logits `[B, K]`: the condition's at the coupled rows (`coupled` `[B]` bool, the
        level-0 rows), the marginal elsewhere and when there is no condition."""
        marginal = self.marginal(logits, scale)
        if condition is None:
            return marginal
        conditional = self.conditional(logits, condition.targets, condition.guidance, scale, condition.members, condition.composition)
        return torch.where(coupled, conditional, marginal)

    def training_targets(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """Training targets `[B, 1]` of the coupled rows: the cached label y `[B]`, replaced by the null class with probability
        `label_dropout` (CDRL sec. 3.5; no random draw without a null class). The coupled rows' recovery likelihood is then
        that of p(u_0 | u_1, y), with negatives from the conditional chain: the chains `sample --class` runs are the
        ones trained (with the marginal's negatives the class logits differ by O(s_0^2) and short chains ignore them,
        docs/decisions.md)."""
        if not self.coupling.null_class:
            return y[:, None].to(torch.long)
        drop = torch.rand(y.shape, generator=generator, device=y.device) < self.coupling.label_dropout
        return torch.where(drop, self.null_index, y).to(torch.long)[:, None]

    def training_condition(self, y: Tensor, generator: torch.Generator) -> ClassCondition:
        """The condition of the coupled rows' training chains for cached labels y `[B]`: `training_targets`, and with factors
        (--label-factors) each row not dropped to the null class is conditioned, with probability 1 / (1 + F) each, on its
        class or on one of its F factor values: the set of classes that share that value (`members` `[B, 1, C]`), so the
        recovery likelihood trains p(u_0 | u_1, y in S), the expert `sample --class` builds for a factor value. Without
        factors no extra random number is drawn."""
        targets = self.training_targets(y, generator)
        sizes = self.coupling.factor_sizes
        if not sizes:
            return ClassCondition(targets)
        codes = self.factor_codes().to(y.device)  # [C, F]
        choice = torch.randint(len(sizes) + 1, y.shape, generator=generator, device=y.device)  # 0: the class, k: factor k
        own = targets[:, 0].clamp(max=self.n_classes - 1)  # a dropped row's code is unused
        chosen = codes[own].gather(1, (choice - 1).clamp(min=0)[:, None])  # [B, 1]: the row's value of its chosen factor
        per_class = codes.gather(1, (choice - 1).clamp(min=0)[None, :].expand(self.n_classes, -1))  # [C, B]: each class's value
        members = per_class.T == chosen  # [B, C]: the classes sharing the row's value
        members &= ((choice > 0) & (targets[:, 0] != self.null_index))[:, None]  # class rows and null rows: no set
        return ClassCondition(targets, members=members[:, None, :])

    def factor_codes(self) -> Tensor:
        """`[C, F]` int64: class y's value of each factor, y = (f1 * n2 + f2) * n3 + ... (mixed radix, first factor slowest)."""
        sizes = self.coupling.factor_sizes or ()
        y, codes = torch.arange(self.n_classes), []
        for size in reversed(sizes):
            codes.append(y % size)
            y = y // size
        return torch.stack(codes[::-1], dim=1)

    def cross_entropy(self, logits: Tensor, scale: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        """Weighted mean over the selected rows (`rows` `[B]` bool) of -log softmax_y (F(z, y) / c) at the cached label
        y `[B]` (Diff-EBM App. A.2); 0 when no row is selected."""
        if not bool(rows.any()):
            return logits.sum() * 0.0
        scaled = logits[rows, : self.n_classes] / scale[rows, None]
        return self.coupling.label_weight * F_nn.cross_entropy(scaled, y[rows].to(torch.long))
