"""The filesystem's shape (SPEC §4): the root lists stores, mkdir/rmdir make
and remove them, data/ serves blobs read-only, the digest is an xattr,
changes made by the command show up, a Theater store mounts as it is, and
the daemon leaves cleanly on umount.  Every result is checked through the
mount and the command, and on the dir backend in the backing directory too."""
import errno
import os
import re
import stat
import uuid

import pytest

from fuse_util import (backing_blobs, backing_labels, cli_blobs, cli_labels, expect_errno, how,  # noqa: F401
                       mounted, mounter, out, poll, require_tool, run, sha1, sha256, staging_files)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(rb"^[0-9a-f]{40}$")


def test_mountinfo_and_root_lists_stores(mounted):
    m = mounted
    a = m.casfs.out("new")
    b = m.casfs.out("new", "named-store")
    os.mkdir(m.mnt / "by-mkdir")
    want = sorted([a, b, "by-mkdir"])
    assert sorted(os.listdir(m.mnt)) == want
    assert out("ls", "-1", m.mnt).splitlines() == want
    if not m.remote:
        assert sorted(p.name for p in m.root.iterdir()) == want
    for sid in want:
        assert sorted(os.listdir(m.mnt / sid)) == ["data", "incoming", "labels"]
        assert stat.S_ISDIR(os.stat(m.mnt / sid).st_mode)
    assert m.casfs.out("stores").splitlines() == want
    # mountinfo was checked by the fixture (fstype, source); statfs works.
    assert os.statvfs(m.mnt).f_bsize > 0


def test_mkdir_makes_sha256_store(mounted):
    m = mounted
    os.mkdir(m.mnt / "fresh")
    if not m.remote:
        assert (m.root / "fresh" / ".casfs").is_dir()
    assert m.casfs.out("stores").splitlines() == ["fresh"]
    assert "algorithm sha256" in m.casfs.out("stats", "fresh").splitlines()
    assert os.listdir(m.mnt / "fresh" / "data") == []
    assert os.listdir(m.mnt / "fresh" / "labels") == []
    with open(m.mnt / "fresh" / "incoming" / "f", "wb") as f:
        f.write(b"some bytes")
    d = m.casfs.out("get-by-label", "fresh", "f")
    assert d == sha256(b"some bytes")
    if not m.remote:
        assert (m.root / "fresh" / "labels" / "f").read_text() == d
    assert os.listdir(m.mnt / "fresh" / "data") == [d]


def test_rmdir_removes_empty_store_and_refuses_non_empty(mounted):
    m = mounted
    os.mkdir(m.mnt / "empty")
    os.mkdir(m.mnt / "full")
    (m.mnt / "full" / "incoming" / "x").write_bytes(b"content")
    p = run("rmdir", m.mnt / "full", expect=1)
    assert b"Directory not empty" in p.stderr
    expect_errno(errno.ENOTEMPTY, os.rmdir, m.mnt / "full")
    assert m.casfs.out("list-labels", "full") == "x"
    if not m.remote:
        assert (m.root / "full" / "labels" / "x").is_file()
    run("rmdir", m.mnt / "empty")
    if not m.remote:
        assert not (m.root / "empty").exists()
    assert sorted(os.listdir(m.mnt)) == ["full"]
    assert m.casfs.out("stores") == "full"
    # A store that holds only an unlabelled blob is not empty either.
    os.unlink(m.mnt / "full" / "incoming" / "x")
    assert m.casfs.out("list-labels", "full") == ""
    assert m.casfs.out("list-all-content", "full") == sha256(b"content")
    if not m.remote:
        assert backing_labels(m.root / "full") == {}
    run("rmdir", m.mnt / "full", expect=1)
    assert m.casfs.out("stores") == "full"
    if not m.remote:
        assert (m.root / "full").is_dir()


