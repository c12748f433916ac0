"""SPEC §6 through a real mount: by default a close(2) publishes without
waiting for the disk, and the daemon makes the store durable within the
commit interval (-o commit=), at fsync(2), and before a clean stop; it
records each sync in its session file, so that after an unclean stop only
blobs stored since the last sync are checked.  -o sync waits for the disk
before close(2) returns.

There is no power to cut here: what reaches the disk when is read off the
daemon's system calls (strace) and its session file."""
import errno
import os
import shutil
import signal
import subprocess
import time

import pytest

from fuse_util import Mounter, how, mounter, poll, sha256  # noqa: F401

SLACK_NS = 1_000_000_000  # a mark is the sync's start less a second (core/store.c)


def daemon_pid(m):
    """The pid of m's daemon: the casfs process whose arguments name m's
    mount point (with mount(8), the daemon is the helper's child)."""
    want = {str(m.mnt).encode(), os.path.realpath(m.mnt).encode()}
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if (argv and os.path.basename(argv[0]) == b"casfs" and b"mount" in argv
                and want & set(argv)):
            pids.append(int(p))
    assert len(pids) == 1, f"looking for the daemon of {m.mnt}: {pids}"
    return pids[0]


def session_marks(bdir):
    """{session file: mark or None} of a store's live sessions."""
    out = {}
    sdir = bdir / ".casfs" / "sessions"
    for name in os.listdir(sdir) if sdir.exists() else ():
        text = (sdir / name).read_text()
        fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
        assert "start" in fields, text
        out[name] = int(fields["mark"]) if "mark" in fields else None
    return out


def mark(bdir):
    marks = session_marks(bdir)
    assert len(marks) == 1, marks
    return next(iter(marks.values())) or 0


class Strace:
    """strace -f on a running daemon, for some system calls, into a log."""

    def __init__(self, pid, calls, log):
        exe = shutil.which("strace")
        assert exe, "strace is missing: add it to scripts/install-deps"
        self.log = log
        self.proc = subprocess.Popen([exe, "-f", "-qq", "-p", str(pid), "-e", f"trace={calls}",
                                      "-o", str(log)], stdin=subprocess.DEVNULL)

        def traced():
            with open(f"/proc/{pid}/status") as f:
                return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
        poll(traced, 10, "strace to attach to the daemon")

    def lines(self):
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        return self.lines()


def calls(lines, name):
    return [x for x in lines if f" {name}(" in x or x.startswith(f"{name}(")]


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(m):
    """A new store, used once through the mount so the daemon has opened
    it (and begun its session): (id, path through the mount, backing dir)."""
    sid = m.casfs.out("new")
    d, bdir = m.store(sid)
    (d / "incoming" / "warm").write_bytes(b"opens the store")
    return sid, d, bdir


def damage(blob):
    """Damages a blob file as a power cut would: its content, not its times."""
    times = os.stat(blob)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.truncate(1000)
    os.utime(blob, ns=(times.st_atime_ns, times.st_mtime_ns))


def traced_mount(mounter, opts, syscalls, log):
    """A mount with a store in use, its daemon under strace.  LeakSanitizer
    cannot run in a process that is traced when it exits: off for it."""
    m = mounter(opts=opts, env={"ASAN_OPTIONS": "detect_leaks=0"})
    sid, d, bdir = open_store(m)
    return m, d, bdir, Strace(daemon_pid(m), syscalls, log)


@pytest.mark.dir_only  # reads the session files and traces the directory backend's syncs
def test_close_does_not_wait_for_the_disk_and_a_clean_stop_syncs(mounter, tmp_path):
    m, d, bdir, st = traced_mount(mounter, ("commit=600",), "fsync,fdatasync,syncfs,unlink,unlinkat",
                                  tmp_path / "strace.log")
    bodies = {f"f{i}": os.urandom(50_000 + i) for i in range(3)}
    for name, body in bodies.items():
        (d / "incoming" / name).write_bytes(body)
    for name, body in bodies.items():  # published at close, as always
        assert (d / "labels" / name).read_bytes() == body
        assert (bdir / "labels" / name).read_text() == sha256(body)
    time.sleep(0.3)
    lines = st.lines()
    assert not calls(lines, "fsync") and not calls(lines, "fdatasync") and not calls(lines, "syncfs"), (
        "a close waited for the disk (or the flusher ran early):\n" + "\n".join(lines))
    (session,) = session_marks(bdir)
    m.unmount()
    st.proc.wait(timeout=30)  # strace ends with the daemon
    lines = st.lines()
    syncs = [i for i, x in enumerate(lines) if " syncfs(" in x and "= 0" in x]
    ends = [i for i, x in enumerate(lines) if "unlinkat(" in x and f'"{session}"' in x]
    assert syncs, "a clean stop did not sync the store:\n" + "\n".join(lines)
    assert not session_marks(bdir), "a clean stop left its session file"
    assert ends and ends[0] > syncs[0], "the session ended before the sync:\n" + "\n".join(lines)


