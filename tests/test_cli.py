"""The command line as a user meets it: help, dry runs, config files, exit codes and messages."""

import json
import shutil
import sys

import pytest
from typer.testing import CliRunner

from hebmctl import __version__
from hebmctl.cli import app

from tests.conftest import REPO

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
    assert "hvae, vlae: latent group sizes, bottom (z_1) to top (z_L), comma-separated. Default 64,32,16 (hvae), 4,4,4 (vlae" in out


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


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())  # undo rich's boxes and wrapping


def test_errors_name_the_flag_and_the_allowed_range(tmp_path):
    cases = [
        (("sample", "--run", tmp_path, "--temperature", "nan"), "--temperature must be a finite number > 0, got nan"),
        (("sample", "--run", tmp_path, "--temperature", "inf"), "--temperature must be a finite number > 0, got inf"),
        (("train-prior", "--run", tmp_path, "--langevin-steps", "0"), "--langevin-steps must be an integer >= 1, got 0"),
        (("pretrain", "--run", tmp_path, "--ema-decay", "1"), "--ema-decay must be a finite number >= 0 and < 1, got 1.0"),
        (("pretrain", "--run", tmp_path, "--latent-dims", "8,,4"), "--latent-dims has an empty item in '8,,4'"),
        (("eval", "ood", "--run", tmp_path), "--ood is required"),
    ]
    for args, phrase in cases:
        result = invoke(*args, "--dry-run")
        assert result.exit_code == 2, (args, result.output)
        out = _flat(result.output)
        assert phrase in out and "langevin_steps" not in out and "Traceback" not in out, out


def test_a_misspelled_config_table_is_an_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[pretrian]\nsteps = 3\n")
    result = invoke("pretrain", "--config", cfg, "--dry-run")
    out = _flat(result.output)
    assert result.exit_code == 2 and "[pretrian], which no stage reads (did you mean [pretrain]?)" in out and "[eval_ood]" in out
    cfg.write_text("[[train_prior]]\nscheme = 'joint'\n[pretrain]\nsteps = 3\n")  # a pipeline file works for one stage
    assert json.loads(invoke("train-prior", "--config", cfg, "--dry-run").stdout)["scheme"] == "joint"


def test_dry_run_checks_the_data_sizes(tmp_path):
    import numpy as np

    np.savez(tmp_path / "odd.npz", images=np.zeros((20, 30, 30), np.uint8))
    result = invoke("pretrain", "--run", tmp_path / "r", "--data", f"npz:{tmp_path / 'odd.npz'}", "--dry-run")
    assert result.exit_code == 2 and "divisible by 4" in _flat(result.output)
    assert not (tmp_path / "r").exists()


def test_help_shows_brackets_one_default_and_no_type_for_flags():
    sample_help = _flat(invoke("sample", "--help").stdout)
    assert "[pretrain]" in sample_help  # not eaten as Rich markup
    assert "Backbone folder (default: RUN/backbone). --prior" in sample_help  # no second "(default: none)"
    assert "--hierarchical --no-hierarchical Also write" in sample_help  # no <bool> metavar
    assert "(default: off)" in sample_help
    ood_help = _flat(invoke("eval", "ood", "--help").stdout)
    assert "PydanticUndefined" not in ood_help and "backbone). (required)" in ood_help
    for command in (["pretrain"], ["cache-latents"], ["train-prior"], ["sample"], ["pipeline"], ["eval", "ood"], ["eval", "fid"]):
        text = invoke(*command, "--help").stdout
        assert "DESIGN" not in text and "§" not in text, command


TINY_PRETRAIN = ["--limit", "512", "--eval-limit", "128", "--latent-dims", "8,4,2", "--channels", "8", "--mlp-hidden", "32",
                 "--batch-size", "32", "--kl-warmup-steps", "4", "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu"]
"""The CLI form of tests.conftest.tiny_pretrain_config (without --steps)."""


def _python(args, **kwargs):
    import os
    import subprocess

    env = os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True, **kwargs)


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import time

    out = tmp_path / "b"
    # A shell that starts pytest in the background (no job control) leaves SIGINT ignored, and an ignored signal stays
    # ignored in children: give the child a terminal's default disposition, where Ctrl-C arrives.
    child = _python(["-m", "hebmctl", "pretrain", "--out", str(out), "--steps", "100000", *TINY_PRETRAIN], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "ckpt-000004" / "state.json").is_file():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()  # a failed wait must not leave a 100,000-step training running
    assert child.returncode == 130, err
    assert "re-run the same command to resume" in " ".join(err.split()) and "Traceback" not in err


RUN_AS_USER = """
import json, sys
from typer.testing import CliRunner
from hebmctl.cli import app
results = {name: CliRunner().invoke(app, args) for name, args in json.loads(sys.argv[1]).items()}
print(json.dumps({name: [r.exit_code, r.output] for name, r in results.items()}))
"""


def test_read_only_output_folders_give_a_clear_error(tmp_path, tiny_backbone):
    """Run as a user without the power to override file permissions (root drops CAP_DAC_OVERRIDE)."""
    import os
    import shutil
    import subprocess

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be enforced")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    ro = tmp_path / "ro"
    shutil.copytree(tiny_backbone, ro / "backbone")
    tiny = ["--out", str(ro / "backbone"), "--steps", "12", *TINY_PRETRAIN]
    cases = {
        "up_to_date": ["pretrain", *tiny],
        "force": ["pretrain", *tiny, "--force"],
        "sample": ["sample", "--backbone", str(ro / "backbone"), "--out", str(ro / "samples"), "--n", "2", "--device", "cpu"],
        "retrain": ["pretrain", *tiny, "--steps", "13"],
    }
    subprocess.run(["chmod", "-R", "a-w", str(ro)], check=True)
    try:
        env = os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"}
        done = subprocess.run([*prefix, sys.executable, "-c", RUN_AS_USER, json.dumps(cases)], cwd=REPO, env=env, capture_output=True,
                              text=True)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(ro)], check=True)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["up_to_date"][0] == 0 and "up to date" in results["up_to_date"][1]  # a read-only artifact can still be used
    for name in ("force", "sample"):
        code, output = results[name]
        assert code == 2 and "Cannot write the output folder" in " ".join(output.split()) and "Traceback" not in output, output
    assert results["retrain"][0] == 2 and "other settings" in results["retrain"][1]
    assert (ro / "backbone" / "manifest.json").is_file() and not (ro / "samples").exists()