def test_data_blobs_are_0444_and_read_correctly(mounted, tmp_path):
    m = mounted
    sid = m.casfs.out("new")
    small = b"hello, blob\n"
    big = os.urandom((1 << 20) + 3)
    src = tmp_path / "big"
    src.write_bytes(big)
    ds = m.casfs.out("store", sid, input=small)
    db = m.casfs.out("store", sid, src)
    assert (ds, db) == (sha256(small), sha256(big))
    data = m.mnt / sid / "data"
    assert sorted(os.listdir(data)) == sorted([ds, db])
    listing = out("ls", "-l", data).splitlines()[1:]  # after "total N"
    assert len(listing) == 2
    for line in listing:
        fields = line.split()
        assert fields[0] == "-r--r--r--", line
        name = fields[-1]
        assert int(fields[4]) == len(small if name == ds else big), line
    assert out("stat", "-c", "%a %s %F", data / ds) == f"444 {len(small)} regular file"
    assert out("stat", "-c", "%a %F", data) == "555 directory"
    assert run("cat", data / ds).stdout == small
    assert run("cat", data / db).stdout == big
    # The store (and on the dir backend the backing directory) holds the
    # same raw bytes.
    assert cli_blobs(m.casfs, sid) == {ds: small, db: big}
    if not m.remote:
        assert backing_blobs(m.root / sid) == {ds: small, db: big}
    # Reads at offsets, twice (the second from the kept page cache).
    for _ in range(2):
        with open(data / db, "rb") as f:
            f.seek(12345)
            assert f.read(1000) == big[12345:13345]
            f.seek(len(big) - 10)
            assert f.read() == big[-10:]
    # Blobs stored behind the mount's back show up in data/.
    dn = m.casfs.out("store", sid, input=b"later")
    assert (data / dn).read_bytes() == b"later"


def test_file_written_in_incoming_appears_everywhere(mounted, tmp_path):
    m = mounted
    sid = m.casfs.out("new")
    content = os.urandom(300_000)
    src = tmp_path / "src"
    src.write_bytes(content)
    run("cp", src, m.mnt / sid / "incoming" / "doc")
    d = sha256(content)
    assert cli_labels(m.casfs, sid) == {"doc": d}
    assert m.casfs.run("get", sid, d).stdout == content
    if not m.remote:
        # Backing: label file holds the digest (no newline), blob the bytes.
        assert (m.root / sid / "labels" / "doc").read_bytes() == d.encode()
        assert (m.root / sid / "data" / d).read_bytes() == content
    # Mount: a symlink in labels/, a blob in data/, a file in incoming/.
    assert os.readlink(m.mnt / sid / "labels" / "doc") == f"../data/{d}"
    assert out("readlink", m.mnt / sid / "labels" / "doc") == f"../data/{d}"
    line = out("ls", "-l", m.mnt / sid / "labels")
    assert re.search(rf"^l\S+ .* doc -> \.\./data/{d}$", line, re.M), line
    assert run("cat", m.mnt / sid / "labels" / "doc").stdout == content
    assert run("cat", m.mnt / sid / "incoming" / "doc").stdout == content
    assert run("cat", m.mnt / sid / "data" / d).stdout == content
    assert out("stat", "-c", "%s %F", m.mnt / sid / "incoming" / "doc") == f"{len(content)} regular file"
    assert m.casfs.out("get-by-label", sid, "doc") == d
    if not m.remote:
        assert staging_files(m.root / sid) == []


def test_hash_xattr_on_data_labels_and_incoming(mounted):
    m = mounted
    require_tool("getfattr")
    sid = m.casfs.out("new")
    content = b"xattr me"
    d = sha256(content)
    (m.mnt / sid / "incoming" / "n").write_bytes(content)
    os.mkdir(m.mnt / sid / "labels" / "dir")
    os.symlink(f"../../data/{d}", m.mnt / sid / "labels" / "dir" / "nested")
    for rel in (f"data/{d}", "labels/n", "incoming/n", "labels/dir/nested", "incoming/dir/nested"):
        p = m.mnt / sid / rel
        assert out("getfattr", "--only-values", "-n", "user.casfs.hash", p) == d, rel
        assert os.getxattr(p, "user.casfs.hash") == d.encode(), rel
    # listed by getfattr -d
    dump = out("getfattr", "-d", m.mnt / sid / "incoming" / "n")
    assert f'user.casfs.hash="{d}"' in dump
    assert "user.casfs.hash" in os.listxattr(m.mnt / sid / "data" / d)


