"""Theater compatibility (SPEC §2): a store directory made byte for byte the
way the Theater runtime makes it is read and written by casfs as it is, and
what casfs writes is what Theater reads."""
import hashlib
import os
import pathlib
import random
import re
import uuid

import pytest

# The Theater layout is a directory layout: a rados: root has none (casfs(7)).
pytestmark = pytest.mark.dir_only

HEX40 = re.compile(rb"^[0-9a-f]{40}$")


def sha1(b):
    return hashlib.sha1(b).hexdigest()


def tree(d):
    """Every path under d (relative) -> bytes for files, None for dirs."""
    d = pathlib.Path(d)
    out = {}
    if not d.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames:
            out[(pathlib.Path(dirpath) / name).relative_to(d).as_posix()] = None
        for name in filenames:
            p = pathlib.Path(dirpath) / name
            out[p.relative_to(d).as_posix()] = p.read_bytes()
    return out


def theater_view(store_dir):
    """What Theater sees: every regular file in data/ (name -> bytes) and
    every regular file in labels/, trimmed, empty meaning no label."""
    store_dir = pathlib.Path(store_dir)
    data, labels = {}, {}
    ddir, ldir = store_dir / "data", store_dir / "labels"
    if ddir.is_dir():
        for f in ddir.iterdir():
            if f.is_file():
                data[f.name] = f.read_bytes()
    if ldir.is_dir():
        for f in ldir.rglob("*"):
            if f.is_file():
                text = f.read_text().strip()
                if text:
                    labels[f.relative_to(ldir).as_posix()] = text
    return data, labels


CONTENTS = {
    "alpha": b"alpha content",
    "beta": b"beta\ncontent\n",
    "empty": b"",
    "binary": random.Random(5).randbytes(200_000),
    "unlabelled": b"nobody points here",
}


class Theater:
    """A store laid out as Theater lays it out."""

    def __init__(self, root, data=True, labels=True):
        self.root = pathlib.Path(root)
        self.id = str(uuid.uuid4())
        self.dir = self.root / self.id
        self.dir.mkdir(parents=True)
        self.digest = {k: sha1(v) for k, v in CONTENTS.items()}
        self.labels = {}
        if data:
            (self.dir / "data").mkdir()
            for v in CONTENTS.values():
                (self.dir / "data" / sha1(v)).write_bytes(v)
        if labels:
            (self.dir / "labels").mkdir()
            self.put_label("main", self.digest["alpha"].encode())
            self.put_label("projects/theater/config", self.digest["beta"].encode())
            self.put_label("projects/empty-blob", self.digest["empty"].encode())
            self.put_label("with-newline", self.digest["binary"].encode() + b"\n")
            self.put_label("with-spaces", self.digest["alpha"].encode() + b"  \t\n")
            self.put_label("cleared", b"")  # empty: no label

    def put_label(self, name, raw):
        p = self.dir / "labels" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(raw)
        text = raw.decode().strip()
        if text:
            self.labels[name] = text


def assert_one_message(p):
    lines = p.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("casfs: "), lines


# ------------------------------------------------------------------ reading


def test_reads_theater_store_without_conversion(casfs):
    t = Theater(casfs.root)
    assert not (t.dir / ".casfs").exists()
    before = tree(casfs.root)

    assert casfs.out("stores") == t.id
    assert casfs.out("list-labels", t.id).splitlines() == sorted(t.labels)
    for name, hexd in t.labels.items():
        p = casfs.run("get-by-label", t.id, name)
        assert p.stdout == (hexd + "\n").encode(), name
    for key, content in CONTENTS.items():
        assert casfs.run("get", t.id, t.digest[key]).stdout == content, key
        casfs.run("exists", t.id, t.digest[key], expect=0)
    casfs.run("exists", t.id, sha1(b"not there"), expect=1)
    assert casfs.out("list-all-content", t.id).splitlines() == sorted(t.digest.values())
    assert casfs.out("calculate-total-size", t.id) == str(sum(map(len, CONTENTS.values())))
    assert "algorithm sha1" in casfs.out("stats", t.id).splitlines()
    casfs.run("fsck", t.id, expect=0)

    assert tree(casfs.root) == before  # reading converted nothing


