"""Pipeline plans with evaluation tables, and the FID summary's prior-hole closure."""

from __future__ import annotations

import pytest

from hebmctl.stages.pipeline import fid_summary, load_plan


def test_eval_tables_expand_per_prior(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text(
        'run = "RUN"\n[[train_prior]]\nscheme = "joint"\n[[train_prior]]\nscheme = "diffusion"\n'
        '[eval_recon]\n[eval_fid]\nn = 100\n[eval_ood]\nood = "builtin:mnist-10k"\n[eval_probe]\nepochs = 2\n'
    )
    plan = load_plan(config, tmp_path / "run")
    names = [name for name, _ in plan.evals]
    assert names == ["eval_recon", "eval_probe", "eval_fid:gaussian", "eval_fid:recon", "eval_fid:joint", "eval_fid:diffusion",
                     "eval_ood:gaussian", "eval_ood:joint", "eval_ood:diffusion"]
    fid_configs = [c for name, c in plan.evals if name.startswith("eval_fid")]
    assert {c.n for c in fid_configs} == {100}  # every source at the same N
    assert [c.out.name for c in fid_configs] == ["fid-gaussian", "fid-recon", "fid-joint", "fid-diffusion"]


def test_fid_summary_closure():
    summary = fid_summary({"gaussian": 90.0, "recon": 40.0, "diffusion": 50.0, "joint": 80.0}, 5000)
    assert summary["prior_hole_closure"] == {"diffusion": pytest.approx(0.8), "joint": pytest.approx(0.2)}
    assert summary["fid_ratio_to_gaussian"]["diffusion"] == pytest.approx(50 / 90) and summary["n"] == 5000
