"""incoming/ (SPEC §4, §6): files written there are hashed, published and
labelled before close(2) returns; open handles share one staged version
with ordinary POSIX behaviour; fsync commits at once; readers that opened
before a commit keep the old content; mode and mtime are kept so cp -a,
rsync -a and tar succeed.  Every result is checked through the mount and
with the command, and on the dir backend in the backing directory too
(labels/NAME holds the digest, data/DIGEST the bytes)."""
import json
import os
import random
import threading

from fuse_util import (backing_blobs, backing_labels, cli_blobs, cli_labels, how, mounted,  # noqa: F401
                       mounter, out, poll, require_tool, run, sha256, staging_files)


def fresh(m):
    """(id, path through the mount, backing directory or None for a rados:
    root) of a new store."""
    sid = m.casfs.out("new")
    return (sid, *m.store(sid))


def committed(m, sid, bdir, name):
    """The content the store holds under label name (None if no label),
    asked of the command, checking that the label names a blob hashing to
    it; on the dir backend the backing files must say the same."""
    p = m.casfs.run("get-by-label", sid, name, expect=None)
    assert p.returncode in (0, 1), p
    d = p.stdout.decode().strip() if p.returncode == 0 else None
    if bdir is not None:
        lf = bdir / "labels" / name
        assert lf.exists() == (d is not None), f"label file {name} vs get-by-label {d}"
        if d is not None:
            assert lf.read_text() == d
    if d is None:
        return None
    blob = m.casfs.run("get", sid, d).stdout
    assert sha256(blob) == d, f"blob {d} does not hash to its name"
    if bdir is not None:
        assert (bdir / "data" / d).read_bytes() == blob
    return blob


def labels_of(m, sid, bdir):
    """name -> digest of every label of the store, through the command; on
    the dir backend the label files must hold the same bare digests."""
    got = cli_labels(m.casfs, sid)
    if bdir is not None:
        assert backing_labels(bdir) == {k: v.encode() for k, v in got.items()}
    return got


def blobs_of(m, sid, bdir):
    """digest -> bytes of every blob of the store, through the command; on
    the dir backend data/ must hold the same."""
    got = cli_blobs(m.casfs, sid)
    if bdir is not None:
        assert backing_blobs(bdir) == got
    return got


def commits_of(m, sid, label):
    """Journal lines that changed label."""
    lines = [json.loads(x) for x in m.casfs.out("events", sid).splitlines()]
    return [e for e in lines if e.get("label") == label and e.get("outcome") == "ok"]


def tree_files(d):
    """path (relative) -> (bytes or None for dirs, mode bits, mtime_ns)."""
    res = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, d)
            body = None if n in dirnames else open(p, "rb").read()
            res[rel] = (body, st.st_mode & 0o7777, st.st_mtime_ns)
    return res


def make_tree(src):
    """A small tree with assorted sizes, modes and past mtimes."""
    rnd = random.Random(7)
    files = {
        "README": b"read me\n",
        "empty": b"",
        "bin/tool": rnd.randbytes(70_000),
        "doc/a/b/deep.txt": b"deep\n" * 1000,
        "doc/big": rnd.randbytes((1 << 20) + 11),
        "doc/same-as-readme": b"read me\n",
    }
    modes = {"bin/tool": 0o755, "doc/a/b/deep.txt": 0o600, "README": 0o640}
    for i, (rel, body) in enumerate(sorted(files.items())):
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
        os.chmod(p, modes.get(rel, 0o644))
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i * 1_000_000_007))
    os.chmod(src / "bin", 0o750)
    for i, d in enumerate(["doc/a/b", "doc/a", "doc", "bin"]):
        os.utime(src / d, ns=(1_400_000_000_000_000_000, 1_400_000_000_500_000_000 + i))
    return files


