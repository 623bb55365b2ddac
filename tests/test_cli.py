"""The command line as a user meets it: help, dry runs, config files, exit codes and messages."""

import json
import shutil

from typer.testing import CliRunner

from hebmctl import __version__
from hebmctl.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help_list_the_stages():
    assert invoke("--version").stdout.strip() == f"hebmctl {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    for stage in ("pretrain", "cache-latents", "pipeline", "inspect", "report"):
        assert stage in result.stdout


def test_option_help_comes_from_the_config_descriptions():
    out = " ".join(invoke("pretrain", "--help").stdout.replace("│", " ").split())  # undo rich's wrapping
    assert "Latent group sizes, bottom (z_1) to top (z_L), comma-separated. (default: 64,32,16)" in out


def test_dry_run_prints_the_resolved_config(tmp_path):
    result = invoke("pretrain", "--run", tmp_path / "r", "--latent-dims", "8,4", "--dry-run")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["latent_dims"] == [8, 4] and config["out"] == str(tmp_path / "r" / "backbone")
    assert not (tmp_path / "r").exists()


def test_config_file_values_are_overridden_by_options(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('run = "somewhere"\n[pretrain]\nsteps = 7\nlatent-dims = [4, 2]\n')
    config = json.loads(invoke("pretrain", "--config", cfg, "--steps", 9, "--dry-run").stdout)
    assert config["steps"] == 9 and config["latent_dims"] == [4, 2] and config["run"] == "somewhere"


def test_bad_inputs_exit_2_with_a_message_and_no_traceback(tmp_path):
    cases = [
        ("pretrain", "--run", tmp_path, "--data", "nope:/x"),
        ("pretrain", "--run", tmp_path, "--data", f"mnist:{tmp_path / 'missing'}"),
        ("pretrain", "--run", tmp_path, "--inference", "sideways"),
        ("pretrain", "--config", tmp_path / "missing.toml"),
        ("cache-latents", "--backbone", tmp_path / "no-backbone", "--out", tmp_path / "lat"),
        ("train-prior", "--run", tmp_path, "--scheme", "sideways"),
        ("sample", "--run", tmp_path, "--prior", "nope"),
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "backbone").exists() and not (tmp_path / "lat").exists()


def test_inspect_validates_files(tiny_backbone, tmp_path):
    ok = invoke("inspect", tiny_backbone)
    assert ok.exit_code == 0 and "backbone artifact" in ok.output
    as_json = invoke("inspect", tiny_backbone, "--json")
    assert json.loads(as_json.stdout)["kind"] == "backbone"
    broken = tmp_path / "b"
    shutil.copytree(tiny_backbone, broken)
    (broken / "recon_grid.png").write_bytes(b"not a png")
    result = invoke("inspect", broken)
    assert result.exit_code == 1 and "recon_grid.png" in result.output
    assert invoke("inspect", tmp_path / "empty").exit_code == 2


def test_pipeline_dry_run_uses_the_builtin_demo(tmp_path):
    result = invoke("pipeline", "--run", tmp_path / "demo", "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["pretrain"]["data"] == "builtin:mnist-10k"
    assert plan["cache_latents"]["backbone"] == str(tmp_path / "demo" / "backbone")
    assert plan["train_prior:diffusion"]["scheme"] == "diffusion"
    assert {"sample:gaussian", f"sample:{tmp_path / 'demo' / 'priors' / 'diffusion'}"} <= set(plan)
