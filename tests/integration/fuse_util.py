"""Mounting casfs for the filesystem tests (test_fs_*.py), the way libfuse's
own tests do it (test/util.py): start the daemon, wait for the mount by
polling, check /proc/self/mountinfo, and on teardown unmount cleanly and
insist that the daemon exited 0 and said nothing alarming.  Any failure on
the way unmounts lazily and kills the daemon, so one broken test never
leaves a dead mount behind for the next.

Test modules import the fixtures they use:

    from fuse_util import how, mounter, mounted  # noqa: F401  (fixtures)

`mounted` is one mount of a fresh root with default options; `mounter` is a
factory for tests that need options, a prepared root, or several mounts.
`how` says how the daemon is started; the mount.casfs helper is added to
MOUNT_HOWS (and to mount_command) when it exists, and every test then runs
both ways.
"""
import errno
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import BUILD, SANITIZER_MARKS, Casfs, RootSpec

# How the daemon is started; each test using `mounted`/`mounter` runs once
# per entry.
MOUNT_HOWS = ("casfs-mount", "mount.casfs")
HELPER_PATH = "/sbin/mount.casfs"

MOUNT_TIMEOUT = 10.0   # seconds to wait for the mount to appear
EXIT_TIMEOUT = 10.0    # seconds for the daemon to exit after an unmount
# A test that takes longer than this with a mount is hung on the mount: the
# daemon is killed (which fails every pending request with ENOTCONN instead
# of hanging pytest forever) and the test fails at teardown.
WATCHDOG = 60.0

# Words in the daemon's stderr that fail a test unless it expects them.
BAD_WORDS = ("error", "warning", "AddressSanitizer", "runtime error") + tuple(SANITIZER_MARKS)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def sha1(b):
    return hashlib.sha1(b).hexdigest()


def require_tool(name):
    """The path of a program the tests drive; fails (never skips) if absent."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"'{name}' is not installed: add its Debian package to scripts/install-deps")
    return path


def mount_command(how, exe, root, mnt, opts=(), args=()):
    """The command line that mounts root on mnt.  It must stay in the
    foreground (its process is the daemon whose exit status teardown
    checks); for mount.casfs / `mount -t casfs` that means passing the
    helper's foreground option when it is added here."""
    if how == "casfs-mount":
        cmd = [exe, "mount", str(root), str(mnt), "-f", *args]
        if opts:
            cmd += ["-o", ",".join(opts)]
        return cmd
    if how == "mount.casfs":
        # mount(8) finds /sbin/mount.casfs (see install_mount_helper);
        # CASFS_MOUNT_FOREGROUND makes the helper keep the daemon in the
        # foreground, so mount(8) exits with the daemon's status.
        cmd = ["mount", "-t", "casfs"]
        if opts:
            cmd += ["-o", ",".join(opts)]
        return cmd + [str(root), str(mnt)]
    raise ValueError(f"unknown way of mounting: {how!r}")


def mount_env(how, exe):
    if how == "mount.casfs":
        return dict(os.environ, CASFS_BIN=exe, CASFS_MOUNT_FOREGROUND="1")
    return None


def install_mount_helper():
    """Makes mount(8) find this build's mount.casfs: a symlink at
    /sbin/mount.casfs (as root), unless a real one is installed there.
    Returns a function that undoes it."""
    helper = BUILD / "mount-helpers" / "mount.casfs"
    if not helper.is_file():
        pytest.fail(f"mount.casfs is not built at {helper}")
    if os.path.lexists(HELPER_PATH) and not os.path.islink(HELPER_PATH):
        return lambda: None  # an installed helper: it runs $CASFS_BIN
    if os.path.islink(HELPER_PATH):
        os.unlink(HELPER_PATH)
    try:
        os.symlink(helper, HELPER_PATH)
    except OSError as e:
        pytest.fail(f"cannot install {HELPER_PATH} for the mount.casfs tests: {e} (run as root)")

    def undo():
        if os.path.islink(HELPER_PATH) and os.readlink(HELPER_PATH) == str(helper):
            os.unlink(HELPER_PATH)
    return undo