def check_tree_in_store(m, sid, bdir, prefix, files):
    # An empty file is committed when the kernel releases it, which may be
    # just after the copying tool exited (the bug that
    # test_empty_file_and_truncation_commit_before_close_returns shows):
    # wait for it, boundedly, so that these tests are about the tools.
    want = sorted(f"{prefix}/{r}" for r in files)
    poll(lambda: sorted(k for k in m.casfs.out("list-labels", sid).splitlines()
                        if k.startswith(prefix + "/")) == want,
         2.0, f"the labels of {prefix}/")
    labels = labels_of(m, sid, bdir)
    blobs = blobs_of(m, sid, bdir)
    for rel, body in files.items():
        d = labels.get(f"{prefix}/{rel}")
        assert d == sha256(body), rel
        assert blobs[d] == body, rel
    # No temporary names (rsync's .name.XXXXXX, ...) were left as labels.
    assert sorted(k for k in labels if k.startswith(prefix + "/")) == sorted(f"{prefix}/{r}" for r in files)


def compare_trees(src, dst, mtime_ns=True, dirs=True):
    a, b = tree_files(src), tree_files(dst)
    assert sorted(a) == sorted(b)
    for rel in a:
        body, mode, mt = a[rel]
        if body is None and not dirs:
            continue
        got = b[rel]
        assert got[0] == body, f"{rel}: content differs"
        assert got[1] == mode, f"{rel}: mode {oct(got[1])}, expected {oct(mode)}"
        if mtime_ns:
            assert got[2] == mt, f"{rel}: mtime {got[2]}, expected {mt}"
        else:
            assert got[2] // 10**9 == mt // 10**9, f"{rel}: mtime {got[2]}, expected {mt}"


# ----------------------------------------------------------------- commit


