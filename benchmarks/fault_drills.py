"""Fault drills (issue 14): kill, terminate, fill the disk and corrupt every stage, then check nothing is lost.

For every stage (pretrain, cache-latents, train-prior, sample, eval recon / fid / ood / anomaly / probe,
pipeline) on tiny settings, this script first runs the whole chain once, uninterrupted ("golden"), then
runs drills, each in a fresh run folder that holds copies of the stage's golden inputs:

- ``kill9``: start the stage, SIGKILL its process group after a seeded random delay, re-run the same
  command to the end; the artifact must equal the golden one (bitwise on CPU, see ``digest``).
- ``sigterm``: the same with SIGTERM.
- ``enospc``: ``os.fsync`` raises ENOSPC at its K-th call (K seeded): every atomic write fsyncs its
  temporary file before the rename, so this is where a full disk is reported to a careful writer.
  Half of these run with ``--force`` over a complete copy of the golden artifact, which must survive.
- ``fsize``: ``RLIMIT_FSIZE`` (seeded byte limit, SIGXFSZ ignored) makes the kernel refuse any write
  past the limit with EFBIG, in every writer (Python, safetensors' Rust, HDF5's C): a full disk for
  code we do not control.
- ``corrupt``: one byte of one file of a complete artifact is flipped (seeded offset); the stage that
  wrote it is re-run (it must recompute and match the golden artifact, or stop with a clear error),
  and for the files later stages read, the next stage is run too (it must stop with a clear error).
- ``ckpt``: a killed pretrain / train-prior run gets its newest checkpoint corrupted; the re-run must
  fall back to the previous one and still match the golden artifact.

A faulted run must end with exit 0 or a message, never a traceback. Outcome counts go to one JSON table
(printed and written to ``benchmarks/results/fault_drills.json``): drills, identical results, clear
errors, tracebacks, silent acceptances of damaged input, data lost (a final artifact that differs from
the golden one or never completes, or a pre-existing artifact destroyed). The faults are injected by
this script's ``child`` mode, which installs them and then runs the CLI in the same process, so
hebmctl itself has no fault hooks.

    OMP_NUM_THREADS=1 python benchmarks/fault_drills.py --seed 0 --per-stage 4   # the full suite
    python benchmarks/fault_drills.py --quick                                    # a few drills (CI runs this as a test)
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULT_PATH = REPO / "benchmarks" / "results" / "fault_drills.json"
CHILD_TIMEOUT_S = 900
VOLATILE_KEY = re.compile(r"(_s|_per_s|per_1000|_mb|wall.*|created_at|resumed.*|device|inception_weights|path|rate.*)$")


@dataclass(frozen=True)
class Stage:
    """One stage: its CLI arguments (with ``{run}`` for the run folder), the folders it writes, the golden
    folders it reads, and the stage that reads its output (for corruption drills)."""

    name: str
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    consumer: str | None = None
    consumed_files: tuple[str, ...] = ()


def stages(data: str, ood: str) -> dict[str, Stage]:
    """Tiny settings on real digits: each stage runs in seconds on one CPU thread."""
    cpu = ("--device", "cpu")
    items = [
        Stage("pretrain", ("pretrain", "--run", "{run}", "--data", data, "--exclude-classes", "1", "--limit", "256", "--eval-limit", "64",
                           "--latent-dims", "8,4,2", "--channels", "8", "--mlp-hidden", "32", "--steps", "16", "--batch-size", "32",
                           "--kl-warmup-steps", "4", "--checkpoint-every", "4", "--log-every", "2", *cpu),
              ("backbone",), (), "cache-latents", ("weights.safetensors", "manifest.json")),
        Stage("cache-latents", ("cache-latents", "--run", "{run}", "--limit", "128", "--batch-size", "64", *cpu),
              ("latents",), ("backbone",), "train-prior", ("train.h5", "test.h5", "manifest.json")),
        Stage("train-prior", ("train-prior", "--run", "{run}", "--scheme", "joint", "--width", "16", "--depth", "1", "--steps", "12",
                              "--batch-size", "32", "--langevin-steps", "3", "--checkpoint-every", "3", "--log-every", "1", *cpu),
              ("priors/joint",), ("backbone", "latents"), "sample", ("energy.safetensors", "manifest.json")),
        Stage("sample", ("sample", "--run", "{run}", "--prior", "joint", "--n", "16", "--batch-size", "8", "--langevin-steps", "3", *cpu),
              ("samples/joint",), ("backbone", "latents", "priors/joint")),
        Stage("eval-recon", ("eval", "recon", "--run", "{run}", "--limit", "64", "--out", "{run}/eval/recon", *cpu),
              ("eval/recon",), ("backbone",)),
        Stage("eval-fid", ("eval", "fid", "--run", "{run}", "--prior", "recon", "--n", "10", "--ref-limit", "10", "--fid-batch-size", "10",
                           "--out", "{run}/eval/fid", *cpu),
              ("eval/fid", "fid-stats"), ("backbone",)),
        Stage("eval-ood", ("eval", "ood", "--run", "{run}", "--prior", "joint", "--ood", ood, "--k", "0,1", "--limit", "24",
                           "--batch-size", "24", "--out", "{run}/eval/ood", *cpu),
              ("eval/ood",), ("backbone", "latents", "priors/joint")),
        Stage("eval-anomaly", ("eval", "anomaly", "--run", "{run}", "--limit", "64", "--out", "{run}/eval/anomaly", *cpu),
              ("eval/anomaly",), ("backbone",)),
        Stage("eval-probe", ("eval", "probe", "--run", "{run}", "--limit", "128", "--epochs", "2", "--out", "{run}/eval/probe", *cpu),
              ("eval/probe",), ("backbone",)),
        Stage("pipeline", ("pipeline", "--config", "{run}.toml"),
              ("backbone", "latents", "priors/joint", "samples/joint", "eval/recon-pipe")),
    ]
    return {s.name: s for s in items}


def pipeline_toml(run: Path, data: str) -> str:
    """The pipeline drill's config: the same tiny stages (no FID, OOD or probe: those have their own drills)."""
    return f"""run = "{run}"
[pretrain]
data = "{data}"
exclude_classes = [1]
limit = 256
eval_limit = 64
latent_dims = [8, 4, 2]
channels = 8
mlp_hidden = 32
steps = 16
batch_size = 32
kl_warmup_steps = 4
checkpoint_every = 4
log_every = 2
device = "cpu"
[cache_latents]
limit = 128
batch_size = 64
device = "cpu"
[[train_prior]]
scheme = "joint"
width = 16
depth = 1
steps = 12
batch_size = 32
langevin_steps = 3
checkpoint_every = 3
log_every = 1
device = "cpu"
[sample]
n = 16
batch_size = 8
langevin_steps = 3
device = "cpu"
[eval_recon]
limit = 64
out = "{run}/eval/recon-pipe"
device = "cpu"
"""


