"""Refusals and failures of the filesystem (SPEC §4, §5, §6): every refusal
is the errno fs/ops.c documents, nothing changes in the store (nor, on the
dir backend, in the backing directory) when something is refused, a read-only mount says EROFS, and a daemon
killed in the middle of writes leaves a store that mounts again, has no
staging debris, and passes fsck."""
import errno
import os
import random
import threading

from fuse_util import (backing_blobs, backing_labels, cli_blobs, cli_labels, expect_errno, how,  # noqa: F401
                       mounted, mounter, mountinfo, poll, run, sha256, staging_files)


def snapshot(d):
    """Everything under a backing directory: path -> (mode, bytes|None)."""
    res = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if "/.casfs" in p[len(str(d)):]:
                continue
            st = os.lstat(p)
            res[os.path.relpath(p, d)] = (st.st_mode, None if n in dirnames else open(p, "rb").read())
    return res


def store_snapshot(casfs, sid, bdir=None):
    """What a store holds, through the command (labels, blobs), and on the
    dir backend everything under its backing directory."""
    return cli_labels(casfs, sid), cli_blobs(casfs, sid), None if bdir is None else snapshot(bdir)


def root_snapshot(casfs, root):
    """Every store of a root and what it holds (see store_snapshot); for a
    directory root (a path) also everything under it."""
    stores = {sid: store_snapshot(casfs, sid) for sid in casfs.out("stores").splitlines()}
    return stores, snapshot(root) if isinstance(root, (str, os.PathLike)) else None


def store_with_label(m, content=b"blob content"):
    """(id, path through the mount, backing directory or None for a rados:
    root, digest)."""
    sid = m.casfs.out("new")
    d = m.casfs.out("store-at-label", sid, "lbl", input=content)
    return (sid, *m.store(sid), d)


