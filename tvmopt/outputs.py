"""Files tvmopt writes (libraries, outputs, exports, plots): checked before any work starts,
written whole, and impossible to redirect.

Nothing a user owns is replaced: an output path may be new, or hold a file of the kind tvmopt
itself wrote there before (a tvmopt library, an .npz of outputs); never the model, its weights,
the tuning database, the inputs, a device, a directory or any other file.

Every write goes into a fresh private directory (mode 0700, created by mkdtemp) beside the
target, so no other user can plant a symlink or a file under the name being written, two
processes writing the same target never share a temporary name, and the rename into place is
atomic (same filesystem). The bytes are fsync'd before the rename: a full disk is an error,
never a truncated file reported as written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import TvmoptError

# Private directories of writes in progress, removed by a signal handler that exits at once.
_in_progress: set[str] = set()
_lock = threading.Lock()


def check_output(path: str | os.PathLike, *, flag: str, kind: str,
                 replaceable: Callable[[Path], bool],
                 protected: Iterable[tuple[str | os.PathLike, str]] = (),
                 directory: bool = False, example: str | None = None) -> Path:
    """The path to write, or a one-line error saying why not.

    `kind` names what is written ("tvmopt library"); `replaceable(path)` says whether an existing
    file (or, with `directory`, directory) is one; `protected` pairs each path that must survive
    with what it is; `example` is a file name to suggest.
    """
    text = os.fspath(path)
    if not text.strip():
        raise TvmoptError(f"{flag} is empty; give a {'directory' if directory else 'file'} path "
                          f"such as out/{example or 'model.so'}")
    out = Path(text)
    if not directory and (text.endswith(("/", os.sep)) or out.is_dir()):
        raise TvmoptError(f"{flag} {text} names a directory; give a file path inside it, such as "
                          f"{out / (example or 'model.so')}")
    resolved = out.resolve()
    for other, what in protected:
        if other is not None and Path(other).exists() and Path(other).resolve() == resolved:
            raise TvmoptError(f"{flag} {text} is {what}; writing there would destroy it: choose "
                              "another path")
    if out.is_symlink():
        raise TvmoptError(f"{flag} {text} is a symbolic link; tvmopt does not write through "
                          "links: give the real path")
    if out.exists():
        expected = out.is_dir() if directory else out.is_file()
        if not expected:
            raise TvmoptError(f"{flag} {text} is not a {'directory' if directory else 'regular file'}"
                              f" (a {file_kind(out.stat().st_mode)}); choose another path")
        if not replaceable(out):
            raise TvmoptError(f"{flag} {text} exists and is not a {kind}; tvmopt replaces only its "
                              "own files: remove it or choose another path")
    parent = out.parent
    if not parent.is_dir():
        raise TvmoptError(f"{flag} {text}: directory {parent} does not exist; create it first "
                          f"(mkdir -p {parent})")
    try:  # a read-only directory or filesystem fails now, not after minutes of compiling
        tempfile.TemporaryDirectory(dir=parent, prefix=".tvmopt-write-check-").cleanup()
    except OSError as e:
        raise TvmoptError(f"{flag} {text}: cannot write to {parent} ({os_reason(e)}); choose a "
                          "writable directory") from None
    return out


def file_kind(mode: int) -> str:
    """What a file's st_mode says it is, in words: "file", "directory", "pipe", "device"..."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "pipe"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISREG, "file")):
        if test(mode):
            return name
    return "special file"


def os_reason(e: OSError) -> str:
    """What an OSError means for the user, in words ("no space left on device")."""
    return {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(e.errno, e.strerror or str(e))


def write_error(out: Path, e: OSError) -> TvmoptError:
    hint = {errno.ENOSPC: "free some space or write elsewhere",
            errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "choose a writable location",
            errno.EACCES: "choose a directory you can write to",
            errno.EPERM: "choose a directory you can write to"}.get(e.errno, "choose another path")
    return TvmoptError(f"cannot write {out}: {os_reason(e)}; {hint} (nothing was changed)")


@contextlib.contextmanager
def written_whole(out: Path, *, directory: bool = False):
    """Yields a path in a private directory beside `out`; on success what was written there
    becomes `out` (an existing `out` is replaced only then), on failure it is removed.

    A reader never sees a half-written file at `out`, a failed or interrupted write leaves the
    old one, and two writers of one `out` each leave a whole file (the last one wins)."""
    out = Path(out)
    try:
        tmp = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tvmopt-")
    except OSError as e:
        raise write_error(out, e) from None
    with _lock:
        _in_progress.add(tmp)
    try:
        partial = Path(tmp) / out.name
        try:
            yield partial
        except OSError as e:  # the body only writes: a full disk, a quota
            raise write_error(out, e) from None
        try:
            if directory:
                _replace_directory(partial, out, Path(tmp))
            else:
                if partial.is_symlink() or not partial.is_file():
                    raise TvmoptError(f"cannot write {out}: the writer produced no file")
                _fsync(partial)
                os.replace(partial, out)
            _fsync(out.parent, directory=True)
        except OSError as e:
            raise write_error(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with _lock:
            _in_progress.discard(tmp)


def _replace_directory(new: Path, out: Path, tmp: Path) -> None:
    for f in new.rglob("*"):
        if f.is_file() and not f.is_symlink():
            _fsync(f)
    if out.exists():  # a directory cannot be renamed over a non-empty one: move it aside first
        os.replace(out, tmp / "replaced")
    os.replace(new, out)


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory
                 else (os.O_RDONLY | os.O_NOFOLLOW))
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def discard_partials() -> None:
    """Remove every write in progress (a signal handler calls this before exiting at once)."""
    with _lock:
        for tmp in list(_in_progress):
            shutil.rmtree(tmp, ignore_errors=True)
        _in_progress.clear()