def test_close_commits_before_returning(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    for i, size in enumerate([1, 4095, 4096, 65537, 3 << 20]):
        body = os.urandom(size)
        f = open(mdir / "incoming" / f"f{i}", "wb")
        f.write(body)
        assert committed(m, sid, bdir, f"f{i}") is None  # not before close ...
        f.close()
        assert committed(m, sid, bdir, f"f{i}") == body  # ... but as soon as it returns
        if bdir is not None:
            assert (bdir / "labels" / f"f{i}").read_bytes() == sha256(body).encode()
        assert (mdir / "incoming" / f"f{i}").read_bytes() == body
        assert os.readlink(mdir / "labels" / f"f{i}") == f"../data/{sha256(body)}"
        assert os.stat(mdir / "incoming" / f"f{i}").st_size == size
    if bdir is not None:
        assert staging_files(bdir) == []


def test_long_stream_hashed_alongside_commits_its_digest(mounted):
    """A long in-order stream is hashed on a thread of the daemon that may
    lag at most 16 MiB behind the writes (core/store.c, BG_LAG): 40 MiB in
    1 MiB writes, then rewritten in place from the start, must each commit
    exactly their content at close."""
    m = mounted
    sid, mdir, bdir = fresh(m)
    body = bytearray(os.urandom(40 << 20))
    p = mdir / "incoming" / "long"
    for round_ in range(2):
        body[0] = round_
        with open(p, "r+b" if round_ else "wb") as f:
            for off in range(0, len(body), 1 << 20):
                f.write(body[off:off + (1 << 20)])
        assert committed(m, sid, bdir, "long") == bytes(body)
        assert os.getxattr(p, "user.casfs.hash").decode() == sha256(bytes(body))
    if bdir is not None:
        assert staging_files(bdir) == []


def test_empty_file_and_truncation_commit_before_close_returns(mounted):
    """An empty new file (touch, open+close) and a truncation to zero
    (`: > file`) are versions like any other: committed when the last
    close(2) returns."""
    m = mounted
    sid, mdir, bdir = fresh(m)
    inc = mdir / "incoming"
    run("touch", inc / "touched")
    assert committed(m, sid, bdir, "touched") == b""
    assert m.casfs.out("get-by-label", sid, "touched") == sha256(b"")
    for i in range(5):
        fd = os.open(inc / f"opened{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        assert committed(m, sid, bdir, f"opened{i}") == b"", f"opened{i}"
    (inc / "full").write_bytes(b"some content")
    run("sh", "-c", f": > '{inc / 'full'}'")
    assert committed(m, sid, bdir, "full") == b""
    assert os.readlink(mdir / "labels" / "full") == f"../data/{sha256(b'')}"


def test_shell_redirection_and_append(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    f = mdir / "incoming" / "log"
    run("sh", "-c", f"printf 'one\\n' > '{f}'")
    assert committed(m, sid, bdir, "log") == b"one\n"
    run("sh", "-c", f"printf 'two\\n' >> '{f}'")
    assert committed(m, sid, bdir, "log") == b"one\ntwo\n"
    run("sh", "-c", f"printf 'three\\n' > '{f}'")
    assert committed(m, sid, bdir, "log") == b"three\n"
    assert run("cat", f).stdout == b"three\n"


def test_open_without_trunc_starts_from_current_content(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "x"
    p.write_bytes(b"0123456789")
    fd = os.open(p, os.O_WRONLY)
    assert os.write(fd, b"ab") == 2
    os.close(fd)
    assert committed(m, sid, bdir, "x") == b"ab23456789"
    with open(p, "r+b") as f:
        assert f.read() == b"ab23456789"
        f.seek(8)
        f.write(b"YZ!")
    assert committed(m, sid, bdir, "x") == b"ab234567YZ!"
    with open(p, "ab") as f:
        f.write(b"+tail")
    assert committed(m, sid, bdir, "x") == b"ab234567YZ!+tail"
    assert p.read_bytes() == b"ab234567YZ!+tail"
    # Opening for writing and closing without writing changes nothing.
    n = len(commits_of(m, sid, "x"))
    os.close(os.open(p, os.O_WRONLY))
    assert committed(m, sid, bdir, "x") == b"ab234567YZ!+tail"
    assert len(commits_of(m, sid, "x")) == n


def test_seek_overwrite_truncate_read_back_before_close(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "edit"
    expect = bytearray(os.urandom(100_000))
    with open(p, "w+b") as f:
        f.write(expect)
        f.seek(500)
        f.write(b"OVERWRITE")
        expect[500:509] = b"OVERWRITE"
        f.seek(0)
        assert f.read() == expect
        f.truncate(60_000)
        del expect[60_000:]
        f.seek(0)
        assert f.read() == expect
        f.truncate(70_000)  # extending fills with zeros
        expect += bytes(10_000)
        f.seek(65_000)
        f.write(b"in the hole")
        expect[65_000:65_011] = b"in the hole"
        f.seek(200_000)  # a write past the end leaves a hole
        f.write(b"far")
        expect += bytes(200_000 - len(expect)) + b"far"
        f.flush()
        assert os.fstat(f.fileno()).st_size == len(expect)
        assert os.pread(f.fileno(), 20, 69_995) == bytes(expect[69_995:70_015])
        f.seek(0)
        assert f.read() == expect
        assert committed(m, sid, bdir, "edit") is None
    assert committed(m, sid, bdir, "edit") == expect
    assert p.read_bytes() == expect
    # truncate(2) of a closed file commits at once.
    os.truncate(p, 10)
    assert committed(m, sid, bdir, "edit") == expect[:10]
    os.truncate(p, 0)
    assert committed(m, sid, bdir, "edit") == b""
    assert p.read_bytes() == b""


def test_dd_seek_and_notrunc(mounted, tmp_path):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "img"
    p.write_bytes(b"abcdefghij")
    patch = tmp_path / "patch"
    patch.write_bytes(b"XYZ")
    run("dd", f"if={patch}", f"of={p}", "bs=1", "seek=3", "conv=notrunc", "status=none")
    assert committed(m, sid, bdir, "img") == b"abcXYZghij"
    run("dd", f"if={patch}", f"of={p}", "bs=1", "seek=12", "conv=notrunc", "status=none")
    assert committed(m, sid, bdir, "img") == b"abcXYZghij\0\0XYZ"
    run("dd", f"if={patch}", f"of={p}", "bs=1", "seek=2", "status=none")  # truncates at 2
    assert committed(m, sid, bdir, "img") == b"abXYZ"
    assert run("cat", p).stdout == b"abXYZ"
    big = os.urandom(1 << 20)
    (tmp_path / "big").write_bytes(big)
    run("dd", f"if={tmp_path / 'big'}", f"of={p}", "bs=64k", "seek=2", "conv=notrunc", "status=none")
    assert committed(m, sid, bdir, "img") == b"abXYZ" + bytes(2 * 65536 - 5) + big


def test_fsync_commits_while_open(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    f = open(mdir / "incoming" / "j", "wb")
    try:
        f.write(b"first part")
        f.flush()
        os.fsync(f.fileno())
        assert committed(m, sid, bdir, "j") == b"first part"  # still open
        assert os.readlink(mdir / "labels" / "j") == f"../data/{sha256(b'first part')}"
        n = len(commits_of(m, sid, "j"))
        f.write(b", second part")
        f.flush()
        os.fsync(f.fileno())
        assert committed(m, sid, bdir, "j") == b"first part, second part"
        assert len(commits_of(m, sid, "j")) == n + 1
        os.fsync(f.fileno())  # nothing written since: no new commit
        os.fdatasync(f.fileno())
    finally:
        f.close()
    assert committed(m, sid, bdir, "j") == b"first part, second part"
    # The close after an fsync with nothing written since commits nothing.
    assert len(commits_of(m, sid, "j")) == n + 1


def test_handles_share_one_version_until_the_last_close(mounted):
    """SPEC §4: while a name is open for writing, its writable handles share
    the staged version and the last of them to close commits it; a
    read-only open sees only committed content (no reader ever sees a
    half-written file), and keeps it after the commit."""
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "shared"
    p.write_bytes(b"committed")
    w = open(p, "r+b")
    rw = r = None
    try:
        w.write(b"STAGED")
        w.flush()
        rw = open(p, "r+b")  # a second writable handle shares the version
        assert rw.read() == b"STAGEDted"
        r = open(p, "rb")  # a reader: the committed version only
        assert r.read() == b"committed"
        w.close()
        assert committed(m, sid, bdir, "shared") == b"committed"  # rw is still open
        rw.close()  # the last writable handle: commits
        assert committed(m, sid, bdir, "shared") == b"STAGEDted"
        r.seek(0)
        assert r.read() == b"committed"  # opened before the commit
    finally:
        for f in (w, rw, r):
            if f:
                f.close()
    assert p.read_bytes() == b"STAGEDted"


def test_two_writers_share_one_version(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "two"
    p.write_bytes(b"..........")
    a = os.open(p, os.O_WRONLY)
    b = os.open(p, os.O_RDWR)
    try:
        # b reads first, so the kernel caches those pages; a writes past
        # the page cache (write-only handles do): b must not read stale.
        assert os.pread(b, 100, 0) == b".........."
        os.pwrite(a, b"AA", 0)
        os.pwrite(b, b"BB", 8)
        assert os.pread(b, 100, 0) == b"AA......BB"
        os.close(a)
        a = None
        assert committed(m, sid, bdir, "two") == b".........."  # b still open
    finally:
        if a is not None:
            os.close(a)
        os.close(b)
    assert committed(m, sid, bdir, "two") == b"AA......BB"


def test_reader_opened_before_commit_keeps_old_content(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "doc"
    old = b"O" * 50_000 + b"old end"
    new = b"N" * 50_000 + b"new end"
    p.write_bytes(old)
    r = open(p, "rb")
    r2 = open(p, "rb")
    try:
        assert r2.read(10) == b"O" * 10  # one reader has started reading
        with open(p, "wb") as w:
            w.write(new)
        assert committed(m, sid, bdir, "doc") == new
        assert r.read() == old
        assert r2.read() == old[10:]
        r.seek(0)
        assert r.read() == old
        assert os.fstat(r.fileno()).st_size == len(old)
    finally:
        r.close()
        r2.close()
    assert p.read_bytes() == new


def test_hard_link_makes_second_label(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "orig"
    p.write_bytes(b"linked content")
    os.link(p, mdir / "incoming" / "copy")
    d = sha256(b"linked content")
    assert labels_of(m, sid, bdir) == {"orig": d, "copy": d}
    assert (mdir / "incoming" / "copy").read_bytes() == b"linked content"
    run("ln", mdir / "incoming" / "orig", mdir / "incoming" / "third")
    assert labels_of(m, sid, bdir)["third"] == d
    # They are separate labels: changing one leaves the others.
    (mdir / "incoming" / "copy").write_bytes(b"changed")
    assert committed(m, sid, bdir, "orig") == b"linked content"
    assert committed(m, sid, bdir, "copy") == b"changed"


def test_rm_mv_mkdir_in_incoming(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    inc = mdir / "incoming"
    (inc / "a").write_bytes(b"A")
    (inc / "b").write_bytes(b"B")
    run("mv", inc / "a", inc / "c")
    assert labels_of(m, sid, bdir) == {"b": sha256(b"B"), "c": sha256(b"A")}
    run("mv", "-f", inc / "c", inc / "b")  # replaces b
    assert labels_of(m, sid, bdir) == {"b": sha256(b"A")}
    assert (inc / "b").read_bytes() == b"A"
    run("mkdir", "-p", inc / "d" / "e")
    assert os.path.isdir(mdir / "labels" / "d" / "e")
    if bdir is not None:
        assert (bdir / "labels" / "d" / "e").is_dir()
    run("mv", inc / "b", inc / "d" / "e" / "b")
    assert os.readlink(mdir / "labels" / "d" / "e" / "b") == f"../../../data/{sha256(b'A')}"
    run("rm", inc / "d" / "e" / "b")
    assert labels_of(m, sid, bdir) == {}
    run("rm", "-r", inc / "d")
    assert os.listdir(inc) == [] and os.listdir(mdir / "labels") == []
    if bdir is not None:
        assert os.listdir(bdir / "labels") == []
    assert (mdir / "data" / sha256(b"A")).read_bytes() == b"A"  # blobs stay


def test_open_file_replaced_by_mv_stays_usable(mounted):
    """On any POSIX filesystem a descriptor open on a name that rename(2)
    replaces keeps working on the old file: fstat and read succeed."""
    m = mounted
    sid, mdir, bdir = fresh(m)
    inc = mdir / "incoming"
    (inc / "a").write_bytes(b"new content from a")
    (inc / "b").write_bytes(b"old b")
    fd = os.open(inc / "b", os.O_RDONLY)
    try:
        os.rename(inc / "a", inc / "b")
        assert os.pread(fd, 100, 0) == b"old b"
        assert os.fstat(fd).st_size == len(b"old b")
    finally:
        os.close(fd)
    assert committed(m, sid, bdir, "b") == b"new content from a"


def test_writer_on_name_replaced_by_mv_leaves_no_stray_label(mounted):
    """A writer whose name is replaced by rename(2) writes to the replaced
    file, as on any filesystem: its close must not invent a new label."""
    m = mounted
    sid, mdir, bdir = fresh(m)
    inc = mdir / "incoming"
    (inc / "a").write_bytes(b"new content from a")
    (inc / "b").write_bytes(b"old b")
    w = open(inc / "b", "r+b")
    try:
        w.write(b"written by the writer of b")
        w.flush()
        os.rename(inc / "a", inc / "b")
    finally:
        w.close()
    assert sorted(labels_of(m, sid, bdir)) == ["b"], labels_of(m, sid, bdir)
    assert sorted(os.listdir(inc)) == ["b"]
    assert committed(m, sid, bdir, "b") == b"new content from a"


# ------------------------------------------------------------- attributes


def test_chmod_and_utime_are_kept(mounter):
    m = mounter()
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "f"
    p.write_bytes(b"attrs")
    os.chmod(p, 0o600)
    os.utime(p, ns=(1_234_567_890_111_111_111, 1_111_111_111_222_222_222))
    st = os.stat(p)
    assert st.st_mode & 0o7777 == 0o600
    assert st.st_mtime_ns == 1_111_111_111_222_222_222
    assert out("stat", "-c", "%a %Y", p) == "600 1111111111"
    run("chmod", "755", p)
    run("touch", "-m", "-d", "@1000000000.5", p)
    st = os.stat(p)
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o755, 1_000_000_000_500_000_000)
    # Before 1970 too (a quarter second before a second before the epoch).
    run("touch", "-m", "-d", "@-1.25", p)
    assert os.stat(p).st_mtime_ns == -1_250_000_000
    assert out("stat", "-c", "%.2Y", p) == "-1.25"
    os.utime(p, ns=(0, 1_000_000_000_500_000_000))
    # Set while open for writing, kept through the commit at close.
    with open(mdir / "incoming" / "g", "wb") as f:
        f.write(b"g content")
        f.flush()
        os.fchmod(f.fileno(), 0o640)
        os.utime(f.fileno(), ns=(1_300_000_000_000_000_000, 1_300_000_000_000_000_001))
    st = os.stat(mdir / "incoming" / "g")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_300_000_000_000_000_001)
    assert committed(m, sid, bdir, "g") == b"g content"
    # Kept per label, across a new version of the content and a remount.
    p.write_bytes(b"new content keeps the mode")
    assert os.stat(p).st_mode & 0o7777 == 0o755
    m.unmount()
    m2 = mounter(root=m.root, mnt=m.mnt)
    st = os.stat(m2.mnt / sid / "incoming" / "g")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 1_300_000_000_000_000_001)
    assert os.stat(m2.mnt / sid / "incoming" / "f").st_mode & 0o7777 == 0o755


def test_unprivileged_write_clears_set_id_bits(mounted):
    """As on a local filesystem, a write, a truncation or a truncating open
    by a process without CAP_FSETID clears set-user-ID, and set-group-ID
    when the group may execute; root keeps them.  (The kernel leaves this
    to casfs: FUSE_HANDLE_KILLPRIV_V2, see fs/kio.c.)  Checked at once
    through the mount, and in the store after close."""
    setpriv = require_tool("setpriv")
    sid, mdir, bdir = fresh(mounted)
    p = mdir / "incoming" / "x"
    p.write_bytes(b"x")

    def as_unprivileged(shell):
        run(setpriv, "--bounding-set=-fsetid", "--inh-caps=-fsetid", "sh", "-c", shell, "sh", p)

    cases = [
        (0o4755, 'printf y >> "$1"', 0o755),        # write
        (0o6755, ': > "$1"', 0o755),                # open(O_TRUNC)
        (0o6755, 'truncate -s 1 "$1"', 0o755),      # truncate(2)
        (0o2745, 'printf z >> "$1"', 0o2745),       # set-group-ID of a group that cannot execute: kept
        (0o4700, 'printf w >> "$1"', 0o700),
    ]
    for before, shell, after in cases:
        os.chmod(p, before)
        as_unprivileged(shell)
        assert oct(os.stat(p).st_mode & 0o7777) == oct(after), (oct(before), shell)
        if bdir is not None:
            assert oct((bdir / "labels" / "x").stat().st_mode & 0o7777) == oct(after), (oct(before), shell)
    # With CAP_FSETID (root as it is), a write keeps them.
    os.chmod(p, 0o6755)
    with open(p, "ab") as f:
        f.write(b"root")
    assert oct(os.stat(p).st_mode & 0o7777) == oct(0o6755)
    assert committed(mounted, sid, bdir, "x").endswith(b"root")


def test_cp_r_of_a_tree(mounted, tmp_path):
    m = mounted
    sid, mdir, bdir = fresh(m)
    src = tmp_path / "src"
    files = make_tree(src)
    run("cp", "-r", src, mdir / "incoming" / "tree")
    check_tree_in_store(m, sid, bdir, "tree", files)
    for rel, body in files.items():
        assert (mdir / "incoming" / "tree" / rel).read_bytes() == body
        assert (mdir / "labels" / "tree" / rel).read_bytes() == body
    p = run("diff", "-r", src, mdir / "incoming" / "tree")
    assert p.stdout == b""


def test_cp_a_preserves_mode_and_mtime(mounted, tmp_path):
    m = mounted
    sid, mdir, bdir = fresh(m)
    src = tmp_path / "src"
    files = make_tree(src)
    p = run("cp", "-a", src, mdir / "incoming" / "tree")
    assert p.stderr == b""
    check_tree_in_store(m, sid, bdir, "tree", files)
    compare_trees(src, mdir / "incoming" / "tree")
    # And a single file into an existing name.
    run("cp", "-a", src / "bin" / "tool", mdir / "incoming" / "README-replaced")
    st = os.stat(mdir / "incoming" / "README-replaced")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o755, os.stat(src / "bin" / "tool").st_mtime_ns)


def test_rsync_a_of_a_tree(mounted, tmp_path):
    m = mounted
    require_tool("rsync")
    sid, mdir, bdir = fresh(m)
    src = tmp_path / "src"
    files = make_tree(src)
    dst = mdir / "incoming" / "mirror"
    run("rsync", "-a", f"{src}/", f"{dst}/")
    check_tree_in_store(m, sid, bdir, "mirror", files)
    compare_trees(src, dst)
    # A second run finds nothing to do and still succeeds.
    p = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/")
    assert p.stdout.strip() == b"", p.stdout
    # An update travels, into the same label.
    (src / "doc" / "a" / "b" / "deep.txt").write_bytes(b"updated\n")
    files["doc/a/b/deep.txt"] = b"updated\n"
    run("rsync", "-a", f"{src}/", f"{dst}/")
    check_tree_in_store(m, sid, bdir, "mirror", files)
    compare_trees(src, dst)
    # And back out of the mount.
    back = tmp_path / "back"
    run("rsync", "-a", f"{dst}/", f"{back}/")
    compare_trees(src, back)


def test_tar_x_into_incoming(mounted, tmp_path):
    m = mounted
    sid, mdir, bdir = fresh(m)
    src = tmp_path / "src"
    files = make_tree(src)
    arch = tmp_path / "tree.tar"
    run("tar", "-C", src, "-cf", arch, ".")
    os.mkdir(mdir / "incoming" / "x")
    p = run("tar", "-C", mdir / "incoming" / "x", "-xf", arch)
    assert p.stderr == b""
    check_tree_in_store(m, sid, bdir, "x", files)
    compare_trees(src, mdir / "incoming" / "x", mtime_ns=False)
    # Extracting again over the same names succeeds too.
    run("tar", "-C", mdir / "incoming" / "x", "-xf", arch)
    check_tree_in_store(m, sid, bdir, "x", files)
    # And tar reads the tree back out through the mount.
    listing = out("tar", "-tvf", arch)
    arch2 = tmp_path / "back.tar"
    run("tar", "-C", mdir / "labels" / "x", "-chf", arch2, ".")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "-C", back, "-xf", arch2)
    for rel, body in files.items():
        assert (back / rel).read_bytes() == body, rel
    assert listing


# ------------------------------------------------------------ concurrency


def test_concurrent_writers_leave_one_complete_version(mounted):
    m = mounted
    sid, mdir, bdir = fresh(m)
    p = mdir / "incoming" / "contended"
    n, size, chunk = 8, 512 * 1024, 32 * 1024
    every = set()
    for rnd in range(3):
        bodies = [bytes([65 + k]) * 1000 + os.urandom(size) for k in range(n)]
        every.update(bodies)
        barrier = threading.Barrier(n)
        errors = []

        def writer(k):
            try:
                barrier.wait(timeout=30)
                with open(p, "wb") as f:
                    body = bodies[k]
                    for off in range(0, len(body), chunk):
                        f.write(body[off:off + chunk])
                        f.flush()
            except Exception as e:  # reported below
                errors.append(f"writer {k}: {e!r}")

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        got = committed(m, sid, bdir, "contended")
        assert got in bodies, f"round {rnd}: the label holds none of the {n} versions (size {len(got or b'')})"
        assert p.read_bytes() == got
        assert os.getxattr(p, "user.casfs.hash") == sha256(got).encode()
        # Every version that reached data/ is complete.
        for d, blob in blobs_of(m, sid, bdir).items():
            assert blob in every, f"round {rnd}: blob {d} is no writer's full content"
    if bdir is not None:
        assert staging_files(bdir) == []
    m.casfs.run("fsck", sid)