def test_label_with_trailing_whitespace_is_read(casfs):
    t = Theater(casfs.root)
    assert casfs.out("get-by-label", t.id, "with-newline") == t.digest["binary"]
    assert casfs.out("get-by-label", t.id, "with-spaces") == t.digest["alpha"]


def test_empty_label_file_means_no_label(casfs):
    t = Theater(casfs.root)
    p = casfs.run("get-by-label", t.id, "cleared", expect=1)
    assert p.stdout == b""
    assert "cleared" not in casfs.out("list-labels", t.id).splitlines()


def test_theater_store_without_data_dir(casfs):
    t = Theater(casfs.root, data=False)
    before = tree(casfs.root)
    assert casfs.out("stores") == t.id
    assert casfs.run("list-all-content", t.id).stdout == b""
    assert casfs.out("calculate-total-size", t.id) == "0"
    casfs.run("exists", t.id, t.digest["alpha"], expect=1)
    assert casfs.out("list-labels", t.id).splitlines() == sorted(t.labels)
    assert casfs.out("get-by-label", t.id, "main") == t.digest["alpha"]
    p = casfs.run("get", t.id, t.digest["alpha"], expect=3)
    assert p.stdout == b""
    assert_one_message(p)
    assert tree(casfs.root) == before


def test_theater_store_without_labels_dir(casfs):
    t = Theater(casfs.root, labels=False)
    before = tree(casfs.root)
    assert casfs.run("list-labels", t.id).stdout == b""
    p = casfs.run("get-by-label", t.id, "main", expect=1)
    assert p.stdout == b""
    assert casfs.out("list-all-content", t.id).splitlines() == sorted(t.digest.values())
    assert casfs.run("get", t.id, t.digest["beta"]).stdout == CONTENTS["beta"]
    assert tree(casfs.root) == before


def test_theater_store_with_neither_dir(casfs):
    t = Theater(casfs.root, data=False, labels=False)
    assert casfs.out("stores") == t.id
    assert casfs.run("list-labels", t.id).stdout == b""
    assert casfs.run("list-all-content", t.id).stdout == b""
    assert casfs.out("calculate-total-size", t.id) == "0"
    assert list(t.dir.iterdir()) == []


# ------------------------------------------------------------------ writing


def assert_only_finished_files(store_dir, algo_len=40):
    """data/ holds only blobs named by their sha1, labels/ only label files
    holding a digest with no newline (and label directories)."""
    for f in (store_dir / "data").iterdir():
        assert f.is_file() and not f.is_symlink(), f
        assert re.fullmatch(r"[0-9a-f]{%d}" % algo_len, f.name), f.name
        assert sha1(f.read_bytes()) == f.name, f.name
    for f in (store_dir / "labels").rglob("*"):
        assert not f.is_symlink(), f
        assert not f.name.startswith("."), f
        assert f.is_dir() or f.is_file(), f


def test_writes_into_theater_store_in_its_format(casfs, tmp_path):
    t = Theater(casfs.root)
    data_before, labels_before = tree(t.dir / "data"), tree(t.dir / "labels")

    new = b"written by casfs into a theater store\n"
    src = tmp_path / "new"
    src.write_bytes(new)
    d = casfs.out("store-at-label", t.id, "fresh", src)
    assert d == sha1(new)
    casfs.run("label", t.id, "deep/nested/name", t.digest["unlabelled"])
    big = random.Random(9).randbytes((2 << 20) + 7)
    dbig = casfs.out("store", t.id, input=big)
    assert dbig == sha1(big)

    # data/: the old files untouched, plus exactly the new raw blobs.
    data_after = tree(t.dir / "data")
    assert data_after == {**data_before, d: new, dbig: big}
    # labels/: the old files untouched, plus exactly the new label files,
    # each the 40 hex digits with no newline.
    labels_after = tree(t.dir / "labels")
    expected = dict(labels_before)
    expected.update({"fresh": d.encode(), "deep": None, "deep/nested": None,
                     "deep/nested/name": t.digest["unlabelled"].encode()})
    assert labels_after == expected
    for name in ("fresh", "deep/nested/name"):
        raw = (t.dir / "labels" / name).read_bytes()
        assert HEX40.match(raw) and len(raw) == 40, raw
    assert_only_finished_files(t.dir)
    # casfs keeps its own files beside, never inside data/ or labels/.
    assert sorted(p.name for p in t.dir.iterdir()) == [".casfs", "data", "labels"]

    # Theater's view agrees with casfs.
    tdata, tlabels = theater_view(t.dir)
    assert tlabels["fresh"] == d and tdata[d] == new
    assert tdata[tlabels["deep/nested/name"]] == CONTENTS["unlabelled"]
    # The store stays sha1 after casfs created its .casfs/.
    assert "algorithm sha1" in casfs.out("stats", t.id).splitlines()
    assert casfs.out("store", t.id, input=b"again") == sha1(b"again")


