"""File helpers: atomic writes, and opening a zip archive that may be damaged.

Atomic file writes: a temp file in the target's directory, flushed to disk, then renamed onto
the target, so a reader sees the old file or the new one, never half of one.

Temp files are named ``.<name>.<pid>.<random>.tmp`` (``<name>`` the target's file name,
``<pid>`` the writing process). A writer killed between creating its temp file and the rename
(``kill -9``, power loss) leaves that file behind, so every write of a target then removes the
temp files **of the same target** whose process is no longer alive (see :func:`stale_temps`).
Temp files of other targets are never touched (the name pattern is exact: a target ``a`` does
not match ``a.1``'s temp files), nor are those of a live process (another writer of the same
target in this or another process). Temp files of the earlier naming (``<name>.<random>.tmp``,
no pid) are removed once older than :data:`LEGACY_MAX_AGE_S`.
"""
import os
import re
import secrets
import struct
import time
import zipfile
import zlib

__all__ = ["atomic_write", "stale_temps", "ZIP_ERRORS", "open_zip"]

#: what Python's zipfile raises on a damaged or crafted archive, opening it or reading a member
#: (a CRC or header mismatch, an unsupported "version needed", a bad seek or length, a deflate
#: stream that is not one)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError,
              EOFError, OverflowError, struct.error, zlib.error)

#: temp files of the old pid-less naming are treated as stale after this many seconds
LEGACY_MAX_AGE_S = 3600.0


def open_zip(path, error, what):
    """``zipfile.ZipFile(path)``, or ``error(f"{path} is {what} ...")`` for a damaged archive
    (an ``OSError`` that is not about the file's existence or access counts as damage)."""
    try:
        return zipfile.ZipFile(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except ZIP_ERRORS + (OSError,) as e:
        raise error(f"{path} is {what}: a damaged zip archive ({type(e).__name__}: "
                    f"{e})") from None


def _temp_name(name, pid, token):
    return f".{name}.{pid}.{token}.tmp"


def _pid_alive(pid):
    """Whether process ``pid`` exists on this machine (``True`` when it cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def stale_temps(path):
    """The leftover temp files of target ``path``: ``.<name>.<pid>.<token>.tmp`` in its
    directory whose ``<pid>`` is not a live process, and ``<name>.<token>.tmp`` files (the
    earlier naming) older than :data:`LEGACY_MAX_AGE_S`."""
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    ours = re.compile(r"\." + re.escape(name) + r"\.([0-9]+)\.[0-9a-f]+\.tmp", re.ASCII)
    legacy = re.compile(re.escape(name) + r"\.[A-Za-z0-9_]{8}\.tmp", re.ASCII)
    out = []
    try:
        entries = os.listdir(d)
    except OSError:
        return out
    now = time.time()
    for e in entries:
        m = ours.fullmatch(e)
        full = os.path.join(d, e)
        try:
            if m is not None:
                if int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                    out.append(full)
            elif legacy.fullmatch(e) and now - os.stat(full).st_mtime > LEGACY_MAX_AGE_S:
                out.append(full)
        except OSError:  # vanished meanwhile
            pass
    return out


def _fsync_dir(d):
    if os.name != "posix":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, payload):
    """Write ``payload`` (bytes) to ``path`` atomically (creating its directory), then remove
    the stale temp files an earlier, killed write of ``path`` left (see the module doc).

    A failed write (a full disk, no permission) raises ``OSError`` (or its subclass for the
    errno) whose ``filename`` is ``path``, the target, and leaves the old file as it was."""
    path = os.fspath(path)
    try:
        _write(path, payload)
    except OSError as e:
        if e.errno is None or e.filename == path:
            raise
        raise OSError(e.errno, e.strerror, path) from e
    d = os.path.dirname(os.path.abspath(path))
    _fsync_dir(d)
    for stale in stale_temps(path):
        try:
            os.remove(stale)
        except OSError:  # removed by a concurrent writer, or not ours to remove
            pass


def _write(path, payload):
    d, name = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    while True:
        tmp = os.path.join(d, _temp_name(name, os.getpid(), secrets.token_hex(6)))
        try:  # mode 0666 less the umask: a normal file's mode
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
