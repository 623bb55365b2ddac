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
