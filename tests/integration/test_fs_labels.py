"""labels/ (SPEC §4): symlinks to ../data/<hash>; ln -s sets a label only
when the target names a blob of this store, ln -sf replaces, rm removes, mv
renames atomically, mkdir/rmdir make label directories, and a nested label
points one ../ further up.  Checked with the tools, through the mount, with
the command, and on the dir backend in the backing directory."""
import errno
import os
import threading
import time

from fuse_util import (backing_labels, cli_labels, expect_errno, how, mounted, mounter,  # noqa: F401
                       out, run, sha256)


def setup_store(m, contents=(b"one", b"two", b"three")):
    """(id, path through the mount, backing directory or None for a
    rados: root, digests of contents)."""
    sid = m.casfs.out("new")
    digests = [m.casfs.out("store", sid, input=c) for c in contents]
    return (sid, *m.store(sid), digests)


def assert_labels(m, sid, bdir, want):
    """The store's labels are want (name -> digest): through the command,
    and on the dir backend as label files holding the bare digest."""
    assert cli_labels(m.casfs, sid) == want
    if bdir is not None:
        assert backing_labels(bdir) == {k: v.encode() for k, v in want.items()}


def test_ln_s_sets_label(mounted):
    m = mounted
    sid, mdir, bdir, (d1, d2, _) = setup_store(m)
    run("ln", "-s", f"../data/{d1}", mdir / "labels" / "x")
    assert_labels(m, sid, bdir, {"x": d1})
    assert os.readlink(mdir / "labels" / "x") == f"../data/{d1}"
    assert out("readlink", mdir / "labels" / "x") == f"../data/{d1}"
    assert out("readlink", "-f", mdir / "labels" / "x") == str(mdir / "data" / d1)
    assert run("cat", mdir / "labels" / "x").stdout == b"one"
    assert out("stat", "-c", "%F", mdir / "labels" / "x") == "symbolic link"
    assert m.casfs.out("get-by-label", sid, "x") == d1
    # The same label, as a file in incoming/.
    assert (mdir / "incoming" / "x").read_bytes() == b"one"
    assert os.listdir(mdir / "labels") == ["x"] == os.listdir(mdir / "incoming")
    # Python's os.symlink too.
    os.symlink(f"../data/{d2}", mdir / "labels" / "y")
    assert_labels(m, sid, bdir, {"x": d1, "y": d2})


def test_ln_s_refuses_bad_targets(mounted):
    m = mounted
    sid, mdir, bdir, (d1, _, _) = setup_store(m)
    labels = mdir / "labels"
    absent = sha256(b"never stored")
    bad = {
        f"data/{d1}": errno.EINVAL,                     # not relative to labels/
        f"../../data/{d1}": errno.EINVAL,               # one level too many
        f"../labels/{d1}": errno.EINVAL,
        "../data/not-a-digest": errno.EINVAL,
        f"../data/{d1.upper()}": errno.EINVAL,          # digests are lowercase
        f"../data/{d1[:40]}": errno.EINVAL,             # a sha1-sized digest in a sha256 store
        f"../data/{d1}/": errno.EINVAL,
        f"/{d1}": errno.EINVAL,                         # absolute targets
        str(mdir / "data" / d1): errno.EINVAL,
        f"/../data/{d1}": errno.EINVAL,
        f"../data/{absent}": errno.ENOENT,              # a digest not stored here
    }
    for target, code in bad.items():
        expect_errno(code, os.symlink, target, labels / "bad")
        assert not os.path.lexists(labels / "bad"), target
    p = run("ln", "-s", "/etc/passwd", labels / "bad", expect=1)
    assert b"Invalid argument" in p.stderr, p.stderr
    p = run("ln", "-s", f"../data/{absent}", labels / "bad", expect=1)
    assert b"No such file or directory" in p.stderr, p.stderr
    assert_labels(m, sid, bdir, {})
    assert os.listdir(labels) == []
    # A blob of another store is not a blob of this one.
    other = m.casfs.out("new")
    dother = m.casfs.out("store", other, input=b"only in the other store")
    expect_errno(errno.ENOENT, os.symlink, f"../data/{dother}", labels / "bad")
    assert_labels(m, sid, bdir, {})


def test_ln_sf_replaces_and_ln_s_refuses_existing(mounted):
    m = mounted
    sid, mdir, bdir, (d1, d2, d3) = setup_store(m)
    x = mdir / "labels" / "x"
    run("ln", "-s", f"../data/{d1}", x)
    p = run("ln", "-s", f"../data/{d2}", x, expect=1)
    assert b"File exists" in p.stderr
    expect_errno(errno.EEXIST, os.symlink, f"../data/{d2}", x)
    assert_labels(m, sid, bdir, {"x": d1})
    run("ln", "-sf", f"../data/{d2}", x)
    assert_labels(m, sid, bdir, {"x": d2})
    assert os.readlink(x) == f"../data/{d2}"
    assert (mdir / "incoming" / "x").read_bytes() == b"two"
    run("ln", "-sfn", f"../data/{d3}", x)
    assert os.readlink(x) == f"../data/{d3}"
    assert_labels(m, sid, bdir, {"x": d3})  # no temporary names left
    assert os.listdir(mdir / "labels") == ["x"]