@pytest.mark.dir_only  # reads the session files
def test_the_flusher_syncs_within_the_commit_interval(mounter):
    sid, d, bdir = open_store(mounter(opts=("commit=0.2",)))
    for i in range(3):
        t0 = time.time_ns()
        (d / "incoming" / f"f{i}").write_bytes(os.urandom(10_000))
        # The first sync after the write records a mark of its start, less
        # the slack; one before the write has an older mark.
        poll(lambda: mark(bdir) >= t0 - SLACK_NS, 10, f"a sync after write {i}")
    # Nothing changes: no more syncs, the mark stays.
    still = mark(bdir)
    time.sleep(1)
    assert mark(bdir) == still


@pytest.mark.dir_only  # reads the session files
def test_fsync_makes_the_store_durable_at_once(mounter):
    sid, d, bdir = open_store(mounter(opts=("commit=600",)))
    assert mark(bdir) == 0, "synced without a reason"
    t0 = time.time_ns()
    fd = os.open(d / "incoming" / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"made durable by fsync")
        os.fsync(fd)
        assert mark(bdir) >= t0 - SLACK_NS, "fsync(2) returned before the store was synced"
        assert (bdir / "labels" / "f").read_text() == sha256(b"made durable by fsync")
    finally:
        os.close(fd)
    # A label made through labels/, then fsync(2) of the directory.
    time.sleep(0.05)
    t1 = time.time_ns()
    os.symlink(f"../data/{sha256(b'made durable by fsync')}", d / "labels" / "g")
    fsync_dir(d / "labels")
    assert mark(bdir) >= t1 - SLACK_NS, "fsync(2) of labels/ returned before the store was synced"


@pytest.mark.dir_only  # traces the directory backend's syncs
def test_o_sync_waits_for_the_disk_before_close(mounter, tmp_path):
    m, d, bdir, st = traced_mount(mounter, ("sync",), "fsync,fdatasync,syncfs", tmp_path / "strace.log")
    try:
        (d / "incoming" / "f").write_bytes(b"durable before close returns")
        # strace writes its log as the calls return; give it a moment.
        poll(lambda: len(calls(st.lines(), "fdatasync")) >= 2, 10,
             "the blob's and the label's fdatasync")
    finally:
        lines = st.stop()
    assert calls(lines, "fsync"), "the directories were not synced:\n" + "\n".join(lines)


@pytest.mark.dir_only  # damages blob files of the backing directory
def test_only_blobs_since_the_last_sync_are_checked_after_an_unclean_stop(mounter):
    """The check after a crash is bounded by the last sync: a blob stored
    before it is served without hashing (the disk had it), one stored after
    it is hashed and, if damaged, quarantined.  fsck still finds both."""
    m = mounter(opts=("commit=600",))
    sid = m.casfs.out("new")
    d, bdir = m.store(sid)
    before, after = os.urandom(100_000), os.urandom(100_000)
    (d / "incoming" / "before").write_bytes(before)
    # A sync that starts more than the slack after the write covers it:
    # fsync(2) of a directory of the store syncs (nothing else would here).
    time.sleep((SLACK_NS + 200_000_000) / 1e9)
    fsync_dir(d / "labels")
    assert mark(bdir) > os.stat(bdir / "data" / sha256(before)).st_mtime_ns
    (d / "incoming" / "after").write_bytes(after)
    assert m.kill() == -9
    for body in (before, after):
        damage(bdir / "data" / sha256(body))
    m2 = mounter(root=m.root, mnt=m.mnt)
    d2 = m2.mnt / sid
    with pytest.raises(OSError) as e:
        (d2 / "data" / sha256(after)).read_bytes()
    assert e.value.errno == errno.EIO
    assert not (bdir / "data" / sha256(after)).exists(), "the damaged blob was left in data/"
    # Stored before the last sync: trusted, served as the disk has it.
    assert (d2 / "data" / sha256(before)).read_bytes() == before[:1000]
    p = m2.casfs.run("fsck", sid, expect=1)
    assert sha256(before).encode() in p.stdout, p.stdout
    m2.expect_log("corrupt")


