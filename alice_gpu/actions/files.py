"""Actions, one file: moved without ever being only half somewhere, never over another.

A move is a hard link then an unlink; across filesystems the bytes go to a
temporary file created exclusively (``O_EXCL|O_NOFOLLOW``) beside the
destination, fsynced, then linked into place, so a file that appears at the
destination meanwhile is never overwritten. Only regular files move: a symlink
is never followed at either end. :func:`settle` says where a move a kill
interrupted stands.
"""

from __future__ import annotations

import ctypes
import errno
import filecmp
import os
import shutil
import stat
from typing import Callable

TMP_SUFFIX = ".alice-gpu-partial"
# a filesystem without hard links (FAT, some network shares) answers link() with these
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS)
_RENAME_NOREPLACE = 1


def why(exc: OSError) -> str:
    """One line about a file operation that failed."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}: {exc.filename}" if exc.filename and str(exc.filename) not in text else text


def regular(path: str) -> os.stat_result:
    """The file's own stat (a symlink is not followed); only a regular file moves."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{path} is not a regular file (a symlink or a special "
                                    f"file); left alone")
    return st


def same_file(a: str, b: str) -> bool:
    try:
        x, y = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def same_bytes(a: str, b: str) -> bool:
    try:
        regular(a), regular(b)
    except OSError:
        return False
    return filecmp.cmp(a, b, shallow=False)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ready(src: str, dst: str, allowed: Callable[[str], str | None] | None
           ) -> tuple[os.stat_result, str]:
    """The source's stat and the destination's folder, made; OSError when the source is
    not a regular file, the destination is not allowed (checked once its folders
    exist) or already taken."""
    st = regular(src)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    problem = allowed(dst) if allowed is not None else None
    if problem:
        raise OSError(errno.EACCES, problem)
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, f"{dst} already exists; not overwritten")
    return st, parent


def relocate(src: str, dst: str, allowed: Callable[[str], str | None] | None = None) -> None:
    """Move one regular file without ever having it only half somewhere, never over an
    existing name, never through a symlink; ``allowed(dst)`` re-checks the destination
    once its folders exist."""
    st, parent = _ready(src, dst, allowed)
    try:
        os.link(src, dst, follow_symlinks=False)     # atomic, and fails instead of overwriting
    except OSError as exc:
        if exc.errno != errno.EXDEV and exc.errno not in _NO_LINKS:
            raise
        _copy_across(src, dst, st)                   # another filesystem, or no hard links
    os.unlink(src)
    _fsync_dir(parent)
    _fsync_dir(os.path.dirname(src) or ".")


def place(src: str, dst: str, how: str,
          allowed: Callable[[str], str | None] | None = None) -> None:
    """Put ``src`` at ``dst`` by ``how``: 'move' (:func:`relocate`), 'copy' (the bytes and
    mtime, the source kept) or 'link' (a hard link); never over an existing name."""
    if how == "move":
        relocate(src, dst, allowed)
        return
    st, parent = _ready(src, dst, allowed)
    if how == "link":
        os.link(src, dst, follow_symlinks=False)
    else:
        _copy_across(src, dst, st)
    _fsync_dir(parent)


def placed(src: str, dst: str, how: str) -> bool:
    """A copy or link a kill may have interrupted is complete at ``dst``."""
    if how == "link":
        return same_file(src, dst)
    return same_file(src, dst) or same_bytes(src, dst)


def settle_placed(src: str, dst: str, how: str) -> str:
    """Where a planned copy or link stands after a kill: 'done', 'todo' or a problem."""
    _unlink_quietly(dst + TMP_SUFFIX)
    if os.path.lexists(dst):
        return "done" if os.path.lexists(src) and placed(src, dst, how) else "both"
    return "todo" if os.path.lexists(src) else "missing"


def unplace(src: str, dst: str, how: str) -> str | None:
    """Undo a copy or link: ``dst`` goes only while it is still what was placed (the same
    file, or the same bytes as the original, which must still be there). A problem, or None."""
    if not os.path.lexists(dst):
        return None                                   # gone already: nothing to take back
    if not os.path.lexists(src):
        return f"the original {src} is gone; its {how} at {dst} is kept"
    if not placed(src, dst, how):
        return f"{dst} changed since it was placed; left as it is"
    os.unlink(dst)
    _fsync_dir(os.path.dirname(dst) or ".")
    return None


def prune_empty(folder: str, stop: str) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while empty."""
    stop = os.path.abspath(stop)
    folder = os.path.abspath(folder)
    while folder != stop and folder.startswith(stop.rstrip(os.sep) + os.sep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def _copy_across(src: str, dst: str, st: os.stat_result) -> None:
    """The bytes and mtime to a temporary file created exclusively beside ``dst`` (never
    through a symlink), fsynced, then linked to ``dst``."""
    tmp = dst + TMP_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:             # a copy a kill cut short: ours to remove
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, \
                os.fdopen(os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fin:
            shutil.copyfileobj(fin, out, 1 << 20)
            out.flush()
            if out.tell() != st.st_size:
                raise OSError(errno.EAGAIN, f"{src} changed while it was copied; left alone")
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out.fileno())
        _place(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _place(tmp: str, dst: str) -> None:
    """``tmp`` becomes ``dst`` only if nothing is at ``dst``."""
    try:
        os.link(tmp, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        _rename_noreplace(tmp, dst)
        return
    os.unlink(tmp)


def _rename_noreplace(tmp: str, dst: str) -> None:
    """rename(2) that fails instead of replacing (Linux renameat2), for filesystems
    without hard links; refused where the kernel or filesystem lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        at_fdcwd = -100
        if fn(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), dst)
    raise OSError(errno.EOPNOTSUPP, f"the filesystem of {dst} has no hard links and no rename "
                                    f"that cannot overwrite; not moved")


def settle(src: str, dst: str) -> str:
    """Where a planned move stands after a kill: 'done', 'todo' or a problem."""
    at_src, at_dst = os.path.lexists(src), os.path.lexists(dst)
    _unlink_quietly(dst + TMP_SUFFIX)        # a copy cut short, or linked but not removed
    if at_src and at_dst:
        # killed between link and unlink, or after a cross-filesystem copy was linked
        # into place: the source goes only when the destination holds the same bytes
        if same_file(src, dst) or same_bytes(src, dst):
            os.unlink(src)
            return "done"
        return "both"
    if at_dst:
        return "done"
    return "todo" if at_src else "missing"