def test_rm_removes_label_but_not_blob(mounted):
    m = mounted
    sid, mdir, bdir, (d1, _, _) = setup_store(m)
    run("ln", "-s", f"../data/{d1}", mdir / "labels" / "x")
    run("rm", mdir / "labels" / "x")
    assert not os.path.lexists(mdir / "labels" / "x")
    assert not os.path.lexists(mdir / "incoming" / "x")
    assert_labels(m, sid, bdir, {})
    if bdir is not None:
        assert not (bdir / "labels" / "x").exists()
    assert (mdir / "data" / d1).read_bytes() == b"one"
    assert d1 in m.casfs.out("list-all-content", sid).splitlines()
    expect_errno(errno.ENOENT, os.unlink, mdir / "labels" / "x")
    p = run("rm", mdir / "labels" / "x", expect=1)
    assert b"No such file or directory" in p.stderr
    m.casfs.run("get-by-label", sid, "x", expect=1)


def test_mv_renames(mounted):
    m = mounted
    sid, mdir, bdir, (d1, d2, _) = setup_store(m)
    L = mdir / "labels"
    run("ln", "-s", f"../data/{d1}", L / "a")
    run("mv", L / "a", L / "b")
    assert_labels(m, sid, bdir, {"b": d1})
    assert os.listdir(L) == ["b"]
    assert os.readlink(L / "b") == f"../data/{d1}"
    # mv over an existing label replaces it.
    run("ln", "-s", f"../data/{d2}", L / "c")
    run("mv", "-f", L / "c", L / "b")
    assert_labels(m, sid, bdir, {"b": d2})
    assert os.readlink(L / "b") == f"../data/{d2}"
    # Into and out of a label directory: the target gains or loses a ../.
    os.mkdir(L / "dir")
    run("mv", L / "b", L / "dir" / "b")
    assert os.readlink(L / "dir" / "b") == f"../../data/{d2}"
    assert_labels(m, sid, bdir, {"dir/b": d2})
    assert run("cat", L / "dir" / "b").stdout == b"two"
    run("mv", L / "dir" / "b", L / "top")
    assert os.readlink(L / "top") == f"../data/{d2}"
    # A whole label directory moves.
    run("ln", "-s", f"../../data/{d1}", L / "dir" / "in")
    run("mv", L / "dir", L / "moved")
    assert_labels(m, sid, bdir, {"top": d2, "moved/in": d1})
    assert os.readlink(L / "moved" / "in") == f"../../data/{d1}"
    assert not os.path.lexists(L / "dir")
    # Renaming a missing label.
    expect_errno(errno.ENOENT, os.rename, L / "nothing", L / "x")


