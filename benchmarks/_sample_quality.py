"""Sample quality of a prior on one run: FID (exactly `hebmctl eval fid`'s computation), improved precision/recall in
the same Inception features, and class coverage by a small classifier trained on the real training images.

Used by b2_study.py and coop_fid_vs_k.py. One sampling + one Inception pass per (prior, K'); every result is cached as
RUN/bench/<prior>-K<K'>.json (with the 64-image grid beside it), so the scripts resume.

FID: the images come from `eval_fid._Source` (the sampler `hebmctl eval fid` uses, same seed), the features from the
same extractor and batch size, and the distance to the cached reference statistics of the full test split (the
`fid-stats` artifact `eval fid` reads), so `fid` equals `hebmctl eval fid --run RUN --prior P --n N --langevin-steps K'`.
Precision/recall (Kynkaanniemi et al. 2019, k = 3) compare the N generated features with the features of N real test
images (a seeded class-stratified subset). The classifier is a two-conv-layer CNN trained here (2 epochs on the
60,000 training images); its test accuracy is stored with it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hebmctl.data import load_split
from hebmctl.io.hashing import sha256_file
from hebmctl.io.images import save_grid
from hebmctl.metrics.fid import InceptionFeatures, feature_statistics, frechet_distance, resolve_inception_weights
from hebmctl.metrics.precision_recall import precision_recall
from hebmctl.priors import SamplingOptions
from hebmctl.priors.diffusion import DiffusionPrior
from hebmctl.schemas import EvalFidConfig
from hebmctl.schemas.common import InputRef
from hebmctl.stages import eval_fid
from hebmctl.stages.eval_common import backbone_manifest, load_data

DEVICE = torch.device("cpu")
N_CLASSES = 10


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _to_input(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 `[N, 28, 28, 1]` -> float `[N, 1, 28, 28]` in [0, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0


def predict(model: nn.Module, images_uint8: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Softmax probabilities `[N, 10]`."""
    with torch.no_grad():
        parts = [model(_to_input(images_uint8[i : i + batch])).softmax(1).numpy() for i in range(0, len(images_uint8), batch)]
    return np.concatenate(parts)


def classifier(data: str, folder: Path, epochs: int = 2) -> tuple[nn.Module, dict]:
    """The Fashion-MNIST classifier (trained once, cached in `folder`) and its record (test accuracy, time)."""
    weights, record_path = folder / "classifier.pt", folder / "classifier.json"
    model = SmallCNN()
    if weights.exists() and record_path.exists():
        model.load_state_dict(torch.load(weights))
        return model.eval(), json.loads(record_path.read_text())
    train, test = load_split(data, "train"), load_split(data, "test")
    x, y = _to_input(train.images), torch.from_numpy(train.labels).long()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    accuracy = float((predict(model, test.images).argmax(1) == test.labels).mean())
    record = {"architecture": "conv32-pool-conv64-pool-fc128", "epochs": epochs, "train_images": len(x), "test_accuracy": accuracy,
              "train_s": round(time.perf_counter() - t0, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    record_path.write_text(json.dumps(record, indent=2))
    return model, record


def class_coverage(probs: np.ndarray) -> dict:
    """Predicted-class histogram of a sample set and summaries: perplexity exp(H) of the histogram (10 = every class
    equally often), the number of classes with at least half the uniform share (5 %), the smallest share, and the
    mean max-softmax confidence."""
    counts = np.bincount(probs.argmax(1), minlength=N_CLASSES)
    share = counts / counts.sum()
    entropy = -sum(p * math.log(p) for p in share if p > 0)
    return {"histogram": counts.tolist(), "perplexity": round(math.exp(entropy), 3), "classes_ge_5pct": int((share >= 0.05).sum()),
            "min_share": round(float(share.min()), 4), "confidence": round(float(probs.max(1).mean()), 4)}


class Evaluator:
    """Holds the Inception network, the reference statistics, the P/R reference features and the classifier of a run."""

    def __init__(self, run: Path, n: int, pr_k: int = 3) -> None:
        self.run, self.n, self.pr_k = run, n, pr_k
        self.out = run / "bench"
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = backbone_manifest(run / "backbone").config.data
        weights = resolve_inception_weights(None)
        self.extractor = InceptionFeatures(weights, DEVICE)
        weights_ref = InputRef(role="inception", path=str(weights), kind="weights", sha256=sha256_file(weights))
        self.ref_images, ref_data = load_data("reference:test", self.data, "test", None)
        config = EvalFidConfig(run=run, n=n, device="cpu")
        self.stats_folder, _, (self.mu_ref, self.sigma_ref) = eval_fid.reference_statistics(config, self.ref_images, ref_data, weights_ref,
                                                                                             self.extractor)
        self.pr_real = self._cached_features(f"real-test-{n}", lambda: load_split(self.data, "test", limit=n).images)
        self.classifier, self.classifier_record = classifier(self.data, self.out)

    def _cached_features(self, name: str, images) -> np.ndarray:
        path = self.out / f"features-{name}.npy"
        if not path.exists():
            np.save(path, eval_fid._features(self.extractor, images(), None, name)[0])
        return np.load(path)

    def scores(self, images: np.ndarray, features: np.ndarray) -> dict:
        fid = frechet_distance(*feature_statistics(features), self.mu_ref, self.sigma_ref)
        pr = precision_recall(self.pr_real, features, self.pr_k)
        coverage = class_coverage(predict(self.classifier, images))
        return {"fid": fid, "precision": pr["precision"], "recall": pr["recall"], "coverage": coverage}

    def real_baseline(self) -> dict:
        """The same scores for N real *training* images (seeded stratified subset): the best a sampler can get at this N."""
        path = self.out / f"real-train-{self.n}.json"
        if path.exists():
            return json.loads(path.read_text())
        images = load_split(self.data, "train", limit=self.n).images
        features = self._cached_features(f"real-train-{self.n}", lambda: images)
        result = {"source": f"real train images, {self.n}"} | self.scores(images, features)
        path.write_text(json.dumps(result, indent=2))
        return result

    def evaluate(self, prior: str, langevin_steps: int | None = None, without_initializer: bool = False) -> dict:
        """Scores of N samples of RUN/priors/<prior> (or 'gaussian') with K' = langevin_steps (None: the training K).

        without_initializer: a cooperative prior's EBMs sampled as the diffusion scheme samples (each level's chain
        starts at u_{t+1}, not at the initializer's proposal): separates the EBM from the proposals."""
        tag = f"{prior}-K{langevin_steps if langevin_steps is not None else 'train'}" + ("-noinit" if without_initializer else "")
        path = self.out / f"{tag}.json"
        if path.exists():
            return json.loads(path.read_text())
        config = EvalFidConfig(run=self.run, prior=prior, n=self.n, langevin_steps=langevin_steps, device="cpu")
        source = eval_fid._Source(config, self.ref_images, DEVICE)
        if without_initializer:
            p = source.prior
            source.prior = DiffusionPrior(p.config, p.energy, p.backbone, p.device, SamplingOptions(langevin_steps, None, None))
        images, generate_s = source.images()
        features, feature_s = eval_fid._features(self.extractor, images, config.fid_batch_size, tag)
        save_grid(self.out / f"{tag}.png", images[:64], 8)
        result = {"prior": prior, "langevin_steps": langevin_steps, "without_initializer": without_initializer, "n": self.n,
                  "generate_s": round(generate_s, 2),
                  "feature_s": round(feature_s, 1)} | self.scores(images, features)
        path.write_text(json.dumps(result, indent=2))
        return result
