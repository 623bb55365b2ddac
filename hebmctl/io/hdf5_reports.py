"""HDF5's own reports of a failed write, held back while we report the failure ourselves.

When a write fails (a full disk, a file-size limit), HDF5 tries again to flush its caches each time h5py
frees a dataset or file handle, and Cython prints each of those failures as a traceback ("Exception
ignored in: 'h5py._objects.ObjectID.__dealloc__'"), during the failing write and again at exit. They
repeat the error the CLI already explains in one line, so, found by the fault drills (issue 14):

- inside `held_back()`, such reports are collected, not printed;
- when the block fails, they are dropped, and later ones too (the exit-time repeats): the caller
  raises the clear error;
- when the block succeeds, they are printed as they would have been: a failure we did not see.

Reports are recognised by their traceback ending in h5py's `_objects.pyx` (PyErr_PrintEx goes
through `sys.excepthook`) and by the unraisable object naming an h5py `__dealloc__`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

_state: dict[str, Any] = {"installed": False, "holding": 0, "dropping": False, "held": []}


def _from_h5py_dealloc(tb: TracebackType | None) -> bool:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith("_objects.pyx")


def _route(is_h5py: bool, print_it: Callable[[], None]) -> None:
    if not is_h5py or not (_state["holding"] or _state["dropping"]):
        print_it()
    elif not _state["dropping"]:
        _state["held"].append(print_it)


def _install() -> None:
    if _state["installed"]:
        return
    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        _route(_from_h5py_dealloc(tb), lambda: previous_except(kind, value, tb))

    def unraisablehook(report: Any) -> None:
        _route("h5py" in str(report.object) and "dealloc" in str(report.object), lambda: previous_unraisable(report))

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    _state["installed"] = True


@contextmanager
def held_back() -> Iterator[None]:
    """Run an HDF5 write with h5py's handle-release failure reports held back (see the module doc)."""
    _install()
    _state["holding"] += 1
    try:
        yield
    except BaseException:
        _state["dropping"], _state["held"] = True, []
        raise
    finally:
        _state["holding"] -= 1
    if not _state["holding"]:
        held, _state["held"] = _state["held"], []
        for print_it in held:
            print_it()
