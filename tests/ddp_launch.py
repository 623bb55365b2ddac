"""Start N processes of one process group from a test, as torchrun would (CPU, gloo).

`start` sets the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and runs `python ARGS` once per rank, one intra-op thread each, with this
checkout first on the path; `torchrun_command` runs the real launcher. Every process has a short
collective timeout, so a broken test fails instead of hanging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"OMP_NUM_THREADS": "1", "HEBMCTL_DIST_TIMEOUT_S": "60", "COLUMNS": "200"}, **extra)
    return env


@dataclass
class Ranks:
    """The processes of one group; `wait` returns (exit code, stdout + stderr) per rank."""

    processes: list[subprocess.Popen]

    def wait(self, timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
        results = []
        for process in self.processes:
            try:
                out, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
                out = f"[killed by the test after {timeout} s]\n{out}"
            results.append((process.returncode, out))
        return results


def start(args: list[str], nproc: int = 2, cwd: Path | None = None, **env: str) -> Ranks:
    """Start `python ARGS` as ranks 0..nproc-1 of one group."""
    port = str(free_port())
    processes = []
    for rank in range(nproc):
        rank_env = base_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
        processes.append(subprocess.Popen([sys.executable, *args], env=rank_env, cwd=cwd, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    return Ranks(processes)


def run_ranks(args: list[str], nproc: int = 2, **env: str) -> list[tuple[int, str]]:
    """`start(...).wait()`, asserting every rank exited 0 (with its output in the message if not)."""
    results = start(args, nproc, **env).wait()
    for rank, (code, out) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{out[-4000:]}"
    return results


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m MODULE -- ARGS` for args `["-m", MODULE, *ARGS]` (the real launcher, one node, a free
    port). The `--` keeps torchrun's parser from reading an option such as `--n` as an abbreviation of its own."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args[:2], "--", *args[2:]]
    return subprocess.run(command, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)


def assert_killed_rank_is_reported(args: list[str], log: Path) -> None:
    """Start `args` on 2 ranks, SIGKILL rank 1 once rank 0 has written a line of `log` (its metrics): rank 0 must exit
    with code 2 within a minute and say which rank died and what to do."""
    ranks = start(args, HEBMCTL_DIST_TIMEOUT_S="30")
    deadline = time.monotonic() + 240
    while not (log.is_file() and log.read_text().strip()):
        assert time.monotonic() < deadline and ranks.processes[0].poll() is None, "rank 0 never reached step 1"
        time.sleep(0.2)
    ranks.processes[1].kill()
    killed_at = time.monotonic()
    (code, output), _ = ranks.wait(timeout=120)
    assert code == 2, output[-3000:]
    assert time.monotonic() - killed_at < 60
    text = " ".join(output.split())
    assert "Rank 0 of 2" in text and "died" in text and "re-run the same command" in text
