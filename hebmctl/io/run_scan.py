"""Read a run folder as a whole: every artifact with its checked state, and the lineage between them.

Artifacts are found by their `manifest.json` anywhere in the run (checkpoints excepted) and at the
default locations (DESIGN §1), where a folder without a manifest is an interrupted stage. Each is
checked with the same code as `hebmctl inspect` (`read_any_manifest`, `verify_outputs`). Lineage
edges join a manifest's `inputs` to the artifact whose manifest bytes have the recorded sha256; a
recorded hash that no artifact has any more is a stale edge (the parent was replaced) or a
missing parent. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hebmctl.errors import ArtifactError
from hebmctl.io.manifest import MANIFEST_NAME, has_manifest, read_any_manifest, verify_outputs
from hebmctl.schemas import MANIFEST_TYPES
from hebmctl.schemas.common import InputRef, ManifestBase

DEFAULT_SLOTS = ("backbone", "latents", "priors/*", "samples/*", "eval/*", "fid-stats/*")
"""Where the stages write inside a run folder (a folder there without a manifest never finished)."""
SKIPPED_PARTS = frozenset({"checkpoints", "images"})
"""Sub-folders that hold no artifacts: resumable checkpoints, individual sample images."""

KIND_RANK = {"data": 0, "weights": 0, "backbone": 1, "fid-stats": 1, "latents": 2, "prior": 3, "samples": 4}
"""Column of each kind in the lineage graph (data -> backbone -> latents -> priors -> samples / evals)."""
EXPECTED_KINDS = {"backbone": "backbone", "latents": "latents", "prior": "priors/NAME", "samples": "samples/NAME"}
"""Kinds every complete run has, and where their default folder is."""


@dataclass(frozen=True)
class Artifact:
    """One artifact folder and what checking it found."""

    name: str
    folder: Path
    manifest: ManifestBase | None
    sha256: str | None
    problems: tuple[str, ...]
    status: str  # intact | damaged | incomplete
    external: bool = False

    @property
    def kind(self) -> str:
        return self.manifest.kind if self.manifest is not None else "unknown"

    def file_problem(self, file_name: str) -> str | None:
        """What is wrong with one of its output files (from `verify_outputs`), or None."""
        return next((p for p in self.problems if p.startswith(f"{file_name}: ")), None)


def check_artifact(folder: Path, name: str, check_hashes: bool = True, external: bool = False) -> Artifact:
    """Read and verify one folder: intact, damaged (manifest invalid, files changed or missing) or incomplete (no manifest)."""
    if not has_manifest(folder):
        return Artifact(name, folder, None, None, (f"no {MANIFEST_NAME}: the stage that writes it never finished",), "incomplete", external)
    try:
        manifest, sha = read_any_manifest(folder)
    except ArtifactError as exc:
        return Artifact(name, folder, None, None, (str(exc),), "damaged", external)
    problems = tuple(verify_outputs(folder, manifest, check_hashes=check_hashes))
    return Artifact(name, folder, manifest, sha, problems, "damaged" if problems else "intact", external)


def artifact_folders(run: Path) -> list[Path]:
    """Every folder of the run that holds a manifest or sits at a default artifact location, sorted."""
    run = Path(run)
    found = {p.parent for p in run.rglob(MANIFEST_NAME) if not SKIPPED_PARTS & set(p.relative_to(run).parts)}
    found |= {p for slot in DEFAULT_SLOTS for p in run.glob(slot) if p.is_dir()}
    return sorted(found)


def scan_run(run: Path, check_hashes: bool = True) -> list[Artifact]:
    """Every artifact of a run folder, checked; sorted by lineage column, then name."""
    run = Path(run)
    if not run.is_dir():
        raise ArtifactError(f"{run} is not a folder: give a run folder (the --run of the stages, e.g. runs/demo).")
    artifacts = [check_artifact(f, f.relative_to(run).as_posix() or ".", check_hashes) for f in artifact_folders(run)]
    artifacts += _external_parents(run, artifacts, check_hashes)
    return sorted(artifacts, key=lambda a: (rank(a.kind), a.external, a.name))


def _external_parents(run: Path, artifacts: list[Artifact], check_hashes: bool) -> list[Artifact]:
    """Parents that live outside the run folder (explicit --backbone / --prior paths), checked like the others.

    A recorded path that names a folder of this run (also after the run was moved or copied: same
    place inside the run) means that folder, even when another copy still exists at the old place:
    the report judges the run it is given.
    """
    have = {a.sha256 for a in artifacts if a.sha256}
    outside: dict[Path, None] = {}
    for artifact in artifacts:
        for ref in artifact.manifest.inputs if artifact.manifest else ():
            path = Path(ref.path)
            if ref.sha256 in have or not is_artifact_kind(ref.kind) or _by_path(ref.path, artifacts) is not None:
                continue
            if has_manifest(path) and not path.resolve().is_relative_to(run.resolve()):
                outside[path] = None
    return [check_artifact(p, str(p), check_hashes, external=True) for p in outside]


def is_artifact_kind(kind: str) -> bool:
    """True for the kinds hebmctl writes (with a manifest), False for inputs such as 'data' or 'weights'."""
    return kind in MANIFEST_TYPES


def rank(kind: str) -> int:
    """Lineage column of an artifact kind; evaluations (and anything unknown) go last."""
    return KIND_RANK.get(kind, 4)


def expected_but_absent(artifacts: list[Artifact]) -> list[str]:
    """Default stages with no complete artifact in the run (a run without evaluations reports that too)."""
    kinds = {a.kind for a in artifacts if a.manifest is not None}
    absent = [f"{kind} (default folder RUN/{where})" for kind, where in EXPECTED_KINDS.items() if kind not in kinds]
    if not any(k.startswith("eval-") for k in kinds):
        absent.append("evaluations (RUN/eval/NAME)")
    return absent


# ---- lineage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A box of the lineage graph: an artifact, an external input (data set, weights) or a missing parent."""

    key: str
    label: str
    kind: str
    sha256: str
    status: str  # intact | damaged | incomplete | input | missing
    detail: str = ""