def test_mv_replaces_atomically(mounted):
    """While a label is replaced again and again by rename(2), a reader of
    it always finds it, pointing at the old or the new digest."""
    m = mounted
    sid, mdir, bdir, (d1, d2, _) = setup_store(m)
    L = mdir / "labels"
    os.symlink(f"../data/{d1}", L / "target")
    valid = {f"../data/{d1}", f"../data/{d2}"}
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            try:
                t = os.readlink(L / "target")
            except OSError as e:
                bad.append(f"readlink: {e}")
                continue
            seen.add(t)
            if t not in valid:
                bad.append(t)
            try:
                if (L / "target").read_bytes() not in (b"one", b"two"):
                    bad.append("bad content")
            except OSError as e:
                bad.append(f"read: {e}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            d = (d1, d2)[i % 2]
            os.symlink(f"../data/{d}", L / "tmp")
            os.rename(L / "tmp", L / "target")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not bad, bad[:10]
    assert seen <= valid
    assert_labels(m, sid, bdir, {"target": d2})


def test_label_directories(mounted):
    m = mounted
    sid, mdir, bdir, (d1, d2, _) = setup_store(m)
    L = mdir / "labels"
    run("mkdir", L / "proj")
    run("mkdir", "-p", L / "proj" / "deep" / "er")
    if bdir is not None:
        assert (bdir / "labels" / "proj" / "deep" / "er").is_dir()
    assert out("stat", "-c", "%F", L / "proj") == "directory"
    # The same directories in incoming/.
    assert os.path.isdir(mdir / "incoming" / "proj" / "deep" / "er")
    run("ln", "-s", f"../../data/{d1}", L / "proj" / "a")
    run("ln", "-s", f"../../../../data/{d2}", L / "proj" / "deep" / "er" / "b")
    assert os.readlink(L / "proj" / "a") == f"../../data/{d1}"
    assert os.readlink(L / "proj" / "deep" / "er" / "b") == f"../../../../data/{d2}"
    assert run("cat", L / "proj" / "deep" / "er" / "b").stdout == b"two"
    assert_labels(m, sid, bdir, {"proj/a": d1, "proj/deep/er/b": d2})
    assert sorted(m.casfs.out("list-labels", sid).splitlines()) == ["proj/a", "proj/deep/er/b"]
    # A target made for the wrong depth is refused.
    expect_errno(errno.EINVAL, os.symlink, f"../data/{d1}", L / "proj" / "wrong")
    # rmdir refuses a non-empty label directory, removes an empty one.
    expect_errno(errno.ENOTEMPTY, os.rmdir, L / "proj" / "deep")
    p = run("rmdir", L / "proj" / "deep", expect=1)
    assert b"Directory not empty" in p.stderr
    run("rm", L / "proj" / "deep" / "er" / "b")
    run("rmdir", L / "proj" / "deep" / "er", L / "proj" / "deep")
    if bdir is not None:
        assert not (bdir / "labels" / "proj" / "deep").exists()
    assert not os.path.lexists(L / "proj" / "deep")
    assert os.listdir(L / "proj") == ["a"]
    expect_errno(errno.EEXIST, os.mkdir, L / "proj")
    expect_errno(errno.EEXIST, os.mkdir, L / "proj" / "a")
    # Label directories seen with ls.
    listing = out("ls", "-l", L)
    assert listing.splitlines()[1].startswith("d"), listing
    # Made by the command, seen through the mount.
    m.casfs.run("label", sid, "cmd/made/this", d2)
    assert os.readlink(L / "cmd" / "made" / "this") == f"../../../data/{d2}"


def test_hard_link_of_label_is_a_second_label(mounted):
    m = mounted
    sid, mdir, bdir, (d1, _, _) = setup_store(m)
    L = mdir / "labels"
    os.symlink(f"../data/{d1}", L / "a")
    run("ln", L / "a", L / "b")  # GNU ln links the symlink itself
    assert_labels(m, sid, bdir, {"a": d1, "b": d1})
    assert os.readlink(L / "b") == f"../data/{d1}"
    # Removing one leaves the other.
    os.unlink(L / "a")
    assert_labels(m, sid, bdir, {"b": d1})


def test_listings_kept_by_the_daemon_stay_current(mounted):
    """The daemon keeps the listing of a directory that has been still for
    2 s (fs/ops.c dl_get) and reuses it while the backing directory's ctime
    is unchanged.  Every change must still show at once: through the mount
    on either side, by the command, by another program writing label files,
    even one that sets the directory's mtime back (ctime, not mtime, is
    what is compared)."""
    m = mounted
    sid, mdir, bdir, (d1, d2, d3) = setup_store(m)
    m.casfs.run("label", sid, "a", d1)
    m.casfs.run("label", sid, "sub/b", d2)
    os.mkdir(mdir / "incoming" / "sub2")
    time.sleep(2.2)  # everything still for longer than DL_SETTLED_NS

    def ls(rel):
        return sorted(os.listdir(mdir / rel))

    for _ in range(2):  # the second one is served from what was kept
        assert ls("labels") == ["a", "sub", "sub2"]
        assert ls("incoming") == ["a", "sub", "sub2"]
        assert ls("labels/sub") == ["b"]
        assert ls("data") == sorted([d1, d2, d3])
    # The command adds a blob and a label.
    d4 = m.casfs.out("store", sid, input=b"four")
    m.casfs.run("label", sid, "sub/c", d4)
    assert ls("data") == sorted([d1, d2, d3, d4])
    assert ls("labels/sub") == ["b", "c"]
    assert ls("incoming/sub") == ["b", "c"]
    # Through incoming/: seen in labels/ and data/ at once.
    (mdir / "incoming" / "new").write_bytes(b"five")
    assert "new" in ls("labels")
    assert sha256(b"five") in ls("data")
    # Through labels/: seen in incoming/.
    os.unlink(mdir / "labels" / "sub" / "b")
    assert ls("incoming/sub") == ["c"]
    os.rename(mdir / "labels" / "a", mdir / "labels" / "sub2" / "a")
    assert ls("incoming") == ["new", "sub", "sub2"]
    assert ls("incoming/sub2") == ["a"]
    if bdir is not None:
        # Another program writes a label file and sets labels/sub's mtime
        # back to what it was: the listing changes all the same.
        time.sleep(2.2)
        assert ls("labels/sub") == ["c"]
        assert ls("labels/sub") == ["c"]  # kept
        st = os.stat(bdir / "labels" / "sub")
        (bdir / "labels" / "sub" / "theater").write_bytes(d1.encode())
        os.utime(bdir / "labels" / "sub", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert ls("labels/sub") == ["c", "theater"]
        assert os.readlink(mdir / "labels" / "sub" / "theater") == f"../../data/{d1}"
        # And removes one.
        os.unlink(bdir / "labels" / "sub" / "c")
        assert ls("incoming/sub") == ["theater"]