def test_a_failed_sync_keeps_failing_and_the_mark_stays(casfs_bin, tmp_path):
    # casfs mount only: mount(8) drops LD_PRELOAD from the environment of
    # its helpers.  The directory backend: its syncfs(2) and session files.
    mounter = Mounter("casfs-mount", casfs_bin, tmp_path)
    try:
        failed_sync_keeps_failing(mounter, tmp_path)
    finally:
        mounter.finish()


def failed_sync_keeps_failing(mounter, tmp_path):
    """A disk that lost writes says so once (syncfs(2) reports a writeback
    error to the first caller): the daemon must not take a later, quiet sync
    for proof that everything before it is on disk.  Once a sync has failed,
    fsync(2) fails on that store until the next start, the session keeps its
    last good mark (and is not ended by a clean stop), so the next start
    checks what was stored after it.  The failure is preloaded into the
    daemon (tests/fault/failsync.c): syncfs fails while a flag file exists."""
    from conftest import BUILD
    shim = BUILD / "tests" / "libfailsync.so"
    assert shim.exists(), f"{shim} is missing: the build makes it (tests/meson.build)"
    flag = tmp_path / "fail-syncfs"
    asan = os.environ.get("ASAN_OPTIONS", "")
    m = mounter(opts=("commit=600",), env={
        "LD_PRELOAD": str(shim), "CASFS_FAIL_SYNCFS": str(flag),
        # A preloaded library comes before the sanitizer's runtime.
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
    sid, d, bdir = open_store(m)

    def write_and_fsync(name, body):
        fd = os.open(d / "incoming" / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)

    good = os.urandom(20_000)
    write_and_fsync("good", good)
    good_mark = mark(bdir)
    assert good_mark > 0, "the first fsync(2) did not sync"
    time.sleep(0.05)
    flag.touch()
    lost = os.urandom(20_000)
    with pytest.raises(OSError) as e:
        write_and_fsync("lost", lost)
    assert e.value.errno == errno.EIO
    flag.unlink()  # the disk "works" again: syncfs would succeed now
    later = os.urandom(20_000)
    with pytest.raises(OSError) as e:
        write_and_fsync("later", later)
    assert e.value.errno == errno.EIO, "a sync after a failed one was taken for good"
    assert mark(bdir) == good_mark, "the mark moved past a failed sync"
    # Published all the same (what the disk has is another matter).
    assert (d / "labels" / "later").read_bytes() == later
    m.expect_log("error")  # the failed sync's, once
    log = m.log()
    assert log.count("cannot sync store") == 1, "the failure was not logged, or logged more than once:\n" + log
    m.unmount()
    assert session_marks(bdir), "a clean stop after a failed sync ended its session"
    assert "its session is kept" in m.log()
    # The next start checks what was stored since the good mark: a blob
    # damaged as a lost write would leave it is found and set aside.
    damage(bdir / "data" / sha256(later))
    m2 = mounter(root=m.root, mnt=m.mnt)
    with pytest.raises(OSError) as e:
        (m2.mnt / sid / "data" / sha256(later)).read_bytes()
    assert e.value.errno == errno.EIO
    assert (m2.mnt / sid / "data" / sha256(good)).read_bytes() == good
    m2.expect_log("corrupt")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "1x", "3601", "nan"])
def test_bad_commit_interval_is_refused_and_mounts_nothing(casfs_bin, tmp_path, value):
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    root.mkdir()
    mnt.mkdir()
    p = subprocess.run([casfs_bin, "mount", str(root), str(mnt), "-f", "-o", f"commit={value}"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    lines = p.stderr.decode(errors="replace").splitlines()
    assert p.returncode == 2, (p.returncode, lines)
    assert lines and lines[0] == "casfs: -o commit= takes seconds, from 0.001 to 3600", lines
    assert not os.path.ismount(mnt)
    assert os.listdir(root) == [], "a refused mount changed the root"