def test_data_refuses_every_change(mounted):
    m = mounted
    sid, mdir, bdir, d = store_with_label(m)
    data = mdir / "data"
    blob = data / d
    before = store_snapshot(m.casfs, sid, bdir)
    other = sha256(b"absent")
    # Opening for writing: EACCES (fs/ops.c op_open).
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_APPEND):
        expect_errno(errno.EACCES, os.open, blob, flags)
    # Creating a file in data/: EACCES (op_create).
    expect_errno(errno.EACCES, os.open, data / other, os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EACCES, os.open, data / "new-file", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    # Removing, renaming, chmod, truncate, links: EPERM.
    expect_errno(errno.EPERM, os.unlink, blob)
    expect_errno(errno.EPERM, os.rename, blob, data / other)
    expect_errno(errno.EPERM, os.rename, blob, mdir / "labels" / "moved")
    expect_errno(errno.EPERM, os.rename, mdir / "labels" / "lbl", data / other)
    expect_errno(errno.EPERM, os.chmod, blob, 0o644)
    expect_errno(errno.EPERM, os.truncate, blob, 0)
    expect_errno(errno.EPERM, os.symlink, "x", data / "sym")
    expect_errno(errno.EPERM, os.link, blob, data / other)
    expect_errno(errno.EACCES, os.mkdir, data / "dir")
    expect_errno(errno.EPERM, os.setxattr, blob, "user.casfs.hash", other.encode())
    expect_errno(errno.EPERM, os.removexattr, blob, "user.casfs.hash")
    # The tools say so too.
    p = run("sh", "-c", f"echo x > '{blob}'", expect=None)
    assert p.returncode != 0 and b"Permission denied" in p.stderr, p
    p = run("rm", "-f", blob, expect=1)
    assert b"Operation not permitted" in p.stderr, p.stderr
    p = run("chmod", "644", blob, expect=1)
    assert b"Operation not permitted" in p.stderr, p.stderr
    p = run("dd", "if=/dev/zero", f"of={blob}", "bs=1", "count=1", "conv=notrunc", "status=none", expect=1)
    assert b"Permission denied" in p.stderr, p.stderr
    # Nothing changed, anywhere.
    assert store_snapshot(m.casfs, sid, bdir) == before
    assert os.listdir(data) == [d]
    assert blob.read_bytes() == b"blob content"
    assert oct(os.stat(blob).st_mode & 0o7777) == oct(0o444)


def test_fixed_directories_refuse_changes(mounted):
    m = mounted
    sid, mdir, bdir, d = store_with_label(m)
    before = root_snapshot(m.casfs, m.root)
    for sub in ("data", "labels", "incoming"):
        expect_errno(errno.EPERM, os.rmdir, mdir / sub)
        expect_errno(errno.EPERM, os.rename, mdir / sub, mdir / "renamed")
    expect_errno(errno.EACCES, os.mkdir, mdir / "extra")
    expect_errno(errno.EACCES, os.open, mdir / "file", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EACCES, os.open, m.mnt / "file", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EPERM, os.symlink, f"data/{d}", mdir / "sym")
    # Regular files are not labels/ entries, symlinks are not incoming/ ones.
    expect_errno(errno.EPERM, os.open, mdir / "labels" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EPERM, os.symlink, f"../data/{d}", mdir / "incoming" / "s")
    # labels/ <-> incoming/ and across stores: EXDEV.
    expect_errno(errno.EXDEV, os.rename, mdir / "labels" / "lbl", mdir / "incoming" / "moved")
    expect_errno(errno.EXDEV, os.rename, mdir / "incoming" / "lbl", mdir / "labels" / "moved")
    other = m.casfs.out("new")
    expect_errno(errno.EXDEV, os.rename, mdir / "incoming" / "lbl", m.mnt / other / "incoming" / "lbl")
    expect_errno(errno.EXDEV, os.link, mdir / "incoming" / "lbl", m.mnt / other / "incoming" / "lbl")
    # Other xattrs than the hash.
    expect_errno(errno.ENODATA, os.getxattr, mdir / "incoming" / "lbl", "user.other")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, mdir / "incoming" / "lbl", "user.other", b"v")
    stores, files = root_snapshot(m.casfs, m.root)
    assert stores.pop(other) == ({}, {}, None)
    if files is not None:
        files = {k: v for k, v in files.items() if not k.startswith(other)}
    assert (stores, files) == before