@dataclass(frozen=True)
class Edge:
    parent: str
    child: str
    role: str
    ok: bool  # False: the child recorded another hash than the parent has now (stale lineage)


@dataclass
class Lineage:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """One sentence per edge whose recorded hash no longer matches its parent."""


def build_lineage(artifacts: list[Artifact]) -> Lineage:
    """Nodes for every artifact and input, edges from each manifest's `inputs` to what they name."""
    lineage = Lineage()
    by_sha = {a.sha256: a for a in artifacts if a.sha256}
    for a in artifacts:
        lineage.nodes.append(Node(_key(a), a.name, a.kind, a.sha256 or "", a.status, "; ".join(a.problems)))
    for child in artifacts:
        for ref in child.manifest.inputs if child.manifest else ():
            _link(lineage, child, ref, by_sha, artifacts)
    return lineage


def _key(artifact: Artifact) -> str:
    return f"artifact:{artifact.folder}"


def _link(lineage: Lineage, child: Artifact, ref: InputRef, by_sha: dict[str, Artifact], artifacts: list[Artifact]) -> None:
    """Add the edge of one input (and its node if the input is not an artifact of the run)."""
    if ref.sha256 in by_sha:
        lineage.edges.append(Edge(_key(by_sha[ref.sha256]), _key(child), ref.role, True))
        return
    if not is_artifact_kind(ref.kind):
        key = f"{ref.kind}:{ref.sha256}"
        if key not in {n.key for n in lineage.nodes}:
            lineage.nodes.append(Node(key, input_label(ref), ref.kind, ref.sha256, "input", ref.path))
        lineage.edges.append(Edge(key, _key(child), ref.role, True))
        return
    parent = _by_path(ref.path, artifacts)
    if parent is not None and parent.sha256:
        lineage.edges.append(Edge(_key(parent), _key(child), ref.role, False))
        lineage.stale.append(f"{child.name} was made from {ref.role} {ref.sha256[:12]}, but {parent.name} now has {parent.sha256[:12]} "
            f"(replaced since)")
        return
    key = f"missing:{ref.sha256}"
    if key not in {n.key for n in lineage.nodes}:
        lineage.nodes.append(Node(key, ref.path, ref.kind, ref.sha256, "missing", "no artifact with this manifest hash was found"))
    lineage.edges.append(Edge(key, _key(child), ref.role, False))


def input_label(ref: InputRef) -> str:
    """A short name for an input that is not an artifact: the data spec and its role, or a file's name."""
    if ref.kind == "data":
        return f"{ref.path} ({ref.role.removeprefix('data:')})"
    return Path(ref.path).name or ref.path


def _by_path(recorded: str, artifacts: list[Artifact]) -> Artifact | None:
    """The artifact a recorded input path points at: same folder, or the same place inside a moved run."""
    path = Path(recorded)
    for a in artifacts:
        if a.manifest is None:
            continue
        if path.exists() and path.resolve() == a.folder.resolve():
            return a
        if not a.external and (path.as_posix() == a.name or path.as_posix().endswith("/" + a.name)):
            return a
    return None