def test_label_set_by_the_command_shows_within_a_second(mounted):
    m = mounted
    sid = m.casfs.out("new")
    d1 = m.casfs.out("store", sid, input=b"first version")
    d2 = m.casfs.out("store", sid, input=b"second, longer version")
    lbl = m.mnt / sid / "labels" / "cmd"
    inc = m.mnt / sid / "incoming" / "cmd"
    assert not os.path.lexists(lbl)
    m.casfs.run("label", sid, "cmd", d1)
    poll(lambda: os.path.lexists(lbl) and os.readlink(lbl) == f"../data/{d1}", 1.0,
         "new label made by the command")
    assert inc.read_bytes() == b"first version"
    # A change of a label the kernel already knows.
    m.casfs.run("replace-at-label", sid, "cmd", d2)
    poll(lambda: os.readlink(lbl) == f"../data/{d2}" and inc.read_bytes() == b"second, longer version",
         1.0, "changed label made by the command")
    assert os.getxattr(inc, "user.casfs.hash") == d2.encode()
    m.casfs.run("remove-label", sid, "cmd")
    poll(lambda: not os.path.lexists(lbl) and not os.path.lexists(inc), 1.0, "label removed by the command")
    assert "cmd" not in os.listdir(m.mnt / sid / "labels")


def test_umount_ends_daemon_with_status_0(mounted):
    m = mounted
    os.mkdir(m.mnt / "s")
    (m.mnt / "s" / "incoming" / "f").write_bytes(b"before umount")
    require_tool("umount")
    m.unmount(["umount", str(m.mnt)])  # asserts exit status 0
    assert m.casfs.out("get-by-label", "s", "f") == sha256(b"before umount")
    if not m.remote:
        assert (m.root / "s" / "labels" / "f").read_text() == sha256(b"before umount")
        assert staging_files(m.root / "s") == []
    m.casfs.run("fsck", "s")


@pytest.mark.dir_only  # a Theater store is a directory layout
def test_theater_store_mounts_reads_and_writes_its_format(mounter, tmp_path):
    root = tmp_path / "root"
    sid = str(uuid.uuid4())
    sdir = root / sid
    (sdir / "data").mkdir(parents=True)
    (sdir / "labels" / "projects").mkdir(parents=True)
    blobs = {b"alpha content": None, b"beta\ncontent\n": None, b"": None}
    for b in blobs:
        blobs[b] = sha1(b)
        (sdir / "data" / sha1(b)).write_bytes(b)
    (sdir / "labels" / "main").write_bytes(sha1(b"alpha content").encode())
    (sdir / "labels" / "projects" / "cfg").write_bytes(sha1(b"beta\ncontent\n").encode())
    (sdir / "labels" / "ws").write_bytes(sha1(b"").encode() + b"\n")  # trailing whitespace is read
    assert not (sdir / ".casfs").exists()

    m = mounter(root=root)
    mdir = m.mnt / sid
    assert os.listdir(m.mnt) == [sid]
    assert sorted(os.listdir(mdir / "data")) == sorted(blobs.values())
    assert os.readlink(mdir / "labels" / "main") == "../data/" + sha1(b"alpha content")
    assert os.readlink(mdir / "labels" / "projects" / "cfg") == "../../data/" + sha1(b"beta\ncontent\n")
    assert os.readlink(mdir / "labels" / "ws") == "../data/" + sha1(b"")
    assert (mdir / "incoming" / "main").read_bytes() == b"alpha content"
    assert run("cat", mdir / "labels" / "projects" / "cfg").stdout == b"beta\ncontent\n"
    assert os.getxattr(mdir / "labels" / "main", "user.casfs.hash") == sha1(b"alpha content").encode()

    new = b"written through the mount\n"
    with open(mdir / "incoming" / "projects" / "new", "wb") as f:
        f.write(new)
    raw = (sdir / "labels" / "projects" / "new").read_bytes()
    assert HEX40.match(raw) and raw == sha1(new).encode(), raw  # 40 hex, no newline
    assert (sdir / "data" / sha1(new)).read_bytes() == new
    assert os.readlink(mdir / "labels" / "projects" / "new") == "../../data/" + sha1(new)
    # Replacing a label rewrites it in the same format.
    (mdir / "incoming" / "ws").write_bytes(b"replaced")
    assert (sdir / "labels" / "ws").read_bytes() == sha1(b"replaced").encode()
    # Theater sees only finished files in data/ and labels/.
    for f in (sdir / "data").iterdir():
        assert f.is_file() and sha1(f.read_bytes()) == f.name
    for f in (sdir / "labels").rglob("*"):
        assert f.is_dir() or HEX40.match(f.read_bytes()), f
    assert sorted(p.name for p in sdir.iterdir()) in (["data", "labels"], [".casfs", "data", "labels"])
    m.unmount()
    assert "algorithm sha1" in m.casfs.out("stats", sid).splitlines()
    m.casfs.run("fsck", sid)
