"""More of SPEC §4–§6 through a real mount: shared writable mmap, readers
racing commits, the caller's uid and pid in the journal, a full disk seen
by close(2), the fstab line, and the permission options."""
import errno
import json
import mmap
import os
import subprocess
import threading

import pytest

from fuse_util import (Mounter, how, mounted, mounter, poll, sha256,  # noqa: F401
                       staging_files)


def fresh(m):
    """(id, path through the mount, backing directory or None for a rados:
    root) of a new store."""
    sid = m.casfs.out("new")
    return (sid, *m.store(sid))


def label_digest(m, sid, bdir, name):
    """The digest label name holds (None if none), asked of the command; on
    the dir backend the label file must hold the same."""
    p = m.casfs.run("get-by-label", sid, name, expect=None)
    assert p.returncode in (0, 1), p
    d = p.stdout.decode().strip() if p.returncode == 0 else None
    if bdir is not None:
        lf = bdir / "labels" / name
        assert (lf.read_text() if lf.exists() else None) == d
    return d


def test_shared_writable_mmap_is_committed(mounted):
    sid, d, bdir = fresh(mounted)
    body = bytes(range(256)) * 64  # 16 KiB
    fd = os.open(d / "incoming" / "mapped", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(body))
        mm = mmap.mmap(fd, len(body), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[:] = body
        mm.flush()
        mm.close()
    finally:
        os.close(fd)
    # Committed by the time close returned (or at release, just after).
    poll(lambda: label_digest(mounted, sid, bdir, "mapped") == sha256(body), 2, "mmap'd content committed")
    assert (d / "labels" / "mapped").read_bytes() == body


def test_readers_never_see_a_partial_version(mounted):
    sid, d, bdir = fresh(mounted)
    versions = [bytes([i]) * (256 * 1024 + i) for i in range(1, 9)]
    digests = {sha256(v) for v in versions}
    (d / "incoming" / "x").write_bytes(versions[0])
    stop = threading.Event()
    bad = []
    reads = [0]

    def reader(path):
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            reads[0] += 1
            if sha256(data) not in digests:
                bad.append(len(data))

    readers = [threading.Thread(target=reader, args=(d / sub / "x",)) for sub in ("labels", "incoming")]
    for t in readers:
        t.start()
    try:
        for rnd in range(40):
            (d / "incoming" / "x").write_bytes(versions[rnd % len(versions)])
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=30)
    assert reads[0] > 0
    assert not bad, f"readers saw {len(bad)} partial versions (sizes {bad[:5]})"
    assert label_digest(mounted, sid, bdir, "x") == sha256(versions[39 % len(versions)])


def test_journal_records_the_callers_uid_and_pid(mounted):
    sid, d, bdir = fresh(mounted)
    p = subprocess.run(["sh", "-c", f"echo $$; printf hello > {d / 'incoming' / 'who'}"],
                       capture_output=True, text=True, check=True)
    writer_pid = int(p.stdout.strip())
    events = [json.loads(x) for x in mounted.casfs.out("events", sid).splitlines()]
    mine = [e for e in events if e.get("label") == "who" and e["outcome"] == "ok"]
    assert mine, events
    assert mine[-1]["uid"] == os.getuid()
    assert mine[-1]["pid"] == writer_pid


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs-root"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.dir_only  # fills up a small tmpfs holding the backing directory
def test_full_disk_fails_at_write_or_close_and_keeps_the_old_version(mounter, small_tmpfs, tmp_path):
    m = mounter(root=small_tmpfs, mnt=tmp_path / "mnt")
    sid, d, bdir = fresh(m)
    old = b"old content\n"
    (d / "incoming" / "f").write_bytes(old)
    big = os.urandom(6 << 20)
    err = None
    fd = os.open(d / "incoming" / "f", os.O_WRONLY | os.O_TRUNC)
    try:
        try:
            os.write(fd, big)
        except OSError as e:
            err = e
    finally:
        try:
            os.close(fd)
        except OSError as e:
            err = err or e
    assert err is not None and err.errno == errno.ENOSPC, f"expected ENOSPC at write or close, got {err!r}"
    # The old label and content are untouched, and no debris is left.
    assert label_digest(m, sid, bdir, "f") == sha256(old)
    assert (d / "labels" / "f").read_bytes() == old
    assert staging_files(bdir) == []
    # Space freed: the same mount works again.
    (d / "incoming" / "g").write_bytes(b"after")
    assert label_digest(m, sid, bdir, "g") == sha256(b"after")