def _unescape_mountinfo(s):
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mountinfo(mnt):
    """The /proc/self/mountinfo entry of mnt (the last one mounted there):
    dict with fstype, source, options (set of the per-mount and
    superblock options), or None if mnt is not a mount point."""
    mnt = os.path.realpath(mnt)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf, rf = left.split(" "), right.split(" ")
            if _unescape_mountinfo(lf[4]) != mnt:
                continue
            found = {
                "fstype": rf[0],
                "source": _unescape_mountinfo(rf[1]),
                "options": set(lf[5].split(",")) | set(rf[2].split(",") if len(rf) > 2 else ()),
            }
    return found


class Mount:
    """One running daemon: root (backing directory), mnt (mount point),
    casfs (the command on the same root), proc (the daemon process)."""

    def __init__(self, casfs, root, mnt, cmd, how, log_path, env=None):
        self.casfs = casfs
        self.remote = isinstance(root, RootSpec)
        # root: the backing directory, or the RootSpec of a rados: root
        self.root = root if self.remote else pathlib.Path(root)
        self.mnt = pathlib.Path(mnt)
        self.cmd = cmd
        self.how = how
        self.log_path = pathlib.Path(log_path)
        self.allowed = set()   # BAD_WORDS the test expects in the log
        self.state = "starting"  # running, unmounted, killed, failed
        self.watchdog_fired = False
        self._log = open(self.log_path, "wb")
        menv = mount_env(how, casfs.exe)
        if env:
            menv = dict(menv or os.environ, **env)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=menv,
                                     start_new_session=True)
        self._watchdog = threading.Timer(WATCHDOG, self._on_watchdog)
        self._watchdog.daemon = True

    # ---------------------------------------------------------------- log

    def log(self):
        """What the daemon wrote so far, with the root and mount point
        masked (a test's name, hence its tmp_path, may contain 'error')."""
        text = self.log_path.read_bytes().decode(errors="replace")
        paths = {str(self.root), str(self.mnt), os.path.realpath(self.mnt)}
        if self.remote:
            paths |= {self.root.cache_dir, self.root.ceph_conf}
        else:
            paths.add(os.path.realpath(self.root))
        for p in sorted(paths, key=len, reverse=True):
            text = text.replace(p, "<path>")
        return text

    def expect_log(self, *words):
        """The test expects these words (from BAD_WORDS) in the log."""
        self.allowed.update(w.lower() for w in words)

    def check_log(self):
        text = self.log()
        low = text.lower()
        bad = [w for w in BAD_WORDS if w.lower() in low and w.lower() not in self.allowed]
        assert not bad, f"daemon ({' '.join(self.cmd)}) wrote {bad}:\n{text}"

    # ------------------------------------------------------------ mounting

    def wait_mounted(self):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mnt):
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"daemon exited {rc} before mounting ({' '.join(self.cmd)}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.mnt} not mounted after {MOUNT_TIMEOUT} s ({' '.join(self.cmd)}):\n{self.log()}")
            time.sleep(0.02)
        self.state = "running"
        self._watchdog.start()
        info = mountinfo(self.mnt)
        assert info is not None, f"{self.mnt} is a mount point but not in /proc/self/mountinfo"
        assert info["fstype"] == "fuse.casfs", info
        assert info["source"] == (str(self.root) if self.remote else os.path.realpath(self.root)), info
        return info

    def _killpg(self, sig):
        """Signals the daemon's whole process group: with mount(8) the
        daemon is mount's child."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _on_watchdog(self):
        if self.proc.poll() is None:
            self.watchdog_fired = True
            self._killpg(signal.SIGKILL)

    def _stop_watchdog(self):
        self._watchdog.cancel()

    # ---------------------------------------------------------- unmounting

    def unmount(self, cmd=None):
        """Unmounts cleanly (fusermount3 -u, or cmd such as ["umount", mnt])
        and asserts the daemon exited 0 and the mount is gone."""
        assert self.state == "running", self.state
        if cmd is None:
            cmd = ["fusermount3", "-u", str(self.mnt)]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=EXIT_TIMEOUT)
            assert p.returncode == 0, (
                f"{cmd} exited {p.returncode}: {p.stderr.decode(errors='replace')}\n"
                f"daemon log:\n{self.log()}")
            try:
                rc = self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"daemon still running {EXIT_TIMEOUT} s after {cmd}:\n{self.log()}")
            self._stop_watchdog()
            assert not self.watchdog_fired, f"daemon killed after hanging for {WATCHDOG} s:\n{self.log()}"
            assert rc == 0, f"daemon exited {rc} after {cmd}:\n{self.log()}"
            assert not os.path.ismount(self.mnt), f"{self.mnt} still mounted after {cmd}"
            self.state = "unmounted"
        except BaseException:
            self.cleanup()
            raise
        finally:
            self._log.close()

    def kill(self, sig=signal.SIGKILL):
        """Kills the daemon (as a crash would) and lazily unmounts what it
        leaves behind; the mount point can then be mounted again."""
        assert self.state == "running", self.state
        self._stop_watchdog()
        self._killpg(sig)
        rc = self.proc.wait(timeout=EXIT_TIMEOUT)
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True, timeout=EXIT_TIMEOUT)
        self.state = "killed"
        self._log.close()
        assert not os.path.ismount(self.mnt), f"{self.mnt} still mounted after kill and fusermount3 -uz"
        return rc

    def cleanup(self):
        """The error path: lazy unmount, kill, never raise."""
        self._stop_watchdog()
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True, timeout=EXIT_TIMEOUT)
        if self.proc.poll() is None:
            self._killpg(signal.SIGKILL)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.state in ("starting", "running"):
            self.state = "failed"
        if not self._log.closed:
            self._log.close()

    def finish(self):
        """Teardown: unmount if still mounted, then check the log."""
        if self.state == "running":
            self.unmount()
        elif self.state == "starting":
            self.cleanup()
        assert not self.watchdog_fired, f"daemon killed after hanging for {WATCHDOG} s:\n{self.log()}"
        self.check_log()

    # -------------------------------------------------------------- paths

    def store(self, sid):
        """(path through the mount, path in the backing root) of a store;
        the second is None for a rados: root (it has no directory)."""
        return self.mnt / sid, None if self.remote else self.root / sid


class Mounter:
    """Starts mounts for one test and tears all of them down."""

    def __init__(self, how, casfs_bin, tmp_path, default_root=None):
        self.how = how
        self.exe = casfs_bin
        self.tmp = pathlib.Path(tmp_path)
        self.default_root = default_root
        self.mounts = []

    def __call__(self, root=None, mnt=None, opts=(), args=(), env=None):
        """Mounts root (default: the test's root for its backend; a
        directory is created if missing) on mnt (default tmp_path/mnt) and
        returns the Mount once it is up; env: more environment for the
        daemon."""
        if not os.path.exists("/dev/fuse"):
            pytest.fail("/dev/fuse is missing: the filesystem tests need FUSE (modprobe fuse; "
                        "in a container, pass --device /dev/fuse)")
        require_tool("fusermount3")
        root = root or self.default_root or self.tmp / "root"
        if isinstance(root, RootSpec):
            opts = tuple(root.opts()) + tuple(opts)
        else:
            root = pathlib.Path(root)
            root.mkdir(parents=True, exist_ok=True)
        mnt = pathlib.Path(mnt) if mnt else self.tmp / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        cmd = mount_command(self.how, self.exe, root, mnt, opts, args)
        log = self.tmp / f"daemon.{len(self.mounts)}.log"
        m = Mount(Casfs(self.exe, root), root, mnt, cmd, self.how, log, env)
        self.mounts.append(m)
        try:
            info = m.wait_mounted()
            want = "ro" if "ro" in opts else "rw"
            assert want in info["options"], f"mounted without {want}: {info}"
        except BaseException:
            m.cleanup()
            raise
        return m

    def finish(self):
        errors = []
        for m in reversed(self.mounts):
            try:
                m.finish()
            except BaseException as e:  # keep tearing down the others
                m.cleanup()
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture(params=MOUNT_HOWS)
def how(request):
    """How the daemon is started (see MOUNT_HOWS)."""
    if request.param == "mount.casfs":
        request.getfixturevalue("mount_helper_installed")
    return request.param


@pytest.fixture
def mounter(how, casfs_bin, tmp_path, root_spec):
    """Factory: mounter(root=None, mnt=None, opts=(), args=()) -> Mount.
    The default root is the test's root for its backend (root_spec)."""
    m = Mounter(how, casfs_bin, tmp_path, root_spec)
    try:
        yield m
    finally:
        m.finish()


