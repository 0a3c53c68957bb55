"""nbconv._io.atomic_write: atomic replace, normal file mode, and no temp files piling up after a
writer was killed (bug H)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nbconv import _io
from nbconv._io import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_full_disk_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    """The OSError of a failed write (ENOSPC at fsync, as a full disk gives) names the target,
    not the temp file or nothing, keeps its errno and subclass, and leaves the old file."""
    import errno
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write(target, b"new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    monkeypatch.undo()
    (tmp_path / "ro").mkdir()
    with pytest.raises(FileExistsError) as e:   # the errno's subclass survives
        atomic_write(target / "under-a-file", b"x")
    assert e.value.filename == str(target / "under-a-file")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin", "ro"]


@pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked on POSIX only")
def test_stale_temp_of_dead_writer_removed(tmp_path):
    target = tmp_path / "ckpt.npz"
    dead = _dead_pid()
    stale = tmp_path / f".ckpt.npz.{dead}.0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    # kept: our own (a concurrent writer in this process), a live process's, other targets'
    own = tmp_path / f".ckpt.npz.{os.getpid()}.aa.tmp"
    live = tmp_path / f".ckpt.npz.{os.getppid()}.bb.tmp"
    other = tmp_path / f".ckpt.npz.1.{dead}.cc.tmp"  # a temp of target "ckpt.npz.1"
    other2 = tmp_path / f".other.{dead}.dd.tmp"
    for p in (own, live, other, other2):
        p.write_bytes(b"y")
    assert _io.stale_temps(target) == [str(stale)]
    atomic_write(target, b"new")
    assert not stale.exists()
    assert all(p.exists() for p in (own, live, other, other2))
    assert target.read_bytes() == b"new"


def test_legacy_temps_removed_when_old(tmp_path):
    target = tmp_path / "ckpt.npz"
    old = tmp_path / "ckpt.npz.k2j_9x7q.tmp"  # tempfile.mkstemp's naming before the fix
    young = tmp_path / "ckpt.npz.abcdefgh.tmp"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    t = time.time() - 2 * _io.LEGACY_MAX_AGE_S
    os.utime(old, (t, t))
    atomic_write(target, b"new")
    assert not old.exists() and young.exists()


@pytest.mark.skipif(os.name != "posix", reason="needs kill -9")
def test_kill_9_mid_write_then_next_write_cleans_up(tmp_path):
    target = tmp_path / "ckpt.bin"
    atomic_write(target, b"first")
    # a writer that stops (forever) between writing its temp file and the rename
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {ROOT!r})
        from nbconv import _io
        def hang(*a):
            print("ready", flush=True)
            time.sleep(600)
        _io.os.replace = hang
        _io.atomic_write({str(target)!r}, b"z" * 100000)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        assert len(temps) == 1 and temps[0].startswith(f".ckpt.bin.{p.pid}.")
        # while the writer lives, its temp file is left alone
        atomic_write(target, b"second")
        assert os.path.exists(tmp_path / temps[0])
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    assert target.read_bytes() == b"second"
    atomic_write(target, b"third")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.bin"]
    assert target.read_bytes() == b"third"