def test_fstab_line_mounts_with_mount_a_style_options(mount_helper_installed, casfs_bin, tmp_path):
    """`ROOT MNT casfs defaults,noauto,nofail,_netdev,noatime 0 0` in an
    fstab: mount -T FSTAB MNT mounts it through /sbin/mount.casfs (the
    daemon detaches, mount returns), and umount ends the daemon."""
    root, mnt = tmp_path / "fstab-root", tmp_path / "fstab-mnt"
    root.mkdir()
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{root} {mnt} casfs defaults,noauto,nofail,_netdev,noatime 0 0\n")
    env = dict(os.environ, CASFS_BIN=casfs_bin)
    subprocess.run(["mount", "-T", str(fstab), str(mnt)], check=True, env=env, timeout=30)
    try:
        assert os.path.ismount(mnt)
        with open("/proc/self/mountinfo") as f:
            line = next(x for x in f if f" {mnt} " in x)
        assert " - fuse.casfs " in line and f" {root} " in line, line
        sid = subprocess.run([casfs_bin, "--root", str(root), "new"], check=True, capture_output=True,
                             text=True).stdout.strip()
        (mnt / sid / "incoming" / "a").write_bytes(b"via fstab")
        assert (root / sid / "labels" / "a").read_text() == sha256(b"via fstab")
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=30)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)
    assert not os.path.ismount(mnt)

    def daemon_gone():
        out = subprocess.run(["pgrep", "-f", f"mount {root} {mnt}"], capture_output=True, text=True)
        return out.stdout.strip() == ""
    poll(daemon_gone, 10, "the daemon to exit after umount")


def test_permission_options_reach_the_kernel(mounter, tmp_path):
    m = mounter(opts=("allow_other", "default_permissions"))
    with open("/proc/self/mountinfo") as f:
        line = next(x for x in f if f" {m.mnt} " in x)
    assert "allow_other" in line and "default_permissions" in line, line
    sid, d, bdir = fresh(m)
    (d / "incoming" / "p").write_bytes(b"x")
    assert (d / "labels" / "p").read_bytes() == b"x"


def test_blobs_keep_the_page_cache_across_opens(mounter):
    """A blob read twice, through two opens, is read from the daemon once:
    the kernel keeps its pages (libfuse's debug option logs each READ).
    With -o nopassthrough, so that blobs of a directory root too are read
    through the daemon (test_blob_reads_pass_through_to_the_backing_file
    checks the default)."""
    m = mounter(opts=("debug", "nopassthrough"))
    m.expect_log("error")  # libfuse's debug lines say "error: 0 (Success)"
    sid, d, bdir = fresh(m)
    body = os.urandom(1 << 20)
    (d / "incoming" / "blob").write_bytes(body)
    blob = d / "data" / sha256(body)

    def reads():
        return m.log().count("opcode: READ ")
    before = reads()
    assert blob.read_bytes() == body
    first = reads()
    assert "pass through" not in m.log()
    assert first > before, "the first read did not reach the daemon"
    assert blob.read_bytes() == body
    assert reads() == first, "the second open read the blob from the daemon again"


