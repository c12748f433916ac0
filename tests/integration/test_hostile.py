"""Hostile input (SPEC §2, §5): a backing root where someone planted
symlinks or swapped directories, symlink targets that try to escape, and
garbage label files.  casfs must never follow a planted symlink, must give
a clear error for the damaged name only, and must change nothing.  Tests
that plant files in the backing directory run on the dir backend only;
refused symlink targets and names are checked on every backend."""
import errno
import os
import subprocess

import pytest

from fuse_util import cli_labels, how, mounted, mounter, sha256  # noqa: F401


def snapshot(root):
    """Every path under root with its kind and content (symlink targets,
    file bytes), to check that a refusal changed nothing."""
    res = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if "/.casfs/journal" in "/" + rel or rel.endswith("/.casfs/lock") or "/.casfs/sessions" in "/" + rel:
                continue  # bookkeeping: the journal records refusals by design
            if os.path.islink(p):
                res[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                res[rel] = ("dir", None)
            else:
                with open(p, "rb") as f:
                    res[rel] = ("file", f.read())
    return res


def root_state(m):
    """What the mount's root holds: snapshot() of the backing directory,
    or for a rados: root every store's labels and blobs (through the
    command)."""
    if not m.remote:
        return snapshot(m.root)
    return {sid: (cli_labels(m.casfs, sid), m.casfs.out("list-all-content", sid))
            for sid in m.casfs.out("stores").splitlines()}


@pytest.fixture
def victim(tmp_path):
    """A file outside the root that planted symlinks point at."""
    v = tmp_path / "outside" / "secret"
    v.parent.mkdir()
    v.write_bytes(b"must never be read or written through casfs\n")
    return v


@pytest.mark.dir_only  # plants files in the backing directory
def test_command_does_not_follow_planted_symlinks(casfs, store, victim, tmp_path):
    f = tmp_path / "c"
    f.write_bytes(b"content")
    digest = casfs.out("store-at-label", store, "good", f)
    sdir = casfs.root / store
    os.symlink(victim, sdir / "labels" / "evil")                 # a label that is a symlink
    os.symlink(victim.parent, sdir / "labels" / "evildir")       # a label dir that is one
    fake = "ab" * 32
    os.symlink(victim, sdir / "data" / fake)                     # a blob that is one
    os.symlink(victim.parent, casfs.root / "linkstore")          # a store that is one
    before = snapshot(casfs.root)
    outside_before = victim.read_bytes()

    p = casfs.run("get-by-label", store, "evil", expect=3)
    assert b"symlink" in p.stderr
    casfs.run("get-by-label", store, "evildir/x", expect=1)      # not followed: no such label
    casfs.run("label", store, "evildir/x", digest, expect=3)     # nor created through it
    p = casfs.run("get", store, fake, expect=3)
    assert p.stdout == b""
    casfs.run("exists", store, fake, expect=3)
    casfs.run("list-labels", store, "linkstore", root=True, expect=2)
    casfs.run("get-by-label", "linkstore", "secret", expect=3)
    assert "linkstore" not in casfs.out("stores").split()
    # Listing skips what is not a label or a blob; the good label is there.
    assert casfs.out("list-labels", store).split() == ["good"]
    assert casfs.out("list-all-content", store).split() == [digest]
    # gc must not delete through a symlink, fsck reports the stray.
    casfs.run("gc", "--grace", "0", store)
    p = casfs.run("fsck", store, expect=1)
    assert b"stray-file" in p.stdout or b"bad-blob" in p.stdout or b"bad-label" in p.stdout
    assert victim.read_bytes() == outside_before
    after = snapshot(casfs.root)
    assert after == before


@pytest.mark.dir_only  # plants files in the backing directory
def test_swapped_directory_after_open_is_not_followed(casfs, store, victim, tmp_path):
    """labels/ replaced by a symlink to another directory: the command
    refuses to use it rather than writing there."""
    sdir = casfs.root / store
    os.rename(sdir / "labels", sdir / "labels.moved")
    os.symlink(victim.parent, sdir / "labels")
    f = tmp_path / "c"
    f.write_bytes(b"x")
    casfs.run("store-at-label", store, "planted", f, expect=3)
    assert sorted(os.listdir(victim.parent)) == ["secret"]
    os.unlink(sdir / "labels")
    os.symlink(victim.parent, sdir / ".casfs" / "staging.tmp")
    os.rename(sdir / ".casfs" / "staging", sdir / ".casfs" / "staging.old")
    os.rename(sdir / ".casfs" / "staging.tmp", sdir / ".casfs" / "staging")
    casfs.run("store", store, f, expect=3)                       # staging is a symlink: refused
    assert sorted(os.listdir(victim.parent)) == ["secret"]


@pytest.mark.dir_only  # plants files in the backing directory
def test_mount_does_not_follow_planted_symlinks(mounted, victim):
    m = mounted
    sid = m.casfs.out("new")
    (m.mnt / sid / "incoming" / "good").write_bytes(b"good")
    sdir = m.root / sid
    os.symlink(victim, sdir / "labels" / "evil")
    os.symlink(victim.parent, sdir / "labels" / "evildir")
    fake = "cd" * 32
    os.symlink(victim, sdir / "data" / fake)
    mdir = m.mnt / sid
    with pytest.raises(OSError) as e:
        os.stat(mdir / "incoming" / "evil")
    assert e.value.errno == errno.EIO                          # that label only
    with pytest.raises(OSError) as e:
        os.readlink(mdir / "labels" / "evil")
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        os.stat(mdir / "labels" / "evildir")                   # not a label directory
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        (mdir / "incoming" / "evildir" / "secret").read_bytes()
    assert e.value.errno in (errno.ENOENT, errno.EIO)
    with pytest.raises(OSError) as e:
        (mdir / "data" / fake).read_bytes()
    assert e.value.errno in (errno.ENOENT, errno.EIO)
    # Writing through a planted label directory is refused.
    with pytest.raises(OSError):
        (mdir / "incoming" / "evildir" / "new").write_bytes(b"x")
    assert sorted(os.listdir(victim.parent)) == ["secret"]
    assert victim.read_bytes() == b"must never be read or written through casfs\n"
    # Other labels are unaffected.
    assert (mdir / "labels" / "good").read_bytes() == b"good"
    m.expect_log("error")


@pytest.mark.parametrize("target", [
    "/etc/passwd", "../../../etc/passwd", "../data/../../x", "../data/", "../data/" + "A" * 64,
    "../data/" + "0" * 63, "./../data/" + "0" * 64, "../../data/" + "0" * 64, "",
])
def test_escaping_symlink_targets_are_refused(mounted, target):
    m = mounted
    sid = m.casfs.out("new")
    before = root_state(m)
    with pytest.raises(OSError) as e:
        os.symlink(target, m.mnt / sid / "labels" / "x")
    assert e.value.errno in (errno.EINVAL, errno.ENOENT), e.value
    assert root_state(m) == before
    assert os.listdir(m.mnt / sid / "labels") == []


def test_another_stores_blob_is_not_a_target(mounted):
    m = mounted
    a, b = m.casfs.out("new"), m.casfs.out("new")
    (m.mnt / a / "incoming" / "f").write_bytes(b"only in a")
    d = sha256(b"only in a")
    with pytest.raises(OSError) as e:
        os.symlink(f"../data/{d}", m.mnt / b / "labels" / "x")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        os.symlink(f"../../{a}/data/{d}", m.mnt / b / "labels" / "x")
    assert e.value.errno == errno.EINVAL


@pytest.mark.dir_only  # plants files in the backing directory
def test_garbage_and_huge_label_files_fail_alone(mounted):
    m = mounted
    sid = m.casfs.out("new")
    mdir, sdir = m.mnt / sid, m.root / sid
    (mdir / "incoming" / "good").write_bytes(b"fine")
    (sdir / "labels" / "garbage").write_bytes(b"\x00\xffnot a digest\n")
    (sdir / "labels" / "huge").write_bytes(b"a" * (1 << 20))
    for name in ("garbage", "huge"):
        with pytest.raises(OSError) as e:
            (mdir / "incoming" / name).read_bytes()
        assert e.value.errno == errno.EIO
        m.casfs.run("get-by-label", sid, name, expect=3)
    assert (mdir / "incoming" / "good").read_bytes() == b"fine"
    assert sorted(os.listdir(mdir / "labels")) == ["garbage", "good", "huge"]
    m.expect_log("error")


@pytest.mark.dir_only  # plants files in the backing directory
def test_label_file_with_a_digest_then_nul_and_junk_is_refused(casfs, store, tmp_path):
    """Found by fuzz_label_file: a digest followed by a NUL and more bytes
    overflowed the caller's buffer; it must be an invalid label."""
    f = tmp_path / "c"
    f.write_bytes(b"content")
    d = casfs.out("store", store, f)
    (casfs.root / store / "labels" / "junk").write_bytes(d.encode() + b"\0" + b"A" * 4000)
    p = casfs.run("get-by-label", store, "junk", expect=3)
    assert b"does not hold" in p.stderr
    assert casfs.run("fsck", store, expect=1).stdout.startswith(b"bad-label")


@pytest.mark.dir_only  # plants files in the backing directory
def test_white_space_only_label_is_no_label_everywhere(mounted):
    """Found by fuzz_label_file: a label file of white space alone is "no
    label" for get, and must be for list-labels and the mount's listing."""
    m = mounted
    sid = m.casfs.out("new")
    (m.mnt / sid / "incoming" / "real").write_bytes(b"x")
    (m.root / sid / "labels" / "blank").write_bytes(b" \n")
    (m.root / sid / "labels" / "blank65").write_bytes(b"\n" * 100)
    assert m.casfs.out("list-labels", sid).split() == ["real"]
    m.casfs.run("get-by-label", sid, "blank", expect=1)
    assert sorted(os.listdir(m.mnt / sid / "labels")) == ["real"]
    assert sorted(os.listdir(m.mnt / sid / "incoming")) == ["real"]


def test_journal_lines_stay_json_for_names_that_are_not_utf8(casfs, store, tmp_path):
    """Found by fuzz_journal: label names are any bytes but NUL, the journal
    is JSON, which is UTF-8."""
    import json
    f = tmp_path / "c"
    f.write_bytes(b"content")
    name = b"caf\xe9/" + "é".encode() * 100 + b"\xff"
    p = subprocess.run([casfs.exe, *casfs.root_args(), "store-at-label", store, name, str(f)],
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    subprocess.run([casfs.exe, *casfs.root_args(), "replace-at-label", store,
                    b"caf\xe9/" + "é".encode() * 120, "0" * 64], capture_output=True)
    raw = casfs.run("events", store).stdout
    for line in raw.splitlines():
        json.loads(line.decode("utf-8"))  # strict: raises on invalid UTF-8 or JSON
    assert b"caf\\u00e9/" in raw
