"""Files tvmopt writes (libraries, outputs): checked before any work starts, written whole.

Nothing a user owns is replaced: an output path may be new, or hold a file of the kind tvmopt
itself wrote there before (a tvmopt library, an .npz of outputs); never the model, its weights,
the tuning database, the inputs, a device, a directory or any other file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import TvmoptError


def check_output(path: str | os.PathLike, *, flag: str, kind: str,
                 replaceable: Callable[[Path], bool],
                 protected: Iterable[tuple[str | os.PathLike, str]] = ()) -> Path:
    """The path to write, or a one-line error saying why not.

    `kind` names what is written ("tvmopt library"); `replaceable(path)` says whether an existing
    file is one; `protected` pairs each path that must survive with what it is.
    """
    text = os.fspath(path)
    if not text.strip():
        raise TvmoptError(f"{flag} is empty; give a file path such as out/model.so")
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir():
        raise TvmoptError(f"{flag} {text} names a directory; give a file path inside it, such as "
                          f"{out / ('model.so' if kind.endswith('library') else 'outputs.npz')}")
    resolved = out.resolve()
    for other, what in protected:
        if other is not None and Path(other).exists() and Path(other).resolve() == resolved:
            raise TvmoptError(f"{flag} {text} is {what}; writing there would destroy it: choose "
                              "another path")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise TvmoptError(f"{flag} {text} is not a regular file (a device, pipe or broken "
                              "link); tvmopt writes only regular files: choose another path")
        if not replaceable(out):
            raise TvmoptError(f"{flag} {text} exists and is not a {kind}; tvmopt replaces only its "
                              "own files: remove it or choose another path")
    parent = out.parent
    if not parent.is_dir():
        raise TvmoptError(f"{flag} {text}: directory {parent} does not exist; create it first "
                          f"(mkdir -p {parent})")
    try:  # a read-only directory or filesystem fails now, not after minutes of compiling
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".tvmopt-write-check-"):
            pass
    except OSError as e:
        raise TvmoptError(f"{flag} {text}: cannot write to {parent} ({e.strerror or e}); "
                          "choose a writable directory") from None
    return out


@contextlib.contextmanager
def written_whole(out: Path):
    """Yields a temporary path beside `out`; on success it becomes `out`, on failure it is removed.

    A reader never sees a half-written file at `out`, and a failed write leaves the old one."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        yield partial
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