def test_sync_option_commits_at_every_close(mounter):
    """-o sync: a close of any descriptor that wrote commits, even while
    another descriptor of the same version stays open."""
    m = mounter(opts=("sync",))
    sid, d, bdir = fresh(m)
    p = d / "incoming" / "s"
    a = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    b = os.open(p, os.O_RDWR)
    try:
        os.write(a, b"first")
        os.close(a)
        a = None
        assert label_digest(m, sid, bdir, "s") == sha256(b"first")  # b is still open
        os.pwrite(b, b"FIRST", 0)
    finally:
        if a is not None:
            os.close(a)
        os.close(b)
    assert label_digest(m, sid, bdir, "s") == sha256(b"FIRST")


def test_other_xattrs_are_answered_at_once(mounted):
    """user.* attributes other than the digest are absent (ENODATA); ACLs,
    security labels and trusted.* are not supported at all (ENOTSUP), which
    is what lets ls -l stop asking for them after the first file."""
    sid, d, bdir = fresh(mounted)
    (d / "incoming" / "x").write_bytes(b"x")
    (d / "incoming" / "sub").mkdir()
    for p in (d / "incoming" / "x", d / "data" / sha256(b"x"), d / "labels", d / "labels" / "x",
              d / "incoming" / "sub", d / "data", d, mounted.mnt):
        for name, code in (("security.capability", errno.ENOTSUP),
                           ("security.selinux", errno.ENOTSUP),
                           ("system.posix_acl_access", errno.ENOTSUP),
                           ("system.posix_acl_default", errno.ENOTSUP),
                           ("trusted.x", errno.ENOTSUP),
                           ("user.other", errno.ENODATA)):
            with pytest.raises(OSError) as e:
                os.getxattr(p, name, follow_symlinks=False)
            assert e.value.errno == code, (p, name)
            if name.startswith("system."):
                continue  # the kernel answers removal of no ACL itself
            with pytest.raises(OSError) as e:
                os.removexattr(p, name, follow_symlinks=False)
            assert e.value.errno in (code, errno.EPERM), (p, name)
        with pytest.raises(OSError) as e:
            os.setxattr(p, "user.other", b"v")
        assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as e:
        os.setxattr(d / "incoming" / "x", "user.casfs.hash", b"0" * 64)
    assert e.value.errno == errno.EPERM
    assert os.listxattr(d / "incoming" / "x") == ["user.casfs.hash"]


def test_writes_do_not_each_ask_for_security_capability(casfs_bin, tmp_path):
    """Before every write(2) the kernel asks a FUSE filesystem for the
    file's security.capability (to clear it), a round trip per write,
    unless the filesystem takes that on itself (FUSE_HANDLE_KILLPRIV_V2,
    which libfuse 3.14 cannot ask for: fs/kio.c amends its INIT reply).
    Then the kernel asks once per file.  casfs mount -d logs every
    request.  Backend-independent: a directory root."""
    mounter = Mounter("casfs-mount", casfs_bin, tmp_path)
    try:
        m = mounter(args=("-d",))
        m.expect_log("error")  # -d logs every reply, failed ones too
        sid = m.casfs.out("new")
        data = os.urandom(64 * 65536)
        fd = os.open(m.mnt / sid / "incoming" / "big", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for i in range(64):
                assert os.write(fd, data[i * 65536:(i + 1) * 65536]) == 65536
        finally:
            os.close(fd)
        assert (m.mnt / sid / "labels" / "big").read_bytes() == data
        log = m.log()
        assert log.count("opcode: WRITE") >= 64, log[-2000:]
        assert log.count("opcode: GETXATTR") <= 1, log.count("opcode: GETXATTR")
    finally:
        mounter.finish()


def test_large_files_prefer_1_MiB_io(mounted, tmp_path):
    """Files of 1 MiB or more show a preferred I/O size (st_blksize) of
    1 MiB, the largest request, so that cat and cp read and write them a
    megabyte at a time; smaller ones the usual 4 KiB (cp and cat allocate
    a buffer of that size for every file)."""
    sid, d, bdir = fresh(mounted)
    big, small = os.urandom(1 << 20), os.urandom(4096)
    (d / "incoming" / "big").write_bytes(big)
    (d / "incoming" / "small").write_bytes(small)
    for p in (d / "incoming" / "big", d / "data" / sha256(big)):
        assert os.stat(p).st_blksize == 1 << 20, p
    for p in (d / "incoming" / "small", d / "data" / sha256(small)):
        assert os.stat(p).st_blksize == 4096, p
    # Being written: the size it has so far decides.
    with open(d / "incoming" / "growing", "wb") as f:
        f.write(small)
        f.flush()
        assert os.fstat(f.fileno()).st_blksize == 4096
        f.write(big)
        f.flush()
        assert os.fstat(f.fileno()).st_blksize == 1 << 20
    src = tmp_path / "copy"
    subprocess.run(["cp", str(d / "data" / sha256(big)), str(src)], check=True)
    assert src.read_bytes() == big


def kernel_has_fuse_passthrough():
    """Linux 6.9 or later built with CONFIG_FUSE_PASSTHROUGH (its config
    from /proc/config.gz or /boot; assumed on if neither says)."""
    import gzip
    import platform
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) < (6, 9):
        return False
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{platform.release()}", open)):
        if os.path.exists(path):
            with opener(path, "rt") as f:
                return "CONFIG_FUSE_PASSTHROUGH=y" in f.read()
    return True


