"""The fault-drill suite's CI version (benchmarks/fault_drills.py --quick, trimmed): a tiny pretrain killed with
SIGKILL at a seeded point and re-run, and a --force run on a full disk; nothing may be lost and no traceback shown."""

from __future__ import annotations

import importlib.util
import signal
import sys

from tests.conftest import REPO


def _drills_module():
    spec = importlib.util.spec_from_file_location("fault_drills", REPO / "benchmarks" / "fault_drills.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fault_drills", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_kill9_and_full_disk_drills_lose_nothing(tmp_path):
    drills_module = _drills_module()
    drills = drills_module.Drills(tmp_path, seed=0, data="builtin:mnist-10k", ood="")
    drills.stages = {"pretrain": drills.stages["pretrain"]}
    drills.make_golden()
    stage = drills.stages["pretrain"]
    drills.signal_drill(stage, signal.SIGKILL)
    drills.disk_drill(stage, "enospc", force=True)
    table = drills_module.table(drills.results, 0.0)
    assert table["drills"] == 2 and table["failures"] == []
    assert (table["identical_results"], table["tracebacks"], table["data_lost"]) == (2, 0, 0)
    assert drills.results[1].fault_clear_error or drills.results[1].fault_exit == 0  # a message, not a traceback


def test_cache_latents_on_a_full_disk_ends_with_a_message_and_resumes(tmp_path):
    """HDF5 failing at different writes of the latent file (file-size limits, seen in the drills): before the fix,
    h5py printed tracebacks for 17,000 bytes and HDF5 crashed at exit (SIGSEGV) for 8,000-18,000 bytes."""
    module = _drills_module()
    drills = module.Drills(tmp_path, seed=0, data="builtin:mnist-10k", ood="")
    drills.stages = {name: drills.stages[name] for name in ("pretrain", "cache-latents")}
    drills.make_golden()
    stage = drills.stages["cache-latents"]
    for limit_bytes in (8000, 17000):
        run = drills.fresh_run(stage)
        fault = module.run_cli(module.stage_args(stage, run), fault=f"fsize:{limit_bytes}")
        assert fault.exit_code == 2 and fault.clear_error, fault.output[-1500:]
        drills.finish(module.Drill("fsize", stage.name, f"fsize:{limit_bytes}"), stage, run, module.digests(run, stage.inputs))
    outcomes = [(d.final_identical, d.traceback, d.data_lost) for d in drills.results]
    assert outcomes == [(True, False, False)] * 2, [d.notes for d in drills.results]