def test_absent_and_malformed_names_are_enoent(mounted):
    m = mounted
    sid, mdir, bdir, d = store_with_label(m)
    other = m.casfs.out("new")
    d_other = m.casfs.out("store", other, input=b"elsewhere")
    names = [
        "zz", d.upper(), d[:-1], d + "0", d[:40], sha256(b"never stored"), d_other,
        "." + d, d + "~", "g" * 64,
    ]
    for n in names:
        for fn in (os.stat, os.lstat):
            expect_errno(errno.ENOENT, fn, mdir / "data" / n)
        expect_errno(errno.ENOENT, os.open, mdir / "data" / n, os.O_RDONLY)
        assert not os.path.lexists(mdir / "data" / n)
    p = run("cat", mdir / "data" / sha256(b"never stored"), expect=1)
    assert b"No such file or directory" in p.stderr
    paths = {rel: errno.ENOENT for rel in (
        "labels/missing", "incoming/missing", "labels/a/b/c", "incoming/missing/x", "nothing")}
    # labels/lbl is a symlink to data/<d>, a regular file: below it is ENOTDIR.
    paths.update({"labels/lbl/below": errno.ENOTDIR, f"data/{d}/x": errno.ENOTDIR,
                  "incoming/lbl/x": errno.ENOTDIR})
    for rel, code in paths.items():
        expect_errno(code, os.lstat, mdir / rel)
    expect_errno(errno.ENOENT, os.open, mdir / "incoming" / "missing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.readlink, mdir / "labels" / "missing")
    expect_errno(errno.ENOENT, os.unlink, mdir / "incoming" / "missing")
    expect_errno(errno.ENOENT, os.rmdir, mdir / "labels" / "missing")
    # Stores that do not exist, or could not.
    for n in ("no-such-store", ".hidden", "..."):
        expect_errno(errno.ENOENT, os.stat, m.mnt / n)
    assert sorted(os.listdir(m.mnt)) == sorted([sid, other])
    expect_errno(errno.ENOENT, os.open, m.mnt / "no-such-store" / "incoming" / "x",
                 os.O_CREAT | os.O_WRONLY, 0o644)
    assert sorted(m.casfs.out("stores").splitlines()) == sorted([sid, other])
    if not m.remote:
        assert not (m.root / "no-such-store").exists()


def test_bad_store_and_label_names(mounted):
    m = mounted
    os.mkdir(m.mnt / "s")
    expect_errno(errno.EEXIST, os.mkdir, m.mnt / "s")
    expect_errno(errno.EINVAL, os.mkdir, m.mnt / ".hidden")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, m.mnt / ("x" * 256))
    os.mkdir(m.mnt / ("y" * 255))  # the longest valid id
    assert sorted(os.listdir(m.mnt)) == sorted(["s", "y" * 255])
    assert sorted(m.casfs.out("stores").splitlines()) == sorted(["s", "y" * 255])
    if not m.remote:
        assert sorted(os.listdir(m.root)) == sorted(["s", "y" * 255])
    inc = m.mnt / "s" / "incoming"
    long = "n" * 256
    expect_errno(errno.ENAMETOOLONG, os.open, inc / long, os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, inc / long)
    with open(inc / ("n" * 255), "wb") as f:  # the longest valid component
        f.write(b"long name")
    assert cli_labels(m.casfs, "s") == {"n" * 255: sha256(b"long name")}
    if not m.remote:
        assert backing_labels(m.root / "s") == {"n" * 255: sha256(b"long name").encode()}
    expect_errno(errno.ENOENT, os.rmdir, m.mnt / "nothing")


