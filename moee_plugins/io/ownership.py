"""What a run may replace, and one run per output at a time.

* An output is never an input, and never a folder holding one: writing it would destroy the data it is made
  from (:func:`refuse_overlap`), with or without ``--overwrite``.
* A folder is replaced only when moee wrote it: such a folder holds :data:`MARKER` (:func:`mark_ours`,
  :func:`is_ours`); anything else is refused, naming what is in it (:func:`describe_contents`).
* :class:`OutputLock` makes a second run on the same output refuse at once with one clear line. The lock is an
  advisory ``flock`` on ``OUTPUT.lock``: the kernel drops it when its process dies, so the lock of a killed run
  never blocks the next one; the file records the holder's pid for the message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .shards import ShardError

logger = logging.getLogger("moee_plugins")

MARKER = ".moee-output.json"  # a leading dot: parquet readers skip it when they read the folder
MARKER_FORMAT = "moee-output"


class OutputError(ShardError):
    """The output cannot be written as asked (it is an input, a folder moee did not write, or in use)."""


class OutputBusy(OutputError):
    """Another run holds the output's lock."""


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _same_or_inside(inner: Path, outer: Path) -> bool:
    if inner == outer or outer in inner.parents:
        return True
    with contextlib.suppress(OSError):  # hard links, bind mounts: the same file under another name
        return os.path.samefile(inner, outer)
    return False


def refuse_overlap(outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Raise :class:`OutputError` when a path the run writes or deletes is an input, or a folder holding one."""
    inputs = [(path, _real(path)) for path in inputs if path is not None]
    for output in outputs:
        target = _real(output)
        for given, source in inputs:
            if _same_or_inside(source, target):
                what = "is" if source == target or not target.is_dir() else "holds"
            elif source in target.parents:
                what = "is inside"
            else:
                continue
            raise OutputError(f"the output {output} {what} the input {given}: writing it would destroy the input; "
                              "choose an output elsewhere (nothing was written)")


def mark_ours(directory: str | os.PathLike[str], kind: str) -> None:
    """Record in ``directory`` that moee wrote it (what :func:`is_ours` looks for)."""
    from ..core.version import __version__

    Path(directory, MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "kind": kind, "version": __version__}),
                                       encoding="utf-8")


def is_ours(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds moee's marker (a folder moee wrote and may replace)."""
    try:
        data = json.loads(Path(directory, MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MARKER_FORMAT


def describe_contents(directory: str | os.PathLike[str], limit: int = 5) -> str:
    """``'a.txt', 'b/' and 3 more``: what a folder holds, for a refusal."""
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(directory))
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "nothing"


def lock_path_for(output: str | os.PathLike[str]) -> Path:
    """``OUTPUT.lock``, beside the output."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


class OutputLock:
    """An exclusive lock on one output for the duration of a run (a context manager).

    Example:
        >>> with OutputLock("vectors.npy"):    # doctest: +SKIP
        ...     ...                            # a second run on vectors.npy now raises OutputBusy
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.path = lock_path_for(self.output)
        self._handle: Any = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock on this platform (Windows): runs are not serialised there
            logger.warning("cannot lock %s on this platform: make sure no other run writes it", self.output)
            return
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
            except OSError as exc:
                raise OutputError(f"cannot write {self.output}: {exc.strerror or exc}; choose another output") from None
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise OutputBusy(f"{self.output} is being written by another moee run (pid {holder}); wait for it "
                                 f"to finish or stop it, then run again") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still locked: a waiting run then re-opens a fresh file
        self._handle.close()
        self._handle = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claimed(output: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None],
            also_written: Iterable[str | os.PathLike[str]] = ()) -> Iterator[None]:
    """Refuse an output (or a path written beside it) that is or holds an input, then hold the output's lock."""
    refuse_overlap([output, *also_written, lock_path_for(output)], inputs)
    with OutputLock(output):
        yield