@pytest.fixture
def mounted(mounter):
    """A fresh empty root mounted with default options."""
    return mounter()


# ------------------------------------------------------------- helpers


def run(*cmd, expect=0, input=None, cwd=None):
    """Runs a program (by name, as a user would) and checks its exit."""
    cmd = [str(c) for c in cmd]
    require_tool(cmd[0])
    p = subprocess.run(cmd, capture_output=True, input=input, cwd=cwd, timeout=60)
    if expect is not None:
        assert p.returncode == expect, (
            f"{cmd} exited {p.returncode}, expected {expect}\nstdout: {p.stdout[:2000]!r}\n"
            f"stderr: {p.stderr.decode(errors='replace')}")
    return p


def out(*cmd, **kw):
    return run(*cmd, **kw).stdout.decode().rstrip("\n")


def expect_errno(code, fn, *args, **kw):
    """Calls fn and asserts it fails with OSError errno code."""
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno == code, (
            f"{fn.__name__}{args} failed with {errno.errorcode.get(e.errno, e.errno)} ({e}), "
            f"expected {errno.errorcode[code]}")
        return e
    raise AssertionError(f"{fn.__name__}{args} succeeded, expected {errno.errorcode[code]}")


def poll(cond, timeout, what, interval=0.01):
    """Bounded polling: returns cond()'s first true value or fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout} s")
        time.sleep(interval)


def new_store(m, sid="s"):
    """Makes a store by mkdir through the mount; returns (mnt path, root path)."""
    os.mkdir(m.mnt / sid)
    return m.store(sid)


def backing_labels(store_dir):
    """Every label file of a backing store: name ('a/b') -> raw bytes."""
    ldir = pathlib.Path(store_dir) / "labels"
    res = {}
    if ldir.is_dir():
        for p in ldir.rglob("*"):
            if p.is_file():
                res[p.relative_to(ldir).as_posix()] = p.read_bytes()
    return res


def backing_blobs(store_dir):
    """Every blob of a backing store: digest -> bytes."""
    ddir = pathlib.Path(store_dir) / "data"
    return {p.name: p.read_bytes() for p in ddir.iterdir()} if ddir.is_dir() else {}


def staging_files(store_dir):
    sdir = pathlib.Path(store_dir) / ".casfs" / "staging"
    return sorted(os.listdir(sdir)) if sdir.is_dir() else []


# ------------------------------------- backend-neutral views of a store
#
# What a store holds, asked of the `casfs` command, so a check holds on
# every backend (the backing_* helpers above read a local directory).


def cli_labels(casfs, sid):
    """Every label of a store, through the command: name ('a/b') -> digest."""
    names = casfs.out("list-labels", sid).splitlines()
    return {n: casfs.out("get-by-label", sid, n) for n in names}


def cli_blobs(casfs, sid):
    """Every blob of a store, through the command: digest -> bytes."""
    return {d: casfs.run("get", sid, d).stdout for d in casfs.out("list-all-content", sid).splitlines()}