def test_read_only_mount_refuses_writes_with_erofs(mounter, casfs, root_spec):
    c = casfs
    sid = c.out("new")
    d = c.out("store-at-label", sid, "lbl", input=b"read only")
    m = mounter(opts=["ro"])
    assert "ro" in mountinfo(m.mnt)["options"]
    mdir = m.mnt / sid
    before = root_snapshot(c, root_spec)
    # Reading works.
    assert (mdir / "incoming" / "lbl").read_bytes() == b"read only"
    assert (mdir / "labels" / "lbl").read_bytes() == b"read only"
    assert (mdir / "data" / d).read_bytes() == b"read only"
    assert os.readlink(mdir / "labels" / "lbl") == f"../data/{d}"
    # Every change: EROFS.
    E = errno.EROFS
    expect_errno(E, os.open, mdir / "incoming" / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(E, os.open, mdir / "incoming" / "lbl", os.O_WRONLY)
    expect_errno(E, os.open, mdir / "incoming" / "lbl", os.O_RDWR | os.O_TRUNC)
    expect_errno(E, os.truncate, mdir / "incoming" / "lbl", 0)
    expect_errno(E, os.unlink, mdir / "incoming" / "lbl")
    expect_errno(E, os.unlink, mdir / "labels" / "lbl")
    expect_errno(E, os.rename, mdir / "labels" / "lbl", mdir / "labels" / "x")
    expect_errno(E, os.symlink, f"../data/{d}", mdir / "labels" / "x")
    expect_errno(E, os.link, mdir / "incoming" / "lbl", mdir / "incoming" / "x")
    expect_errno(E, os.mkdir, mdir / "labels" / "dir")
    expect_errno(E, os.mkdir, m.mnt / "newstore")
    expect_errno(E, os.rmdir, mdir)
    expect_errno(E, os.chmod, mdir / "incoming" / "lbl", 0o600)
    expect_errno(E, os.utime, mdir / "incoming" / "lbl", (1, 1))
    p = run("cp", "/etc/hostname", mdir / "incoming" / "x", expect=1)
    assert b"Read-only file system" in p.stderr, p.stderr
    assert root_snapshot(c, root_spec) == before


def test_daemon_killed_mid_writes_leaves_consistent_store(mounter):
    m = mounter()
    os.mkdir(m.mnt / "s")
    mdir, bdir = m.store("s")
    os.mkdir(mdir / "incoming" / "w")
    stop = threading.Event()
    done = []  # (thread, name, body) of closes that returned 0

    def writer(k):
        rnd = random.Random(k)
        i = 0
        while not stop.is_set():
            name = f"w/t{k}-{i % 4}"
            body = rnd.randbytes(rnd.randrange(1, 600_000))
            try:
                with open(mdir / "incoming" / name, "wb") as f:
                    for off in range(0, len(body), 64 * 1024):
                        f.write(body[off:off + 64 * 1024])
                        f.flush()
                done.append((k, name, body))
            except OSError:
                return  # the daemon is gone: ENOTCONN and friends
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    # One more writer is surely mid-version when the daemon dies.
    held = open(mdir / "incoming" / "held", "wb")
    try:
        held.write(os.urandom(100_000))
        held.flush()
        # Let them commit a fair number of files, then kill mid-write.
        poll(lambda: len(done) >= 24, 20, "24 files committed by the writers")
        rc = m.kill()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        try:
            held.close()
        except OSError:
            pass  # ENOTCONN: the daemon is gone
    assert rc == -9
    assert not any(t.is_alive() for t in threads), "a writer is stuck on the dead mount"
    if bdir is not None:
        # Versions being written (`held` at least) were staged in unnamed
        # files (O_TMPFILE): they went with the daemon.  Only a label
        # replacement caught mid-rename leaves a named file: a digest.
        sdir = bdir / ".casfs" / "staging"
        left = {n: (sdir / n).stat().st_size for n in staging_files(bdir)}
        assert all(size <= 64 for size in left.values()), left
        # What a daemon staging in named files (a filesystem without
        # O_TMPFILE) would have left: the next daemon removes it.
        (bdir / ".casfs" / "staging" / "s.99999.0123456789abcdef").write_bytes(b"partial")

    # Every file whose close returned 0 before the kill is there (its own
    # version or a later one of the same writer).
    labels = {k: v.encode() for k, v in cli_labels(m.casfs, "s").items()}
    blobs = cli_blobs(m.casfs, "s")
    if bdir is not None:
        assert backing_labels(bdir) == labels
        assert backing_blobs(bdir) == blobs
    for k, name, body in done:
        assert name in labels, name
    assert "held" not in labels
    for name, d in labels.items():
        assert d.decode() in blobs, f"label {name} names absent blob {d}"
    for d, body in blobs.items():
        assert sha256(body) == d, f"blob {d} does not hash to its name"

    m2 = mounter(root=m.root, mnt=m.mnt)
    mdir2 = m2.mnt / "s"
    names = sorted(os.listdir(mdir2 / "incoming" / "w"))
    assert names == sorted(n.split("/")[1] for n in labels), names
    # The remounted daemon cleared the dead writer's staging file.
    if bdir is not None:
        assert staging_files(bdir) == []
    for name, d in labels.items():
        assert os.readlink(mdir2 / "labels" / name) == f"../../data/{d.decode()}"
        body = (mdir2 / "incoming" / name).read_bytes()
        assert sha256(body) == d.decode(), name
    m2.casfs.run("fsck", "s")
    # The store works after the crash.
    (mdir2 / "incoming" / "after").write_bytes(b"after the crash")
    assert m2.casfs.out("get-by-label", "s", "after") == sha256(b"after the crash")
    if bdir is not None:
        assert (bdir / "labels" / "after").read_text() == sha256(b"after the crash")
