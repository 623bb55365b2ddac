"""Manifests: the commit marker of every artifact folder (DESIGN §4).

A folder is an artifact only if it holds a `manifest.json` that validates against its kind's
schema; the manifest is written last, atomically. Its sha256 (of the file's bytes) is what
children record as their lineage.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
from pydantic import BaseModel, ValidationError
from safetensors import safe_open

from hebmctl import __version__, dist
from hebmctl.errors import ArtifactError, LineageError
from hebmctl.io.atomic import write_text
from hebmctl.io.hashing import sha256_bytes, sha256_file, sha256_json
from hebmctl.io.output import partial_path, replaced_path, session_for
from hebmctl.schemas import MANIFEST_TYPES
from hebmctl.schemas.common import SCHEMA_VERSION, InputRef, ManifestBase, OutputFile, StageConfig, TensorInfo

MANIFEST_NAME = "manifest.json"
M = TypeVar("M", bound=ManifestBase)


def manifest_path(folder: Path) -> Path:
    return Path(folder) / MANIFEST_NAME


def has_manifest(folder: Path) -> bool:
    return manifest_path(folder).is_file()


def read_manifest(folder: Path, model: type[M]) -> tuple[M, str]:
    """Read and validate `folder/manifest.json` as `model`; returns (manifest, sha256 of its bytes)."""
    path = manifest_path(folder)
    if not path.is_file() and replaced_path(folder).is_dir():
        raise ArtifactError(
            f"{folder} is being replaced by a --force run (or one was interrupted): its previous artifact is in "
            f"{replaced_path(folder)}. Wait for that run to finish, or re-run the stage that writes {folder} to restore it."
        )
    if not path.is_file():
        raise ArtifactError(
            f"{folder} is not a complete artifact: it has no {MANIFEST_NAME}. Either the path is wrong or "
            "the stage that writes it never finished; run that stage (re-running resumes it)."
        )
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:  # invalid JSON or invalid UTF-8 (a damaged byte)
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is corrupt. Delete {folder} and re-run its stage.") from exc
    expected_kind = model.model_fields["kind"].default
    if isinstance(data, dict) and data.get("kind") != expected_kind:
        raise ArtifactError(f"{folder} holds a '{data.get('kind')}' artifact, but a '{expected_kind}' artifact is needed here. Check the "
                            "path.")
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(
            f"{path} does not match the '{expected_kind}' manifest schema ({exc.error_count()} problems, first: "
            f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}). It was written by another hebmctl version or edited by hand; "
            "re-run the stage that writes it."
        ) from exc
    return manifest, sha256_bytes(raw)


def read_any_manifest(folder: Path) -> tuple[ManifestBase, str]:
    """Read and validate `folder/manifest.json` as the model its `kind` names; (manifest, sha256 of its bytes)."""
    path = manifest_path(folder)
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: it is not a complete hebmctl artifact (a stage may still be running or was "
            f"interrupted; re-run it).")
    try:
        kind = json.loads(path.read_bytes()).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ArtifactError(f"{path} is not a valid JSON object ({exc}); the artifact is corrupt.") from exc
    if kind not in MANIFEST_TYPES:
        raise ArtifactError(f"{path} has kind {kind!r}; known kinds: {', '.join(MANIFEST_TYPES)}.")
    return read_manifest(folder, MANIFEST_TYPES[kind])


def write_manifest(folder: Path, manifest: BaseModel) -> str:
    """Atomically write the manifest (last step of a stage); returns its sha256."""
    text = manifest.model_dump_json(indent=2) + "\n"
    write_text(manifest_path(folder), text)
    return sha256_bytes(text.encode("utf-8"))


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def common_fields(fingerprint: str) -> dict[str, Any]:
    """The manifest fields every stage fills the same way."""
    return {
        "schema_version": SCHEMA_VERSION,
        "hebmctl_version": __version__,
        "created_at": now_utc(),
        "fingerprint": fingerprint,
        "status": "complete",
    }


def stage_fingerprint(config: StageConfig, inputs: list[InputRef]) -> str:
    """sha256 of (the config values that determine the result, the input hashes, the schema version)."""
    return sha256_json(
        {
            "config": config.hashed_fields(),
            "inputs": sorted((ref.role, ref.sha256) for ref in inputs),
            "schema_version": SCHEMA_VERSION,
        }
    )


def describe_file(folder: Path, name: str) -> OutputFile:
    """Size, sha256 and tensor shapes of one output file (safetensors and HDF5 are looked inside)."""
    path = Path(folder) / name
    return OutputFile(name=name, bytes=path.stat().st_size, sha256=sha256_file(path), tensors=_tensor_infos(path))


def _tensor_infos(path: Path) -> dict[str, TensorInfo]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            slices = {k: handle.get_slice(k) for k in handle.keys()}
            return {k: TensorInfo(shape=list(s.get_shape()), dtype=s.get_dtype()) for k, s in slices.items()}
    if path.suffix == ".h5":
        with h5py.File(path, "r") as handle:
            return {k: TensorInfo(shape=list(ds.shape), dtype=str(ds.dtype)) for k, ds in handle.items() if isinstance(ds, h5py.Dataset)}
    return {}


def verify_outputs(folder: Path, manifest: ManifestBase, check_hashes: bool = True, hash_limit: int | None = None) -> list[str]:
    """Problems with the artifact's files (missing, wrong size, wrong sha256); empty when all is well.

    With `hash_limit`, files larger than that many bytes are checked by size only.
    """
    problems = []
    for out in manifest.outputs:
        path = Path(folder) / out.name
        if not path.is_file():
            problems.append(f"{out.name}: missing")
        elif path.stat().st_size != out.bytes:
            problems.append(f"{out.name}: size {path.stat().st_size} bytes, manifest says {out.bytes}")
        elif check_hashes and (hash_limit is None or out.bytes <= hash_limit) and sha256_file(path) != out.sha256:
            problems.append(f"{out.name}: sha256 differs from the manifest (file changed after it was written)")
    return problems


def require_intact(folder: Path, manifest: ManifestBase) -> None:
    """Raise ArtifactError if any output file is missing or changed."""
    problems = verify_outputs(folder, manifest)
    if problems:
        raise ArtifactError(
            f"The artifact in {folder} is damaged: " + "; ".join(problems) + ". Re-run the stage that writes it (the same command): "
            "it notices the damage and rebuilds the files, resuming from its checkpoints."
        )


REMAKE_COMMAND = {"latents": "cache-latents", "prior": "train-prior", "samples": "sample"}
"""Artifact kind -> the command that makes it (for lineage advice)."""
PARENT_FLAG = {"backbone": "--backbone", "latents": "--latents", "prior": "--prior"}


def check_lineage(child: str, recorded_sha: str, parent_folder: Path, actual_sha: str, child_folder: Path | None = None) -> None:
    """Refuse to combine artifacts when the parent changed since the child was made from it.

    With `child_folder`, the message names the command that remakes the child from this parent.
    """
    if recorded_sha != actual_sha:
        raise LineageError(
            f"{child} was made from a {Path(parent_folder).name} whose manifest hash was {recorded_sha[:12]}..., but {parent_folder} "
            f"now has manifest hash {actual_sha[:12]}... (it was retrained or replaced). "
            + _remake_advice(child, parent_folder, child_folder)
        )


def _remake_advice(child: str, parent_folder: Path, child_folder: Path | None) -> str:
    kinds = {}
    for role, folder in (("child", child_folder), ("parent", parent_folder)):
        try:
            kinds[role] = json.loads(manifest_path(folder).read_text()) if folder is not None else {}
        except (OSError, ValueError):
            kinds[role] = {}
    child_kind, parent_kind = kinds["child"].get("kind"), kinds["parent"].get("kind")
    command, flag = REMAKE_COMMAND.get(child_kind), PARENT_FLAG.get(parent_kind)
    if command is None or flag is None:
        return f"Re-make {child} from this {Path(parent_folder).name} (its stage, with --force), or point to the parent it was made from."
    advice = (f"Either remake it from this {parent_kind}: `hebmctl {command} {flag} {parent_folder} --out {child_folder} --force` "
              f"(plus the settings it was made with, which `hebmctl inspect {child_folder}` lists), or pass the {flag} it was made from.")
    latents = kinds["child"].get("config", {}).get("latents")
    if child_kind == "prior" and parent_kind == "backbone" and latents:
        advice += (f" The prior also needs latents cached from this backbone: `hebmctl cache-latents --backbone {parent_folder} "
                   f"--out {latents} --force` first, and `--latents {latents}`.")
    return advice


HASH_LIMIT_BYTES = 256 * 2**20
"""The up-to-date check hashes (sha256) every output file up to this size and checks the size of
larger ones (big latent caches): hashing 256 MiB takes well under a second, and truncation, the
usual damage, always changes the size. `hebmctl inspect` and the stages that read an artifact hash
every file."""


def prepare_output(folder: Path, model: type[M], fingerprint: str, force: bool,
                   input_problems: Callable[[M], list[str]] | None = None) -> M | None:
    """Decide what to do with an output folder before a stage computes (call it once the inputs are validated).

    Runs inside the stage's `hebmctl.io.output.writes_artifact` session, which locks the folder.
    Returns the existing manifest when the artifact is complete, up to date and intact (the stage
    skips). A complete artifact with other settings or inputs is refused unless `force`; with
    `force` it stays in place (moved aside) until the new run's manifest is written. A damaged
    artifact is re-run in place, keeping its checkpoints; so is one for which `input_problems` (the existing
    manifest -> problems with an input it was made from, found only after the fingerprint, such as a
    cache) lists anything. Otherwise returns None: the stage runs, resuming a partial run of the same
    settings if it can.

    With several processes rank 0 alone decides and does the folder work; the others wait for its
    decision (and its error, if any) and read the manifest it found (DESIGN §8).
    """
    if dist.world_size() == 1:
        return _prepare_output(folder, model, fingerprint, force, input_problems)
    found: list[M | None] = []
    decide = lambda: found.append(_prepare_output(folder, model, fingerprint, force, input_problems)) or found[0] is not None  # noqa: E731
    skip = dist.main_decides(decide)
    if dist.is_main():
        return found[0]
    return read_manifest(folder, model)[0] if skip else None


def _prepare_output(folder: Path, model: type[M], fingerprint: str, force: bool,
                    input_problems: Callable[[M], list[str]] | None) -> M | None:
    folder = Path(folder)
    session = session_for(folder)
    session.open()
    kind = model.model_fields["kind"].default
    if has_manifest(folder):
        try:
            manifest, _ = read_manifest(folder, model)
        except ArtifactError as exc:
            if not force:
                raise ArtifactError(f"{folder} holds an unreadable artifact ({exc}) Pass --force to replace it, or choose another "
                                    "output folder.") from exc
            manifest = None
        if force:
            session.replace_complete(fingerprint)
        elif manifest.fingerprint != fingerprint:
            stash = partial_path(folder)
            note = f" (an interrupted --force run with other settings is kept in {stash})" if stash.exists() else ""
            raise ArtifactError(
                f"{folder} already holds a complete {manifest.kind} made with other settings or inputs (fingerprint "
                f"{manifest.fingerprint[:12]}... vs {fingerprint[:12]}... now){note}. Nothing was overwritten. Pass --force to "
                "replace it (the old one stays until the new one is complete), or write to another folder (--out or --run)."
            )
        else:
            problems = verify_outputs(folder, manifest, check_hashes=True, hash_limit=HASH_LIMIT_BYTES)
            problems += input_problems(manifest) if input_problems is not None else []
            if not problems:
                return manifest
            session.repair_damaged(problems)
    elif force:
        session.discard_partial(fingerprint)
    session.begin(fingerprint, kind)
    return None
