"""Long work shows progress when stderr is a terminal, and nothing when it
is not (the no-terminal half is in test_cli.py)."""
import hashlib
import os
import pty
import subprocess
import time


def _read_all(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the child side is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def test_store_shows_progress_on_a_terminal(casfs, store):
    master, slave = pty.openpty()
    p = subprocess.Popen([casfs.exe, *casfs.root_args(), "store", store, "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    data = os.urandom(1 << 20)
    h = hashlib.sha256()
    for _ in range(12):  # 12 MiB over about 1.2 s
        p.stdin.write(data)
        h.update(data)
        time.sleep(0.1)
    p.stdin.close()
    out = p.stdout.read().decode().strip()
    assert p.wait(timeout=60) == 0
    err = _read_all(master).decode(errors="replace")
    os.close(master)
    assert out == h.hexdigest()  # stdout stays clean: just the digest
    assert "MiB" in err and "store:" in err, err
    assert "12.0 MiB" in err, err  # the final line shows the whole size


def test_fsck_quiet_flag_silences_progress_on_a_terminal(casfs, store, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    casfs.run("store", store, f)
    master, slave = pty.openpty()
    p = subprocess.run([casfs.exe, *casfs.root_args(), "--quiet", "fsck", store],
                       stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    os.set_blocking(master, False)
    try:
        err = os.read(master, 65536)
    except (BlockingIOError, OSError):
        err = b""
    os.close(master)
    assert p.returncode == 0
    assert err == b""
