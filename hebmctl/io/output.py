"""Writing one artifact folder safely: one writer at a time, and a `--force` that never loses the old artifact.

Every writing stage's `run(config, control)` is wrapped in `writes_artifact`, which opens an
`OutputSession` on `config.out`; `prepare_output` (called by the stage once its inputs are
validated) then does the folder work under the session:

- **Lock.** `<parent>/.<name>.lock` (a sibling, so that it survives the renames below) is
  `fcntl.flock`-ed for as long as the stage runs and holds the holder's PID, command and start
  time for the error a second writer gets. The kernel releases a flock when its process dies, so
  a killed run never blocks the next one. The lock file itself is never deleted (deleting it
  would let two processes lock two different files).
- **Replacing a complete artifact (`--force`).** The old folder is renamed to
  `<parent>/.<name>.replaced` and the new run writes a fresh folder. When the new manifest (the
  commit marker) is written the old folder is deleted. If the run fails or is interrupted, the
  partial new folder is renamed to `<parent>/.<name>.partial` and the old artifact renamed back,
  so the folder keeps the last good artifact and its children stay valid; re-running the same
  command (with `--force`) moves the partial run back in and resumes it.
- **Crash at any point** (kill -9, power loss): every step is one rename, so the old artifact is
  always either the folder itself or `.<name>.replaced`. The next session on the folder repairs
  what it finds (`recover`): a `.replaced` next to a complete folder is deleted (the replacement
  had finished), next to an incomplete one it is renamed back.
- **Damaged artifact** (a file missing, truncated or changed since the manifest was written):
  the stage re-runs in place, keeping its checkpoints and partial files, so it resumes. The old
  manifest is kept as `.manifest.damaged.json`; if the re-run reproduces every file bit for bit
  (resume is exact), the old manifest is put back, so children made from it stay valid.
- A folder that cannot be written (read-only file system or permissions) can still be reported
  up to date; anything that would write to it is a one-paragraph error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hebmctl import dist
from hebmctl.errors import ArtifactError
from hebmctl.io.atomic import fsync_dir, write_text
from hebmctl.io.console import console
from hebmctl.runtime import is_main_process

RUN_MARKER = ".hebmctl-run.json"
"""Written into the folder when a stage starts computing: the fingerprint of the (possibly partial) run."""
DAMAGED_MANIFEST = ".manifest.damaged.json"
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
"""OSErrors that mean "cannot write here" (permissions, read-only file system, disk full, a file in the way)."""


def lock_path(folder: Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def replaced_path(folder: Path) -> Path:
    """Where the old complete artifact waits while a `--force` run builds its replacement."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.replaced"


