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
    """Runs `casfs --root ROOT ...` and checks sanitizer silence.  root is a
    directory, or a RootSpec for a rados: root (its options are passed as
    --ceph-conf, --cache-dir, ...)."""

    def __init__(self, exe, root):
        self.exe = exe
        self.spec = root if isinstance(root, RootSpec) else None
        self.root = root.spec if self.spec else pathlib.Path(root)

    def root_args(self):
        return ["--root", str(self.root)] + (self.spec.cli_args() if self.spec else [])

    def run(self, *args, input=None, expect=0, root=True, env=None):
        cmd = [self.exe] + (self.root_args() if root else []) + [str(a) for a in args]
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
        cmd = [self.exe] + self.root_args() + [str(a) for a in args]
        return subprocess.Popen(cmd, **kw)


# ------------------------------------------------------------ backends
#
# Tests that take the `backend` fixture run once per backend: "dir" (a local
# directory) and "rados" (a namespace of its own in a pool of a throwaway
# Ceph cluster, see tests/ceph/).  A test that looks at the backing directory
# itself is marked @pytest.mark.dir_only and runs for "dir" alone.

BACKENDS = ("dir", "rados")
RADOS_POOL = "casfs-it"
# $CASFS_TEST_BACKENDS narrows the backends of parametrized tests, e.g. "dir"
# (scripts/test-all's sanitizer pass: see there); tests that are about one
# backend (test_rados.py) run whatever it says.
_wanted = [b for b in os.environ.get("CASFS_TEST_BACKENDS", ",".join(BACKENDS)).split(",") if b]
if not _wanted or set(_wanted) - set(BACKENDS):
    raise SystemExit(f"CASFS_TEST_BACKENDS={os.environ['CASFS_TEST_BACKENDS']!r}: "
                     f"expected a comma-separated subset of {','.join(BACKENDS)}")


def pytest_configure(config):
    config.addinivalue_line("markers", "dir_only: looks at the backing directory, so runs on the dir backend only")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        only_dir = metafunc.definition.get_closest_marker("dir_only") is not None
        chosen = ("dir",) if only_dir else BACKENDS
        metafunc.parametrize("backend", [b for b in chosen if b in _wanted], scope="function")


class RootSpec:
    """A rados: root and the options every client of it needs."""

    def __init__(self, spec, ceph_conf, cache_dir, timeout=None):
        self.spec = spec
        self.ceph_conf = str(ceph_conf)
        self.cache_dir = str(cache_dir)
        self.timeout = timeout

    def opts(self):
        """As -o options of the mount."""
        o = [f"ceph_conf={self.ceph_conf}", f"cache_dir={self.cache_dir}"]
        if self.timeout:
            o.append(f"ceph_timeout={self.timeout}")
        return o

    def cli_args(self):
        a = ["--ceph-conf", self.ceph_conf, "--cache-dir", self.cache_dir]
        if self.timeout:
            a += ["--ceph-timeout", str(self.timeout)]
        return a

    def __str__(self):
        return self.spec


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    """A running Ceph cluster with pool RADOS_POOL: the one scripts/test-all
    started ($CASFS_TEST_CEPH_DIR), else one of our own for this session.
    Fails (never skips) when Ceph is not installed."""
    import sys
    sys.path.insert(0, str(REPO / "tests" / "ceph"))
    import cephcluster
    shared = os.environ.get("CASFS_TEST_CEPH_DIR")
    if shared:
        c = cephcluster.Cluster.attach(shared)
        c.create_pool(RADOS_POOL)
        yield c
        return
    if not cephcluster.available():
        pytest.fail("Ceph is not installed (ceph-mon, ceph-osd, rados): run scripts/install-deps")
    c = cephcluster.Cluster(tmp_path_factory.mktemp("ceph"), osds=1)
    try:
        c.start()
        c.create_pool(RADOS_POOL)
        yield c
    finally:
        c.teardown()


def rados_root(ceph, tmp_path, name="root", pool=RADOS_POOL, timeout=None):
    """A fresh rados: root: a namespace of its own, named after the test."""
    import uuid
    ns = f"{name}-{uuid.uuid4().hex[:12]}"
    return RootSpec(f"rados:{pool}/{ns}", ceph.conf, tmp_path / f"cache-{name}", timeout)


@pytest.fixture
def root_spec(request, backend, tmp_path):
    """The root of this test for its backend: a path or a RootSpec."""
    if backend == "dir":
        return tmp_path / "root"
    return rados_root(request.getfixturevalue("ceph"), tmp_path)


@pytest.fixture
def casfs(casfs_bin, root_spec):
    return Casfs(casfs_bin, root_spec)


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
