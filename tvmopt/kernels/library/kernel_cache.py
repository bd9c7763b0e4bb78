"""The kernel cache on disk: $TVMOPT_CACHE/kernels (default $XDG_CACHE_HOME/tvmopt, else
~/.cache/tvmopt), where it is, whether it can be trusted and written, its entries and their
digest index, and its lock files. nvcc.py compiles into it.

- Verified entries: `index.json` records each entry's sha256 when it is written; an entry is
  read whole, checked against it, and what is linked is a private copy of the checked bytes.
  An entry whose bytes differ is compiled again, with a warning.
- Permissions: the cache directory, its entries and its index must not be writable by other
  users (nor owned by another user, root excepted), or the build stops with a one-line error:
  anyone who can write there can put code into your artifacts. TVMOPT_CACHE_SHARED=group opts
  into a team cache: group-writable directories (setgid, so entries keep the group) and entries
  of teammates are accepted, and entries are written group-readable; never writable by all.
- A read-only cache (a read-only mount; root's, or a team's, directory this user may not write)
  still serves its verified entries; what it lacks is compiled into a private temporary cache
  for this process.
- Locks are flock'd files, `.locks/<entry>.lock` (an instance being compiled), `.locks/index.lock`
  and the job slots `.slots/0..N-1`, released by the kernel when a process dies.
- Everything is written whole: a temporary file created exclusively beside the target (no
  symlink followed), fsync'd, then renamed over it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ...errors import TvmoptError

log = logging.getLogger(__name__)

SHARED_ENV = "TVMOPT_CACHE_SHARED"  # "group": a team cache
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_INDEX_FORMAT = "tvmopt-kernel-cache-index/1"


def cache_dir() -> Path:
    root = os.environ.get("TVMOPT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvmopt"
    return Path(root) / "kernels"


# ----------------------------------------------------------------------------------------------
# The cache directory: where it is, whether it can be trusted and written


@dataclass(frozen=True)
class _Cache:
    root: Path  # $TVMOPT_CACHE
    dir: Path  # root/kernels: the entries and their index
    group: bool  # a team cache (TVMOPT_CACHE_SHARED=group)
    writable: bool

    @property
    def index(self) -> Path:
        return self.dir / "index.json"

    def lock(self, name: str) -> Path:
        return self.dir / ".locks" / f"{name}.lock"

    def slot(self, i: int) -> Path:
        return self.dir / ".slots" / str(i)


class CacheRefused(TvmoptError):
    """The kernel cache (or an entry of it) could be written by other users."""


def _group_mode() -> bool:
    value = os.environ.get(SHARED_ENV, "").strip()
    if value.lower() in ("", "0", "no", "off", "private"):
        return False
    if value.lower() == "group":
        return True
    raise TvmoptError(f"{SHARED_ENV}={value} is not understood; set it to 'group' for a kernel "
                      "cache shared by a team (a Unix group), or leave it unset")


def _open_cache() -> _Cache:
    """The shared cache, checked: a one-line CacheRefused where other users could write it;
    `writable` False where this process cannot (read-only mount, permissions)."""
    group = _group_mode()
    kernels = cache_dir()
    root = kernels.parent
    for d in (root, kernels):
        _check_dir(d, group, top=d == root)
    writable = True
    try:
        _make_dirs(kernels / ".locks", group, root)
        _make_dirs(kernels / ".slots", group, root)
    except OSError as e:
        if e.errno not in _READ_ONLY:
            raise TvmoptError(f"cannot create the kernel cache {kernels}: {e.strerror}") from None
        writable = False
    for d in (root, kernels):  # as created now
        _check_dir(d, group, top=d == root)
    if writable:
        probe = kernels / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            os.unlink(probe)
        except OSError as e:
            if e.errno not in _READ_ONLY:
                raise TvmoptError(f"cannot write to the kernel cache {kernels}: "
                                  f"{e.strerror}") from None
            writable = False
    return _Cache(root, kernels, group, writable)


def _check_dir(d: Path, group: bool, top: bool) -> None:
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return
    except OSError as e:
        raise TvmoptError(f"cannot use the kernel cache {d}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TvmoptError(f"kernel cache {d} is not a directory; set TVMOPT_CACHE to a directory")
    # A sticky top directory (TVMOPT_CACHE=/tmp) protects what others' writes could replace.
    _check_trusted(d, st, group, sticky_ok=top, owner=not top)


def _check_trusted(path: Path, st: os.stat_result, group: bool, *, sticky_ok: bool = False,
                   owner: bool = True) -> None:
    mode = st.st_mode
    if sticky_ok and mode & stat.S_ISVTX:
        return
    if mode & stat.S_IWOTH:
        raise CacheRefused(
            f"kernel cache {path} is writable by every user (mode {stat.filemode(mode)}): anyone "
            f"could put code into your builds; run `chmod o-w {path}`")
    if group:
        return
    if mode & stat.S_IWGRP:
        raise CacheRefused(
            f"kernel cache {path} is writable by its group (mode {stat.filemode(mode)}); run "
            f"`chmod go-w {path}`, or set {SHARED_ENV}=group for a team cache")
    if owner and st.st_uid not in (os.geteuid(), 0):
        raise CacheRefused(
            f"kernel cache {path} belongs to another user (uid {st.st_uid}); point TVMOPT_CACHE "
            f"at a directory of your own, or set {SHARED_ENV}=group for a team cache")


def _make_dirs(d: Path, group: bool, root: Path) -> None:
    """mkdir -p, each new directory closed to others' writes whatever the umask: in a team
    cache (at or under `root`) group-writable and setgid, so entries keep the group."""
    missing = []
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o755)
        except FileExistsError:
            continue
        mode = stat.S_IMODE(os.stat(new).st_mode)
        if group and new.is_relative_to(root):
            mode |= stat.S_ISGID | 0o070
        os.chmod(new, mode & ~stat.S_IWOTH & ~(0 if group else stat.S_IWGRP))


_private_lock = threading.Lock()
_private: dict[str, Path] = {}


def _private_dir(what: str) -> Path:
    """A directory of this process only (mode 0700), removed when it exits."""
    with _private_lock:
        if "top" not in _private:
            top = Path(tempfile.mkdtemp(prefix="tvmopt-kernels-"))
            _private["top"] = top
            pid = os.getpid()
            atexit.register(lambda: os.getpid() == pid and shutil.rmtree(top, ignore_errors=True))
        d = _private.setdefault(what, _private["top"] / what)
        d.mkdir(mode=0o700, exist_ok=True)
        return d


def _private_cache() -> _Cache:
    """Where a process whose cache is read-only compiles (the same one for all its builds)."""
    root = _private_dir("cache")
    for sub in (".locks", ".slots"):
        (root / "kernels" / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    return _Cache(root, root / "kernels", False, True)


def _stage(entry: str, data: bytes) -> Path:
    """The verified bytes of an entry, in a private file: what is linked is what was checked."""
    path = _private_dir("staged") / entry
    if not path.exists():
        _write_whole(path, data, group=False)
    return path


# ----------------------------------------------------------------------------------------------
# Entries and their index


def _read_index(c: _Cache, *, quiet: bool) -> dict[str, str]:
    """{entry file name: sha256 recorded when it was written}; {} without an index."""
    try:
        fd = os.open(c.index, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as e:
        if not quiet:
            log.warning("kernel cache index %s cannot be read (%s); its entries are compiled "
                        "again", c.index, e.strerror)
        return {}
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        _check_trusted(c.index, st, c.group)
        raw = f.read() if stat.S_ISREG(st.st_mode) else b"not a regular file"
    try:
        index = json.loads(raw)
        if index.get("format") != _INDEX_FORMAT:
            raise ValueError(f"format {index.get('format')!r}")
        return {k: v["sha256"] for k, v in index["entries"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if not quiet:
            log.warning("kernel cache index %s is damaged (%s); its entries are compiled again",
                        c.index, e)
        return {}


def _record(c: _Cache, entry: str, digest: str) -> None:
    """Add an entry's digest to the index: read, change, write whole, under the index's lock."""
    with _locked(c.lock("index"), c.group):
        index = _read_index(c, quiet=True)
        index[entry] = digest
        text = json.dumps({"format": _INDEX_FORMAT,
                           "entries": {k: {"sha256": v} for k, v in sorted(index.items())}},
                          indent=1)
        _write_whole(c.index, text.encode(), c.group)


_UNRECORDED = "is not recorded in the cache's index"


def _read_entry(c: _Cache, entry: str, index: dict[str, str]) -> tuple[bytes | None, str | None]:
    """(the entry's bytes, None) if present and matching its recorded digest, else (None, why
    not; None where it is simply absent). CacheRefused where other users could have written it."""
    path = c.dir / entry
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        _check_trusted(path, st, c.group)
        data = f.read()
    recorded = index.get(entry)
    if recorded is None:
        return None, _UNRECORDED
    if hashlib.sha256(data).hexdigest() != recorded:
        return None, "does not match the digest recorded when it was written"
    return data, None


def _write_whole(dst: Path, data: bytes, group: bool) -> None:
    """dst appears whole or not at all: written into a file created exclusively beside it (no
    symlink followed), fsync'd, renamed over it. Readable by the group in a team cache."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            if group:
                os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRGRP)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# Lock files


def _open_lock(path: Path, group: bool) -> int:
    # Read-only is enough for flock; a teammate's lock file need not be writable by us.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o644)
    except OSError as e:
        raise TvmoptError(f"cannot open the lock {path} of the kernel cache: {e.strerror}; "
                          "check that directory's permissions") from None
    if group:
        with suppress(OSError):
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and not st.st_mode & stat.S_IRGRP:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRGRP)
    return fd


def _try_lock(path: Path, group: bool) -> int | None:
    """An fd holding the file's exclusive flock, or None where another holder has it."""
    fd = _open_lock(path, group)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _locked(path: Path, group: bool):
    fd = _open_lock(path, group)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