def partial_path(folder: Path) -> Path:
    """Where an interrupted `--force` run's partial folder waits for the next `--force` run."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.partial"


def _describe_write_error(exc: OSError, folder: Path) -> str:
    """One paragraph for an OSError raised while a stage writes `folder`."""
    target = Path(exc.filename) if exc.filename else folder
    if os.path.abspath(target) != os.path.abspath(folder.parent) and not _is_inside(target, folder.parent):
        return (f"Cannot use {target}: {exc.strerror}. Check its permissions (hebmctl needs to read its inputs and write its "
                "output folder).")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"Cannot write {target}: {exc.strerror}. Free some space (or write to another disk with --out or --run) "
                "and re-run the same command; it continues from the last checkpoint.")
    return (f"Cannot write the output folder {folder}: {exc.strerror} ({target}). Make it writable "
            f"(e.g. chmod -R u+w {folder.parent}) or write somewhere else with --out or --run. Nothing was changed.")


def _is_inside(path: Path, folder: Path) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


class FolderLock:
    """An exclusive, non-blocking advisory lock of one artifact folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise ArtifactError naming the process that holds it (OSError if the folder is not writable)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ArtifactError(
                f"{self.folder} is being written by another hebmctl process ({holder}). Two runs on one output folder would "
                "mix their files: wait for it to finish (or stop it), or write to another folder (--out or --run). "
                f"The lock is {self.path}; it is released automatically when that process ends."
            ) from None
        info = {"pid": os.getpid(), "command": " ".join(sys.argv), "since": dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"PID {info['pid']}, started {info['since']}: {info['command']}"
    except (ValueError, KeyError, OSError):
        return "PID unknown: it has only just started"


def run_marker_fingerprint(folder: Path) -> str | None:
    """The fingerprint a (partial) run in `folder` was started with, or None."""
    try:
        return json.loads((Path(folder) / RUN_MARKER).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)
    fsync_dir(dst.parent)


def _remove_tree(path: Path, what: str) -> None:
    """Delete a folder; a failure is a warning (the data it held is not needed any more)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        console().print(f"[yellow]warning: could not delete {what} {path} ({exc.strerror}); delete it by hand.[/yellow]")


class OutputSession:
    """The state of one stage run on one output folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.lock = FolderLock(self.folder)
        self.write_error: OSError | None = None  # why the folder cannot be written (lock not taken), if so
        self.opened = False
        self.passive = not is_main_process()  # only rank 0 writes (DESIGN §8); the others never touch the folder
        self.computing = False  # prepare_output decided that the stage runs
        self.replacing = False  # the old complete artifact is at replaced_path(folder)

    # ---- entering: lock and repair ------------------------------------------------------
    def open(self) -> None:
        """Lock the folder and repair what an interrupted run left (once per session)."""
        if self.opened:
            return
        self.opened = True
        if self.passive:
            return
        try:
            self.lock.acquire()
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            self.write_error = exc
            return
        self.recover()

    def recover(self) -> None:
        """Finish or undo a `--force` replacement that a crash interrupted."""
        replaced = replaced_path(self.folder)
        if not replaced.is_dir():
            return
        if (self.folder / "manifest.json").is_file():
            _remove_tree(replaced, "the replaced artifact")  # the replacement had completed
            return
        self._stash_partial()
        _rename(replaced, self.folder)
        console().print(f"[yellow]{self.folder}: restored the previous artifact, which an interrupted --force run had moved to "
                        f"{replaced}; that run's partial files are in {partial_path(self.folder)}.[/yellow]")

    def _stash_partial(self) -> None:
        stash = partial_path(self.folder)
        if self.folder.exists():
            if stash.exists():
                _remove_tree(stash, "an older partial run")
            _rename(self.folder, stash)

    def require_writable(self) -> None:
        if self.write_error is not None:
            raise ArtifactError(_describe_write_error(self.write_error, self.folder)) from self.write_error

    # ---- the decisions of prepare_output ---------------------------------------------------
    def replace_complete(self, fingerprint: str) -> None:
        """`--force` on a complete artifact: move it aside; bring back an interrupted replacement with these settings."""
        if self.passive:
            return
        self.require_writable()
        for path in (self.folder, self.folder.parent):
            if not os.access(path, os.W_OK):
                raise ArtifactError(_describe_write_error(PermissionError(errno.EACCES, "Permission denied", str(path)), self.folder))
        try:
            _rename(self.folder, replaced_path(self.folder))
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise ArtifactError(_describe_write_error(exc, self.folder)) from exc
            raise
        self.replacing = True
        stash = partial_path(self.folder)
        if stash.is_dir():
            if run_marker_fingerprint(stash) == fingerprint:
                _rename(stash, self.folder)
                console().print(f"{self.folder}: continuing the interrupted --force run (same settings)")
            else:
                _remove_tree(stash, "a partial run with other settings")

    def discard_partial(self, fingerprint: str) -> None:
        """`--force` without a complete artifact: a partial run with other settings is deleted; one
        with these settings is kept and resumed (resume is exact, so this equals starting over)."""
        if self.passive:
            return
        self.require_writable()
        stash = partial_path(self.folder)
        if self.folder.exists() and run_marker_fingerprint(self.folder) != fingerprint:
            _remove_tree_strict(self.folder)
        if stash.is_dir():
            if not self.folder.exists() and run_marker_fingerprint(stash) == fingerprint:
                _rename(stash, self.folder)
            else:
                _remove_tree(stash, "a partial run")

    def repair_damaged(self, problems: list[str]) -> None:
        """A complete, up-to-date artifact whose files changed: re-run in place, keeping checkpoints."""
        if self.passive:
            return
        self.require_writable()
        manifest = self.folder / "manifest.json"
        _rename(manifest, self.folder / DAMAGED_MANIFEST)
        console().print(f"[yellow]{self.folder} is damaged ({'; '.join(problems)}): re-running the stage; its checkpoints and "
                        "partial files are kept, so it resumes.[/yellow]")

    def begin(self, fingerprint: str, kind: str) -> None:
        """The stage will compute: create the folder and mark the run's fingerprint.

        A folder that already holds files of unknown origin (no marker, or another fingerprint's)
        is not marked: the stage may still refuse them, and a later --force must then discard them.
        """
        if self.passive:
            return
        self.require_writable()
        fresh = not self.folder.exists() or not any(self.folder.iterdir())
        self.folder.mkdir(parents=True, exist_ok=True)
        if fresh or run_marker_fingerprint(self.folder) == fingerprint:
            write_text(self.folder / RUN_MARKER, json.dumps({"fingerprint": fingerprint, "kind": kind}) + "\n")
        self.computing = True

    # ---- leaving: commit or roll back ------------------------------------------------------
    def close(self) -> None:
        """Commit when the stage wrote its manifest (the commit marker, even if something failed after
        it), else put a replaced artifact back; then unlock."""
        try:
            if self.computing:
                if (self.folder / "manifest.json").is_file():
                    self._commit()
                elif self.replacing:
                    self._roll_back()
        finally:
            self.lock.release()

    def _commit(self) -> None:
        _keep_lineage_after_repair(self.folder)
        if self.replacing:
            _remove_tree(replaced_path(self.folder), "the replaced artifact")
        (self.folder / RUN_MARKER).unlink(missing_ok=True)

    def _roll_back(self) -> None:
        try:
            self._stash_partial()
            _rename(replaced_path(self.folder), self.folder)
        except OSError as exc:
            console().print(f"[bold red]Could not put the previous artifact back ({exc}).[/bold red] It is in "
                            f"{replaced_path(self.folder)}; the next run on {self.folder} restores it, or rename it back by hand.")
            return
        console().print(f"[yellow]{self.folder} still holds the previous artifact (the --force run did not complete). Its partial "
                        f"files are kept in {partial_path(self.folder)}: re-run the same command (with --force) to continue it.[/yellow]")


def _remove_tree_strict(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise ArtifactError(_describe_write_error(exc, path)) from exc
        raise


def _keep_lineage_after_repair(folder: Path) -> None:
    """After re-running a damaged artifact: if every file came out identical, put the old manifest back."""
    damaged = folder / DAMAGED_MANIFEST
    if not damaged.is_file():
        return
    try:
        old = json.loads(damaged.read_text())
        new = json.loads((folder / "manifest.json").read_text())
        same = [(o["name"], o["sha256"]) for o in old["outputs"]] == [(o["name"], o["sha256"]) for o in new["outputs"]]
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        write_text(folder / "manifest.json", damaged.read_text())
        console().print(f"{folder}: repaired; every file is identical to the original, so the original manifest (and the "
                        "lineage of artifacts made from it) is kept")
    else:
        console().print(f"[yellow]{folder}: rebuilt; its files differ from the damaged original, so artifacts made from the "
                        "original no longer match it (re-run them).[/yellow]")
    damaged.unlink()


_SESSIONS: dict[Path, OutputSession] = {}
"""Open sessions of this process, by resolved folder (prepare_output finds its session here)."""


def _key(folder: Path) -> Path:
    return Path(os.path.abspath(folder))


@contextlib.contextmanager
def output_session(folder: Path) -> Iterator[OutputSession]:
    """The session of one stage run on `folder` (nothing is touched until prepare_output opens it)."""
    key = _key(folder)
    if key in _SESSIONS:
        raise RuntimeError(f"{folder} is already being written by this process")
    session = _SESSIONS[key] = OutputSession(Path(folder))
    try:
        yield session
    finally:
        del _SESSIONS[key]
        session.close()


def session_for(folder: Path) -> OutputSession:
    try:
        return _SESSIONS[_key(folder)]
    except KeyError:
        raise RuntimeError(f"prepare_output({folder}) outside a writing stage: decorate the stage's run() with "
                           "hebmctl.io.output.writes_artifact") from None


F = TypeVar("F", bound=Callable[..., Any])


def writes_artifact(run: F) -> F:
    """Decorator of a stage's `run(config, control=...)` that writes `config.out`: see the module docstring."""

    @functools.wraps(run)
    def wrapper(config: Any, *args: Any, **kwargs: Any) -> Any:
        folder = Path(config.out)
        dist.stage_starts()
        try:
            with output_session(folder):
                return run(config, *args, **kwargs)
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise ArtifactError(_describe_write_error(exc, folder)) from exc
            raise

    return wrapper  # type: ignore[return-value]
