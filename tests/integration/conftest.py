"""Shared fixtures for the integration tests: they drive the built `casfs`
command (from $CASFS_BUILD, default ./build) as a user would."""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CASFS_BUILD", REPO / "build"))
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


@pytest.fixture(scope="session")
def casfs_bin():
    exe = BUILD / "cli" / "casfs"
    if not exe.is_file():
        pytest.fail(f"casfs is not built at {exe}: run scripts/build first")
    return str(exe)


class Casfs:
    """Runs `casfs --root ROOT ...` and checks sanitizer silence."""

    def __init__(self, exe, root):
        self.exe = exe
        self.root = pathlib.Path(root)

    def run(self, *args, input=None, expect=0, root=True, env=None):
        cmd = [self.exe] + (["--root", str(self.root)] if root else []) + [str(a) for a in args]
        p = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=300)
        err = p.stderr.decode(errors="replace")
        for mark in SANITIZER_MARKS:
            assert mark not in err, f"sanitizer report from {cmd}:\n{err}"
        if expect is not None:
            assert p.returncode == expect, (
                f"{cmd} exited {p.returncode}, expected {expect}\nstdout: {p.stdout[:2000]!r}\nstderr: {err}")
        return p

    def out(self, *args, **kw):
        """stdout of a successful run, decoded and stripped."""
        return self.run(*args, **kw).stdout.decode().strip()

    def popen(self, *args, **kw):
        cmd = [self.exe, "--root", str(self.root)] + [str(a) for a in args]
        return subprocess.Popen(cmd, **kw)


@pytest.fixture
def casfs(casfs_bin, tmp_path):
    return Casfs(casfs_bin, tmp_path / "root")


@pytest.fixture
def store(casfs):
    """A fresh sha256 store; returns its id."""
    return casfs.out("new")


@pytest.fixture(scope="session")
def mount_helper_installed():
    """/sbin/mount.casfs for this build, so `mount -t casfs` finds it."""
    from fuse_util import HELPER_PATH, install_mount_helper
    undo = install_mount_helper()
    yield HELPER_PATH
    undo()