def test_replacing_a_theater_label_writes_no_newline(casfs):
    t = Theater(casfs.root)
    casfs.run("label", t.id, "with-newline", t.digest["beta"])
    assert (t.dir / "labels" / "with-newline").read_bytes() == t.digest["beta"].encode()
    casfs.run("replace-at-label", t.id, "projects/theater/config", t.digest["empty"])
    assert (t.dir / "labels" / "projects/theater/config").read_bytes() == t.digest["empty"].encode()
    casfs.run("remove-label", t.id, "main")
    assert not (t.dir / "labels" / "main").exists()
    assert_only_finished_files(t.dir)
    _, tlabels = theater_view(t.dir)
    assert tlabels["with-newline"] == t.digest["beta"]
    assert "main" not in tlabels


def test_writes_into_theater_store_missing_both_dirs(casfs):
    t = Theater(casfs.root, data=False, labels=False)
    d = casfs.out("store-at-label", t.id, "a/b", input=b"first write")
    assert tree(t.dir / "data") == {d: b"first write"}
    assert tree(t.dir / "labels") == {"a": None, "a/b": d.encode()}
    assert_only_finished_files(t.dir)


def test_gc_in_theater_store_respects_whitespace_labels(casfs):
    t = Theater(casfs.root)
    out = casfs.out("gc", "--grace", "0", t.id)
    assert out.startswith("removed 1 blobs"), out
    assert not (t.dir / "data" / t.digest["unlabelled"]).exists()
    for key in ("alpha", "beta", "empty", "binary"):  # binary via "with-newline"
        casfs.run("exists", t.id, t.digest[key], expect=0)


def test_sha1_store_made_by_casfs_is_readable_by_theater(casfs, tmp_path):
    sid = casfs.out("new", "--hash", "sha1")
    sdir = casfs.root / sid
    contents = {f"label{i}": f"content {i}\n".encode() * (i + 1) for i in range(5)}
    contents["nested/deeper/leaf"] = random.Random(3).randbytes(1 << 20 | 3)
    contents["same-as-0"] = contents["label0"]
    for name, c in contents.items():
        assert casfs.out("store-at-label", sid, name, input=c) == sha1(c)
    casfs.out("store", sid, input=b"unlabelled")
    casfs.run("rename-label", sid, "label4", "renamed/label4")
    contents["renamed/label4"] = contents.pop("label4")
    casfs.out("replace-content-at-label", sid, "label3", input=b"replaced")
    contents["label3"] = b"replaced"

    tdata, tlabels = theater_view(sdir)
    assert sorted(tlabels) == sorted(contents)
    for name, c in contents.items():
        raw = (sdir / "labels" / name).read_bytes()
        assert raw == sha1(c).encode(), name  # 40 hex, no newline
        assert tdata[tlabels[name]] == c
    for name, c in tdata.items():
        assert sha1(c) == name
    assert_only_finished_files(sdir)
    assert sorted(tdata) == sorted({sha1(c) for c in contents.values()} |
                                   {sha1(b"unlabelled"), sha1(b"content 3\n" * 4)})