def test_blob_reads_pass_through_to_the_backing_file(casfs_bin, tmp_path):
    """Where the kernel can (FUSE passthrough), an open blob is read from
    its backing file without a request to the daemon: no READ in the
    casfs mount -d log, and reads and mmap give the blob's bytes.
    Elsewhere the daemon serves READs.  A directory root (a rados: root's
    blobs are read through the daemon: test_blobs_keep_the_page_cache_across_opens)."""
    mounter = Mounter("casfs-mount", casfs_bin, tmp_path)
    try:
        m = mounter(args=("-d",))
        m.expect_log("error")  # -d logs every reply, failed ones too
        sid = m.casfs.out("new")
        body = os.urandom(3 * 1048576 + 5)
        h = m.casfs.out("store", sid, input=body)
        p = m.mnt / sid / "data" / h
        for _ in range(2):
            assert p.read_bytes() == body
        with open(p, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                assert mm[:] == body
            finally:
                mm.close()
        with open(p, "rb") as f:
            f.seek(1048576 + 3)
            assert f.read(10) == body[1048576 + 3:1048576 + 13]
        reads = m.log().count("opcode: READ ")
        if kernel_has_fuse_passthrough():
            assert "pass through" in m.log(), m.log()[-3000:]
            assert reads == 0, reads
        else:
            assert reads > 0
    finally:
        mounter.finish()


def test_daemonized_mount_logs_to_syslog(casfs_bin, tmp_path):
    """Without -f the daemon detaches and logs to syslog (/dev/log)."""
    import socket
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log belongs to this machine's syslog; the check needs it free")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    sock.settimeout(10)
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    root.mkdir()
    mnt.mkdir()
    try:
        p = subprocess.run([casfs_bin, "mount", str(root), str(mnt)], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, p.stderr
        assert p.stderr == "", "a daemonized mount printed to stderr"
        msg = sock.recv(4096).decode(errors="replace")
        assert "casfs" in msg and f"mounted {root} on {mnt}" in msg, msg
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
        sock.close()
        os.unlink("/dev/log")
    poll(lambda: subprocess.run(["pgrep", "-f", f"casfs mount {root} "], capture_output=True).returncode != 0,
         10, "the daemon to exit after fusermount3 -u")


def test_mkdir_with_hash_sha1_makes_a_sha1_store(mounter):
    m = mounter(opts=("hash=sha1",))
    os.mkdir(m.mnt / "t")
    assert "algorithm sha1" in m.casfs.out("stats", "t").splitlines()
    if not m.remote:
        assert "algo=sha1" in (m.root / "t" / ".casfs" / "config").read_text()
    (m.mnt / "t" / "incoming" / "f").write_bytes(b"hello\n")
    digest = m.casfs.out("get-by-label", "t", "f")
    assert digest == "f572d396fae9206628714fb2ce00f72e94f2258f"  # sha1("hello\n")
    if not m.remote:
        assert (m.root / "t" / "labels" / "f").read_text() == digest
    assert (m.mnt / "t" / "data" / digest).read_bytes() == b"hello\n"


def test_two_daemons_on_one_root_see_each_others_labels(mounter, tmp_path):
    a = mounter(mnt=tmp_path / "mnt-a")
    b = mounter(root=a.root, mnt=tmp_path / "mnt-b")
    sid = a.casfs.out("new")
    (a.mnt / sid / "incoming" / "from-a").write_bytes(b"written through a")
    poll(lambda: (b.mnt / sid / "labels" / "from-a").exists(), 1.5, "b to see a's label")
    assert (b.mnt / sid / "labels" / "from-a").read_bytes() == b"written through a"
    (b.mnt / sid / "incoming" / "from-b").write_bytes(b"written through b")
    poll(lambda: (a.mnt / sid / "incoming" / "from-b").exists(), 1.5, "a to see b's label")
    assert (a.mnt / sid / "incoming" / "from-b").read_bytes() == b"written through b"
    assert a.casfs.run("fsck", sid).returncode == 0


def test_a_child_closing_an_inherited_descriptor_does_not_commit(mounted):
    """A writer that starts a program mid-write (fork + exec closes the
    inherited descriptor in the child, and the kernel sends a flush) must
    not see a half-written version committed."""
    sid, d, bdir = fresh(mounted)
    (d / "incoming" / "f").write_bytes(b"old")
    fd = os.open(d / "incoming" / "f", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"first half, ")
        os.set_inheritable(fd, True)
        subprocess.run(["true"], check=True, close_fds=False)      # child holds it, exits
        os.set_inheritable(fd, False)
        subprocess.run(["true"], check=True)                       # CLOEXEC: closed at exec
        assert label_digest(mounted, sid, bdir, "f") == sha256(b"old"), "a child's close committed a partial version"
        os.write(fd, b"second half")
    finally:
        os.close(fd)
    assert label_digest(mounted, sid, bdir, "f") == sha256(b"first half, second half")


@pytest.mark.dir_only  # damages a blob file of the backing directory
def test_blob_damaged_after_an_unclean_stop_is_quarantined_not_served(mounter):
    """SPEC §6: after a daemon dies, the next one hashes blobs stored since
    the dead one started before serving them; one truncated by hand in
    between is quarantined and never served."""
    m = mounter(opts=("commit=600",))  # no sync (and its mark) before the kill
    sid = m.casfs.out("new")
    body = os.urandom(200_000)
    good = b"stored before the crash, left intact"
    (m.mnt / sid / "incoming" / "f").write_bytes(body)
    (m.mnt / sid / "incoming" / "g").write_bytes(good)
    assert m.kill() == -9                                    # an unclean stop
    d = sha256(body)
    blob = m.root / sid / "data" / d
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.truncate(1000)                                     # damaged behind casfs's back
    m2 = mounter(root=m.root, mnt=m.mnt)
    mdir = m2.mnt / sid
    with pytest.raises(OSError) as e:
        (mdir / "data" / d).read_bytes()
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        (mdir / "labels" / "f").read_bytes()
    assert e.value.errno in (errno.EIO, errno.ENOENT)
    assert not blob.exists(), "the damaged blob was left in data/"
    quarantined = os.listdir(m.root / sid / ".casfs" / "quarantine")
    assert any(d in q for q in quarantined), quarantined
    assert (mdir / "labels" / "g").read_bytes() == good     # intact blobs are served
    p = m2.casfs.run("fsck", sid, expect=1)                  # the label now dangles
    assert b"dangling-label" in p.stdout and b" f:" in p.stdout
    m2.expect_log("corrupt")