# --- running the CLI (optionally under a fault) ---------------------------------------------------


def child_main(fault: str, args: list[str]) -> None:
    """Install ``fault`` ('none', 'enospc:K', 'fsize:BYTES') in this process, then run the CLI with ``args``."""
    kind, _, value = fault.partition(":")
    if kind == "enospc":
        _fail_fsync_at(int(value))
    elif kind == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
    sys.argv = ["hebmctl", *args]
    from hebmctl.cli import app

    app(prog_name="hebmctl")


def _fail_fsync_at(k: int) -> None:
    real_fsync, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] >= k:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    os.fsync = fsync


@dataclass
class Run:
    exit_code: int | None
    output: str
    seconds: float
    signalled: bool = False

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    @property
    def clear_error(self) -> bool:
        return self.exit_code not in (0, None) and not self.signalled and not self.traceback and len(self.output.strip()) > 0


def run_cli(args: list[str], fault: str = "none", kill_after_s: float | None = None, sig: int = signal.SIGKILL) -> Run:
    """Run the CLI in a child process (its own process group); with ``kill_after_s``, send ``sig`` then."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "child", "--fault", fault, "--", *args]
    t0 = time.perf_counter()
    # A pipe, not a file: RLIMIT_FSIZE (the fsize drills) would also cut a log file the child writes to.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO)
    signalled = False
    try:
        raw, _ = process.communicate(timeout=kill_after_s if kill_after_s is not None else CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, sig if kill_after_s is not None else signal.SIGKILL)
        raw, _ = process.communicate()
        signalled = True
    return Run(process.returncode, raw.decode("utf-8", "replace"), time.perf_counter() - t0, signalled)


def stage_args(stage: Stage, run: Path, force: bool = False) -> list[str]:
    args = [a.replace("{run}", str(run)) for a in stage.args]
    return args + (["--force"] if force else [])


# --- comparing artifacts ------------------------------------------------------------------------------


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _file_digest(path: Path) -> str:
    """What must be equal between two runs: the bytes of weights, images and tensors; HDF5 datasets and
    attributes; JSON without timings and paths. Logs (metrics.jsonl) and the HTML report hold timings."""
    if path.suffix in (".jsonl", ".html"):
        return "log"
    if path.suffix == ".json":
        return hashlib.sha256(json.dumps(_strip(json.loads(path.read_text())), sort_keys=True).encode()).hexdigest()
    if path.suffix == ".h5":
        import h5py
        import numpy as np

        digest = hashlib.sha256()
        with h5py.File(path, "r") as handle:
            for name in sorted(handle):
                digest.update(name.encode() + np.ascontiguousarray(handle[name][()]).tobytes())
            for name in sorted(handle.attrs):
                if name not in ("fingerprint", "backbone_sha256"):  # lineage hashes: a pipeline run's own backbone manifest differs
                    digest.update(name.encode() + repr(handle.attrs[name]).encode())
        return digest.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(folder: Path) -> dict[str, str] | None:
    """{file: digest} of a complete artifact (its manifest's outputs, plus its metrics); None when incomplete."""
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {out["name"]: _file_digest(folder / out["name"]) for out in manifest["outputs"]}
    except (OSError, ValueError, KeyError):
        return None
    files["manifest:metrics"] = hashlib.sha256(json.dumps(_strip(manifest.get("metrics", {})), sort_keys=True).encode()).hexdigest()
    return files


def digests(run: Path, folders: tuple[str, ...]) -> dict[str, dict | None]:
    out = {}
    for name in folders:
        if name == "fid-stats":  # one cached folder per reference split, named by its key
            subs = sorted(p for p in (run / name).glob("*") if p.is_dir()) if (run / name).is_dir() else []
            out[name] = digest(subs[0]) if subs else None
        else:
            out[name] = digest(run / name)
    return out


# --- drills ---------------------------------------------------------------------------------------------


@dataclass
class Drill:
    kind: str
    stage: str
    detail: str
    fault_exit: int | None = None
    fault_traceback: bool = False
    fault_clear_error: bool = False
    final_identical: bool = False
    traceback: bool = False
    silent_accept: bool = False
    data_lost: bool = False
    notes: list[str] = field(default_factory=list)


class Drills:
    def __init__(self, root: Path, seed: int, data: str, ood: str) -> None:
        self.root, self.rng = root, random.Random(seed)
        self.data = data
        self.stages = stages(data, ood)
        self.golden_run = root / "golden"
        self.golden: dict[str, dict | None] = {}
        self.golden_s: dict[str, float] = {}
        self.results: list[Drill] = []
        self.count = 0

    def reuse_golden(self, log: Path) -> int:
        """Continue an interrupted invocation on the same --root: its golden runs (timings from its log) and its
        finished drills (the log's JSON lines); returns how many planned drills to skip."""
        for line in log.read_text().splitlines():
            if line.startswith("golden "):
                name, seconds = line[len("golden "):].split(": ")
                self.golden_s[name] = float(seconds.split()[0])
            elif line.startswith('{"kind"'):
                self.results.append(Drill(**json.loads(line)))
        for stage in self.stages.values():
            self.golden[stage.name] = digests(self.golden_run if stage.name != "pipeline" else self.root / "golden-pipe", stage.outputs)
        self.count = max([int(p.name.split("-")[1]) for p in self.root.glob("drill-*") if p.is_dir()] + [0]) + 1000
        return len(self.results)

    def make_golden(self) -> None:
        (self.root / "golden.toml").write_text(pipeline_toml(self.root / "golden-pipe", self.data))
        for stage in self.stages.values():
            run = self.golden_run if stage.name != "pipeline" else self.root / "golden-pipe"
            result = run_cli(stage_args(stage, run if stage.name != "pipeline" else self.root / "golden"))
            if result.exit_code != 0:
                raise SystemExit(f"golden run of {stage.name} failed:\n{result.output[-3000:]}")
            self.golden_s[stage.name] = result.seconds
            self.golden[stage.name] = digests(run, stage.outputs)
            print(f"golden {stage.name}: {result.seconds:.1f} s", flush=True)

    def fresh_run(self, stage: Stage, with_outputs: bool = False) -> Path:
        """A new run folder holding copies of the stage's golden inputs (and outputs, when asked)."""
        self.count += 1
        run = self.root / f"drill-{self.count:04d}"
        golden = self.golden_run if stage.name != "pipeline" else self.root / "golden-pipe"
        for name in stage.inputs + (stage.outputs if with_outputs else ()):
            if (golden / name).exists():
                shutil.copytree(golden / name, run / name)
        if stage.name == "pipeline":
            (self.root / f"drill-{self.count:04d}.toml").write_text(pipeline_toml(run, self.data))
        run.mkdir(parents=True, exist_ok=True)
        return run

    def finish(self, drill: Drill, stage: Stage, run: Path, inputs_before: dict, damaged: bool = False) -> None:
        """Re-run without a fault, compare with the golden artifact, check the inputs were not touched.

        With ``damaged`` (we corrupted the artifact ourselves), a clear error is an acceptable answer and
        an exit 0 that keeps the damaged file is a silent acceptance; otherwise the re-run must complete."""
        again = run_cli(stage_args(stage, run))
        drill.traceback = drill.traceback or again.traceback
        if again.exit_code != 0:
            drill.notes.append(f"re-run exit {again.exit_code}: {again.output.strip()[-400:]}")
        drill.final_identical = again.exit_code == 0 and digests(run, stage.outputs) == self.golden[stage.name]
        if damaged:
            drill.fault_exit, drill.fault_clear_error = again.exit_code, again.clear_error
            drill.silent_accept = again.exit_code == 0 and not drill.final_identical
        elif not drill.final_identical:
            drill.data_lost = True
            drill.notes.append("final artifact differs from the golden run")
        if digests(run, stage.inputs) != inputs_before:
            drill.data_lost = True
            drill.notes.append("an input artifact changed")
        self.results.append(drill)
        print(json.dumps({k: v for k, v in asdict(drill).items() if v not in ([], False, None)}), flush=True)

    def signal_drill(self, stage: Stage, sig: int) -> None:
        run = self.fresh_run(stage)
        before = digests(run, stage.inputs)
        delay = self.rng.uniform(0.15, 1.0) * self.golden_s[stage.name]
        drill = Drill("kill9" if sig == signal.SIGKILL else "sigterm", stage.name, f"after {delay:.1f} s")
        fault = run_cli(stage_args(stage, run), kill_after_s=delay, sig=sig)
        drill.fault_exit, drill.traceback = fault.exit_code, fault.traceback and not fault.signalled
        if not fault.signalled:
            drill.notes.append("finished before the signal")
        self.finish(drill, stage, run, before)

    def disk_drill(self, stage: Stage, kind: str, force: bool) -> None:
        run = self.fresh_run(stage, with_outputs=force)
        before = digests(run, stage.inputs)
        old = digests(run, stage.outputs) if force else None
        limit = self.rng.randint(1, 40) if kind == "enospc" else self.rng.choice([0, 512, 4096, 20_000, 100_000, 400_000])
        drill = Drill(kind + ("+force" if force else ""), stage.name, f"{kind}:{limit}")
        fault = run_cli(stage_args(stage, run, force=force), fault=f"{kind}:{limit}")
        drill.fault_exit, drill.fault_traceback, drill.fault_clear_error = fault.exit_code, fault.traceback, fault.clear_error
        drill.traceback = fault.traceback
        if fault.exit_code != 0 and not fault.clear_error:
            drill.notes.append(f"fault run: {fault.output.strip()[-600:]}")
        if force and fault.exit_code != 0 and digests(run, stage.outputs) != old:
            drill.data_lost = True
            drill.notes.append("--force under a full disk destroyed the complete artifact")
        self.finish(drill, stage, run, before)

    def corrupt_drill(self, stage: Stage, folder: str, file: str, consumer: bool) -> None:
        run = self.fresh_run(stage, with_outputs=True)
        path = next((run / folder).glob("*/" + file)) if folder == "fid-stats" else run / folder / file
        data = bytearray(path.read_bytes())
        offset = self.rng.randrange(len(data))
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        drill = Drill("corrupt" + ("->next" if consumer else ""), stage.name, f"{folder}/{file} byte {offset} of {len(data)}")
        if consumer:
            reader = self.stages[stage.consumer]
            for name in reader.inputs:
                golden = self.golden_run / name
                if not (run / name).exists() and golden.exists():
                    shutil.copytree(golden, run / name)
            result = run_cli(stage_args(reader, run))
            drill.fault_exit, drill.traceback, drill.fault_clear_error = result.exit_code, result.traceback, result.clear_error
            drill.silent_accept = result.exit_code == 0
            if result.exit_code == 0:
                drill.notes.append(f"{reader.name} accepted the damaged {file}")
            elif not result.clear_error:
                drill.notes.append(result.output.strip()[-600:])
            self.results.append(drill)
            print(json.dumps({k: v for k, v in asdict(drill).items() if v not in ([], False, None)}), flush=True)
            return
        before = digests(run, stage.inputs)
        self.finish(drill, stage, run, before, damaged=True)

    def checkpoint_drill(self, stage: Stage) -> None:
        """Kill mid-run, flip a byte in the newest checkpoint's weights, re-run: resume from the previous one."""
        run = self.fresh_run(stage)
        before = digests(run, stage.inputs)
        out = run / stage.outputs[0]
        drill = Drill("ckpt", stage.name, "")
        for fraction in (0.6, 0.8, 0.95, 1.2):
            run_cli(stage_args(stage, run), kill_after_s=fraction * self.golden_s[stage.name])
            ckpts = sorted((out / "checkpoints").glob("ckpt-*")) if (out / "checkpoints").is_dir() else []
            if len(ckpts) >= 2 and not (out / "manifest.json").exists():
                target = sorted(p for p in ckpts[-1].rglob("*") if p.is_file())[0]
                data = bytearray(target.read_bytes())
                data[self.rng.randrange(len(data))] ^= 0xFF
                target.write_bytes(bytes(data))
                drill.detail = f"{target.relative_to(out)} after {len(ckpts)} checkpoints"
                break
            shutil.rmtree(out, ignore_errors=True)
        else:
            drill.notes.append("no run was killed with two checkpoints on disk")
        self.finish(drill, stage, run, before)


def plan(drills: Drills, per_stage: int) -> list:
    """The seeded list of drills: (method, args)."""
    items = []
    for stage in drills.stages.values():
        n_kill = max(1, per_stage // 2) if stage.name in ("pipeline", "eval-fid") else per_stage
        items += [(drills.signal_drill, (stage, signal.SIGKILL))] * n_kill
        items += [(drills.signal_drill, (stage, signal.SIGTERM))]
        items += [(drills.disk_drill, (stage, "enospc", False)), (drills.disk_drill, (stage, "enospc", True))]
        items += [(drills.disk_drill, (stage, "fsize", False))]
        if stage.name == "pipeline":
            continue
        golden = drills.golden_run
        for folder in stage.outputs:
            base = next((golden / folder).glob("*/"), None) if folder == "fid-stats" else golden / folder
            files = ["manifest.json"] + [o["name"] for o in json.loads((base / "manifest.json").read_text())["outputs"]]
            items += [(drills.corrupt_drill, (stage, folder, f, False)) for f in files]
        items += [(drills.corrupt_drill, (stage, stage.outputs[0], f, True)) for f in stage.consumed_files]
    items += [(drills.checkpoint_drill, (drills.stages[name],)) for name in ("pretrain", "train-prior")]
    return items


def table(results: list[Drill], seconds: float) -> dict:
    by_kind = Counter(d.kind for d in results)
    by_stage = Counter(d.stage for d in results)
    return {
        "drills": len(results),
        "identical_results": sum(d.final_identical for d in results),
        "clear_errors": sum(d.fault_clear_error for d in results),
        "tracebacks": sum(d.traceback for d in results),
        "silent_acceptances": sum(d.silent_accept for d in results),
        "data_lost": sum(d.data_lost for d in results),
        "script_errors": sum(d.kind == "script-error" for d in results),
        "by_kind": dict(sorted(by_kind.items())),
        "by_stage": dict(sorted(by_stage.items())),
        "failures": [asdict(d) for d in results if d.traceback or d.data_lost or d.silent_accept],
        "wall_s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-stage", type=int, default=4, help="kill -9 drills per stage (half for pipeline and eval fid)")
    parser.add_argument("--quick", action="store_true", help="pretrain only: one kill -9, one ENOSPC, one corrupted weight file")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", type=Path, default=RESULT_PATH)
    parser.add_argument("--stages", default=None, help="comma list: run only the drills of these stages (after a fix; the golden runs "
                        "still cover every stage)")
    parser.add_argument("--resume-log", type=Path, default=None, help="the log (stdout) of an interrupted invocation on the same --root: "
                        "reuse its golden runs and results, run the remaining drills")
    options = parser.parse_args()
    t0 = time.perf_counter()
    data, ood = "builtin:mnist-10k", f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}"
    with tempfile.TemporaryDirectory(prefix="hebmctl-drills-") as tmp:
        root = options.root or Path(tmp)
        drills = Drills(root, options.seed, data, ood)
        skip = 0
        if options.quick:
            drills.stages = {"pretrain": drills.stages["pretrain"]}
            drills.make_golden()
            stage = drills.stages["pretrain"]
            items = [(drills.signal_drill, (stage, signal.SIGKILL)), (drills.disk_drill, (stage, "enospc", True)),
                     (drills.corrupt_drill, (stage, "backbone", "weights.safetensors", False))]
        elif options.resume_log is not None:
            skip = drills.reuse_golden(options.resume_log)
            items = plan(drills, options.per_stage)
        else:
            drills.make_golden()
            items = plan(drills, options.per_stage)
        if options.stages:
            chosen = set(options.stages.split(","))
            items = [(method, args) for method, args in items if args[0].name in chosen]
        print(f"{len(items)} drills planned", flush=True)
        for method, args in items[skip:]:
            try:
                method(*args)
            except Exception as exc:  # a bug of this script, not of hebmctl: record it and go on
                drills.results.append(Drill("script-error", args[0].name, repr(exc)[:300]))
                print(json.dumps(asdict(drills.results[-1])), flush=True)
        result = table(drills.results, time.perf_counter() - t0)
    result["command"] = "OMP_NUM_THREADS=1 python " + " ".join(["benchmarks/fault_drills.py", *sys.argv[1:]])
    summary = {k: v for k, v in result.items() if k != "failures"}
    print(json.dumps(summary, indent=2))
    if not options.quick:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        split = sys.argv.index("--")
        child_main(sys.argv[sys.argv.index("--fault") + 1], sys.argv[split + 1 :])
    else:
        main()
