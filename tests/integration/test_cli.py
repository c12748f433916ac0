"""The `casfs` command driven as a user would (SPEC §2, §3, §5): one test per
behaviour of each verb, bad input, root selection, help and progress."""
import hashlib
import json
import os
import pathlib
import pty
import random
import re
import stat
import subprocess
import threading
import time

import pytest

from fuse_util import cli_labels

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Every verb of SPEC §3 the command has (mount is the filesystem's), and help.
VERBS = [
    "new", "stores", "store", "get", "exists", "label", "get-by-label", "store-at-label",
    "replace-content-at-label", "replace-at-label", "remove-label", "remove-from-label",
    "rename-label", "list-labels", "list-all-content", "calculate-total-size", "gc", "fsck",
    "stats", "events", "help",
]


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def sha1(b):
    return hashlib.sha1(b).hexdigest()


def rand_bytes(n, seed):
    return random.Random(seed).randbytes(n)


def write(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snapshot(casfs):
    """Everything the root of casfs holds, except the journals (which record
    failed operations by design).  A directory root: every path under it
    with its kind and content.  A rados: root, through the command: every
    store with its labels (name -> digest) and its blobs' digests."""
    if casfs.spec is not None:
        return {sid: (cli_labels(casfs, sid), casfs.out("list-all-content", sid))
                for sid in casfs.out("stores").splitlines()}
    root = pathlib.Path(casfs.root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            parts = rel.split("/")
            if len(parts) == 3 and parts[1] == ".casfs" and parts[2].startswith("journal"):
                continue
            if p.is_symlink():
                snap[rel] = ("symlink", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir",)
            else:
                snap[rel] = ("file", stat.S_IMODE(p.stat().st_mode), p.read_bytes())
    return snap


def err_lines(p):
    return p.stderr.decode(errors="replace").splitlines()


def assert_one_message(p):
    """Exactly one `casfs: ` line on stderr, and it comes first; a usage
    error may add its usage line, any other failure says nothing else."""
    lines = err_lines(p)
    assert lines, "no message on stderr"
    assert lines[0].startswith("casfs: "), lines
    assert sum(1 for l in lines if l.startswith("casfs: ")) == 1, lines
    if p.returncode != 2:
        assert len(lines) == 1, lines


def assert_refused(p, codes=(2, 3)):
    assert p.returncode in codes, (p.returncode, err_lines(p))
    assert p.stdout == b"", p.stdout[:200]
    assert_one_message(p)


def events(casfs, store):
    return [json.loads(l) for l in casfs.out("events", store).splitlines()]


def is_dir_root(casfs):
    return casfs.spec is None


def label_file(casfs, store, name):
    return casfs.root / store / "labels" / name


def corrupt_blob(casfs, store, digest, data):
    p = casfs.root / store / "data" / digest
    assert stat.S_IMODE(p.stat().st_mode) == 0o444
    p.chmod(p.stat().st_mode | stat.S_IWUSR)
    p.write_bytes(data)


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    return d


# --------------------------------------------------------------------- new


def test_new_without_id_prints_uuid_and_creates_store(casfs):
    a = casfs.out("new")
    b = casfs.out("new")
    assert UUID_RE.match(a), a
    assert UUID_RE.match(b), b
    assert a != b
    for sid in (a, b):
        if is_dir_root(casfs):
            d = casfs.root / sid
            assert (d / "data").is_dir() and (d / "labels").is_dir() and (d / ".casfs").is_dir()
        assert casfs.run("list-labels", sid).stdout == b""
        assert casfs.run("list-all-content", sid).stdout == b""
    assert casfs.out("stores").splitlines() == sorted([a, b])
    assert "algorithm sha256" in casfs.out("stats", a).splitlines()


def test_new_with_id(casfs):
    assert casfs.out("new", "my-store") == "my-store"
    if is_dir_root(casfs):
        assert (casfs.root / "my-store" / "data").is_dir()
    assert casfs.out("stores") == "my-store"


def test_new_existing_id_fails(casfs):
    casfs.out("new", "dup")
    before = snapshot(casfs)
    p = casfs.run("new", "dup", expect=3)
    assert_refused(p, (3,))
    assert snapshot(casfs) == before


def test_new_hash_sha1(casfs, inputs):
    sid = casfs.out("new", "--hash", "sha1")
    assert UUID_RE.match(sid)
    data = b"theater content\n"
    d = casfs.out("store", sid, write(inputs / "f", data))
    assert d == sha1(data) and len(d) == 40
    assert casfs.run("get", sid, d).stdout == data
    if is_dir_root(casfs):
        assert (casfs.root / sid / "data" / d).read_bytes() == data
    assert "algorithm sha1" in casfs.out("stats", sid).splitlines()


def test_new_default_hash_is_sha256(casfs, store, inputs):
    data = b"sha256 content"
    assert casfs.out("store", store, write(inputs / "f", data)) == sha256(data)


def test_new_unknown_hash_is_usage_error(casfs):
    p = casfs.run("new", "--hash", "md5", expect=2)
    assert_refused(p, (2,))
    if is_dir_root(casfs):
        assert not casfs.root.exists() or list(casfs.root.iterdir()) == []
    assert casfs.run("stores").stdout == b""


# ------------------------------------------------------------------ stores


def test_stores_lists_sorted_ids(casfs):
    for sid in ("zeta", "alpha", "mid"):
        casfs.out("new", sid)
    if is_dir_root(casfs):  # what else a directory root may hold is not a store
        (casfs.root / ".hidden-dir").mkdir()
        (casfs.root / "a-file").write_bytes(b"x")
    assert casfs.run("stores").stdout == b"alpha\nmid\nzeta\n"


def test_stores_of_missing_root_is_empty(casfs):
    if is_dir_root(casfs):
        assert not casfs.root.exists()
    p = casfs.run("stores")
    assert p.stdout == b"" and p.stderr == b""


# ------------------------------------------------------------------- store


def test_store_one_file(casfs, store, inputs):
    data = b"hello, world\n"
    p = casfs.run("store", store, write(inputs / "f", data))
    assert p.stdout == (sha256(data) + "\n").encode()
    assert casfs.run("get", store, sha256(data)).stdout == data
    if is_dir_root(casfs):
        blob = casfs.root / store / "data" / sha256(data)
        assert blob.read_bytes() == data
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444


def test_store_stdin_dash(casfs, store):
    data = b"from stdin via dash"
    assert casfs.run("store", store, "-", input=data).stdout == (sha256(data) + "\n").encode()
    assert casfs.run("get", store, sha256(data)).stdout == data


def test_store_stdin_without_file(casfs, store):
    data = b"from stdin, no file argument"
    assert casfs.run("store", store, input=data).stdout == (sha256(data) + "\n").encode()
    assert casfs.run("get", store, sha256(data)).stdout == data


def test_store_many_files_prints_each_digest_in_order(casfs, store, inputs):
    files, want = [], []
    for i in range(300):
        data = (f"file number {i}\n" * (i % 7 + 1)).encode() + bytes([i % 256])
        files.append(write(inputs / f"f{i:03d}", data))
        want.append(sha256(data))
    files.append(files[5])  # the same content again: same digest, stored once
    want.append(want[5])
    p = casfs.run("store", store, *files)
    assert p.stdout.decode().splitlines() == want
    assert p.stderr == b""
    assert casfs.out("list-all-content", store).splitlines() == sorted(set(want))


def test_store_same_content_twice_keeps_one_blob(casfs, store, inputs):
    data = b"dedup me"
    d1 = casfs.out("store", store, write(inputs / "a", data))
    d2 = casfs.out("store", store, write(inputs / "b", data))
    assert d1 == d2 == sha256(data)
    assert casfs.out("list-all-content", store) == d1
    if is_dir_root(casfs):
        assert os.listdir(casfs.root / store / "data") == [d1]


def test_store_missing_file_fails(casfs, store, inputs):
    before = snapshot(casfs)
    p = casfs.run("store", store, inputs / "no-such-file", expect=3)
    assert_refused(p, (3,))
    assert snapshot(casfs) == before


@pytest.mark.dir_only  # a rados: root stages in unlinked files (O_TMPFILE)
def test_store_leaves_no_staging_files(casfs, store, inputs):
    casfs.out("store", store, write(inputs / "a", rand_bytes(3 << 20, 7)))
    casfs.out("store-at-label", store, "l", write(inputs / "b", b"small"))
    assert os.listdir(casfs.root / store / ".casfs" / "staging") == []


# --------------------------------------------------------------------- get


def test_get_returns_identical_bytes(casfs, store, inputs):
    data = bytes(range(256)) * 3 + b"\0\n\r\xff"
    d = casfs.out("store", store, write(inputs / "f", data))
    p = casfs.run("get", store, d)
    assert p.stdout == data and p.stderr == b""


def test_get_large_binary_pipelined(casfs, store, inputs):
    data = rand_bytes((3 << 20) + 12345, 1)  # > 1 MiB: hashed on a second thread
    d = casfs.out("store", store, write(inputs / "big", data))
    assert d == sha256(data)
    assert casfs.out("store", store, "-", input=data) == d  # the same through a pipe
    if is_dir_root(casfs):
        assert (casfs.root / store / "data" / d).read_bytes() == data
    assert casfs.run("get", store, d).stdout == data


def test_get_large_binary_from_stdin_only(casfs, store):
    data = rand_bytes((5 << 20) + 1, 2)
    d = casfs.out("store", store, input=data)
    assert d == sha256(data)
    assert casfs.run("get", store, d).stdout == data


def test_get_empty_blob(casfs, store, inputs):
    d = casfs.out("store", store, write(inputs / "empty", b""))
    assert d == sha256(b"")
    if is_dir_root(casfs):
        assert (casfs.root / store / "data" / d).read_bytes() == b""
    p = casfs.run("get", store, d)
    assert p.stdout == b"" and p.stderr == b""
    assert casfs.out("calculate-total-size", store) == "0"


def test_get_absent_digest_fails(casfs, store):
    p = casfs.run("get", store, sha256(b"never stored"), expect=3)
    assert_refused(p, (3,))


# ------------------------------------------------------------------ exists


def test_exists(casfs, store):
    d = casfs.out("store", store, input=b"present")
    p = casfs.run("exists", store, d, expect=0)
    assert p.stdout == b"" and p.stderr == b""
    p = casfs.run("exists", store, sha256(b"absent"), expect=1)
    assert p.stdout == b"" and p.stderr == b""


# ------------------------------------------------------------------- label


def test_label_points_at_stored_digest(casfs, store):
    d = casfs.out("store", store, input=b"labelled")
    p = casfs.run("label", store, "name", d)
    assert p.stdout == b"" and p.stderr == b""
    assert casfs.out("get-by-label", store, "name") == d
    if is_dir_root(casfs):
        assert label_file(casfs, store, "name").read_bytes() == d.encode()  # no newline


def test_label_nested_makes_directories(casfs, store):
    d = casfs.out("store", store, input=b"nested")
    casfs.run("label", store, "a/b/c", d)
    assert casfs.out("list-labels", store) == "a/b/c"
    if is_dir_root(casfs):
        assert label_file(casfs, store, "a/b/c").read_bytes() == d.encode()
        assert (casfs.root / store / "labels" / "a" / "b").is_dir()
    assert casfs.out("get-by-label", store, "a/b/c") == d


def test_label_refuses_absent_digest(casfs, store):
    p = casfs.run("label", store, "name", sha256(b"absent"), expect=3)
    assert_refused(p, (3,))
    casfs.run("get-by-label", store, "name", expect=1)
    assert casfs.run("list-labels", store).stdout == b""
    if is_dir_root(casfs):
        assert not label_file(casfs, store, "name").exists()


def test_label_moves_existing_label(casfs, store):
    d1 = casfs.out("store", store, input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    casfs.run("label", store, "x", d1)
    casfs.run("label", store, "x", d2)
    assert casfs.out("get-by-label", store, "x") == d2


# ------------------------------------------------------------ get-by-label


def test_get_by_label_prints_digest(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"content")
    p = casfs.run("get-by-label", store, "l")
    assert p.stdout == (d + "\n").encode() and p.stderr == b""


def test_get_by_label_absent_exits_1_with_empty_stdout(casfs, store):
    p = casfs.run("get-by-label", store, "nothing-here", expect=1)
    assert p.stdout == b""
    p = casfs.run("get-by-label", store, "no/such/dir", expect=1)
    assert p.stdout == b""


# ---------------------------------------------------------- store-at-label


def test_store_at_label_from_file(casfs, store, inputs):
    data = rand_bytes(2 << 20, 3)
    p = casfs.run("store-at-label", store, "dir/big", write(inputs / "f", data))
    assert p.stdout == (sha256(data) + "\n").encode()
    assert casfs.out("get-by-label", store, "dir/big") == sha256(data)
    assert casfs.run("get", store, sha256(data)).stdout == data


def test_store_at_label_from_stdin(casfs, store):
    data = b"piped into a label"
    assert casfs.out("store-at-label", store, "l", input=data) == sha256(data)
    assert casfs.out("store-at-label", store, "m", "-", input=data) == sha256(data)
    assert casfs.out("get-by-label", store, "l") == sha256(data)
    assert casfs.out("get-by-label", store, "m") == sha256(data)


def test_store_at_label_replaces_existing_label(casfs, store):
    casfs.out("store-at-label", store, "l", input=b"old")
    assert casfs.out("store-at-label", store, "l", input=b"new") == sha256(b"new")
    assert casfs.out("get-by-label", store, "l") == sha256(b"new")


# ------------------------------------------------ replace-content-at-label


def test_replace_content_at_label(casfs, store):
    casfs.out("store-at-label", store, "l", input=b"version 1")
    assert casfs.out("replace-content-at-label", store, "l", input=b"version 2") == sha256(b"version 2")
    assert casfs.out("get-by-label", store, "l") == sha256(b"version 2")
    assert casfs.run("get", store, sha256(b"version 2")).stdout == b"version 2"


def test_replace_content_at_label_fails_when_label_absent(casfs, store):
    p = casfs.run("replace-content-at-label", store, "absent", input=b"data", expect=3)
    assert_refused(p, (3,))
    casfs.run("get-by-label", store, "absent", expect=1)
    assert casfs.run("list-labels", store).stdout == b""
    if is_dir_root(casfs):
        assert not label_file(casfs, store, "absent").exists()


# -------------------------------------------------------- replace-at-label


def test_replace_at_label(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"first")
    d2 = casfs.out("store", store, input=b"second")
    p = casfs.run("replace-at-label", store, "l", d2)
    assert p.stdout == b"" and p.stderr == b""
    assert casfs.out("get-by-label", store, "l") == d2 != d1


def test_replace_at_label_fails_when_label_absent(casfs, store):
    d = casfs.out("store", store, input=b"content")
    p = casfs.run("replace-at-label", store, "absent", d, expect=3)
    assert_refused(p, (3,))
    casfs.run("get-by-label", store, "absent", expect=1)


def test_replace_at_label_refuses_absent_digest(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"content")
    p = casfs.run("replace-at-label", store, "l", sha256(b"absent"), expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d


# ------------------------------------------------------------ remove-label


def test_remove_label(casfs, store):
    d = casfs.out("store-at-label", store, "a/b", input=b"content")
    casfs.run("remove-label", store, "a/b")
    casfs.run("get-by-label", store, "a/b", expect=1)
    assert "a/b" not in casfs.out("list-labels", store).splitlines()
    casfs.run("exists", store, d, expect=0)  # content stays until gc


def test_remove_absent_label_fails(casfs, store):
    p = casfs.run("remove-label", store, "absent", expect=3)
    assert_refused(p, (3,))


# ------------------------------------------------------- remove-from-label


def test_remove_from_label_when_it_matches(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"content")
    casfs.run("remove-from-label", store, "l", d)
    casfs.run("get-by-label", store, "l", expect=1)


def test_remove_from_label_conflict_changes_nothing(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"current")
    d2 = casfs.out("store", store, input=b"other")
    before = snapshot(casfs)
    p = casfs.run("remove-from-label", store, "l", d2, expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d1
    assert snapshot(casfs) == before


# ------------------------------------------------------------ rename-label


def test_rename_label(casfs, store):
    d = casfs.out("store-at-label", store, "old", input=b"content")
    casfs.run("rename-label", store, "old", "new/nested")
    casfs.run("get-by-label", store, "old", expect=1)
    assert casfs.out("get-by-label", store, "new/nested") == d
    assert casfs.out("list-labels", store).splitlines() == ["new/nested"]


def test_rename_label_replaces_target(casfs, store):
    d1 = casfs.out("store-at-label", store, "from", input=b"one")
    casfs.out("store-at-label", store, "to", input=b"two")
    casfs.run("rename-label", store, "from", "to")
    assert casfs.out("get-by-label", store, "to") == d1
    casfs.run("get-by-label", store, "from", expect=1)


def test_rename_absent_label_fails(casfs, store):
    d = casfs.out("store-at-label", store, "to", input=b"two")
    p = casfs.run("rename-label", store, "absent", "to", expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "to") == d


# ------------------------------------------------------------- list-labels


def test_list_labels_nested_sorted(casfs, store):
    d = casfs.out("store", store, input=b"x")
    names = ["zeta", "a/b/c", "a/b/a", "a/z", "m", "a/b/c2", "B"]
    for n in names:
        casfs.run("label", store, n, d)
    p = casfs.run("list-labels", store)
    assert p.stdout.decode().splitlines() == sorted(names)
    assert p.stdout.endswith(b"\n")


def test_list_labels_empty_store(casfs, store):
    assert casfs.run("list-labels", store).stdout == b""


# -------------------------------------------------------- list-all-content


def test_list_all_content_sorted(casfs, store):
    ds = [casfs.out("store", store, input=f"blob {i}".encode()) for i in range(20)]
    casfs.out("store-at-label", store, "l", input=b"blob 3")
    assert casfs.out("list-all-content", store).splitlines() == sorted(set(ds))


# ---------------------------------------------------- calculate-total-size


def test_calculate_total_size(casfs, store):
    assert casfs.out("calculate-total-size", store) == "0"
    casfs.out("store", store, input=b"a" * 1000)
    casfs.out("store", store, input=b"b" * 234)
    casfs.out("store-at-label", store, "dup", input=b"a" * 1000)  # stored once
    assert casfs.out("calculate-total-size", store) == "1234"


# ------------------------------------------------------------------- stats


def test_stats_bytes_saved_with_two_labels_on_same_content(casfs, store):
    casfs.out("store-at-label", store, "one", input=b"s" * 5000)
    casfs.out("store-at-label", store, "two", input=b"s" * 5000)
    casfs.out("store-at-label", store, "other", input=b"o" * 100)
    casfs.out("store", store, input=b"u" * 7)  # unlabelled
    st = dict(l.split(" ", 1) for l in casfs.out("stats", store).splitlines())
    assert st["algorithm"] == "sha256"
    assert st["blobs"] == "3"
    assert st["labels"] == "3"
    assert st["bytes"] == "5107"
    assert st["labelled-bytes"] == "10100"
    assert st["bytes-saved"] == "5000"


# ------------------------------------------------------------------ events


def test_events_are_json_lines_with_every_field(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    proc = casfs.popen("label", store, "l", d2, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    raw = casfs.run("events", store).stdout.decode().splitlines()
    assert raw
    evs = [json.loads(l) for l in raw]  # every line is one JSON object
    assert all(isinstance(e, dict) for e in evs)
    ev = [e for e in evs if e.get("op") == "label" and e.get("pid") == proc.pid]
    assert len(ev) == 1, evs
    ev = ev[0]
    for key in ("time", "op", "store", "label", "digest", "old", "outcome", "uid", "pid"):
        assert key in ev, (key, ev)
    assert ev["store"] == store
    assert ev["label"] == "l"
    assert ev["digest"] == d2
    assert ev["old"] == d1
    assert ev["outcome"] == "ok"
    assert ev["uid"] == os.getuid()


def test_events_record_failed_operation(casfs, store):
    absent = sha256(b"absent")
    casfs.run("label", store, "l", absent, expect=3)
    ev = [e for e in events(casfs, store) if e.get("op") == "label"]
    assert len(ev) == 1, ev
    assert ev[0]["outcome"] == "error"
    assert ev[0]["label"] == "l"
    assert ev[0]["digest"] == absent
    assert ev[0].get("error")


def test_events_record_old_digest_on_label_replace(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"v1")
    d2 = casfs.out("replace-content-at-label", store, "l", input=b"v2")
    d3 = casfs.out("store", store, input=b"v3")
    casfs.run("replace-at-label", store, "l", d3)
    casfs.run("remove-label", store, "l")
    evs = [e for e in events(casfs, store) if e.get("label") == "l" and e["outcome"] == "ok"]
    assert [(e.get("digest"), e.get("old")) for e in evs] == [
        (d1, None), (d2, d1), (d3, d2), (None, d3)]


def test_events_record_store(casfs, store):
    d = casfs.out("store", store, input=b"journalled")
    ev = [e for e in events(casfs, store) if e.get("op") == "store"]
    assert len(ev) == 1 and ev[0]["digest"] == d and ev[0]["outcome"] == "ok"


# ---------------------------------------------------------------------- gc


def test_gc_grace_zero_removes_unlabelled_keeps_labelled(casfs, store):
    kept = casfs.out("store-at-label", store, "keep", input=b"labelled content")
    kept2 = casfs.out("store-at-label", store, "deep/er/label", input=b"nested labelled")
    gone = casfs.out("store", store, input=b"unlabelled content")
    time.sleep(0.01)
    out = casfs.out("gc", "--grace", "0", store)
    assert out.startswith("removed 1 blobs"), out
    casfs.run("exists", store, gone, expect=1)
    assert sorted(casfs.out("list-all-content", store).splitlines()) == sorted([kept, kept2])
    if is_dir_root(casfs):
        assert not (casfs.root / store / "data" / gone).exists()
    casfs.run("exists", store, kept, expect=0)
    casfs.run("exists", store, kept2, expect=0)
    assert casfs.run("get", store, kept).stdout == b"labelled content"


def test_gc_default_grace_keeps_fresh_blobs(casfs, store):
    fresh = casfs.out("store", store, input=b"just stored")
    out = casfs.out("gc", store)
    assert out.startswith("removed 0 blobs"), out
    casfs.run("exists", store, fresh, expect=0)


def test_gc_dry_run_removes_nothing(casfs, store):
    casfs.out("store-at-label", store, "keep", input=b"labelled")
    gone = casfs.out("store", store, input=b"unlabelled")
    time.sleep(0.01)
    before = snapshot(casfs)
    out = casfs.out("gc", "--grace", "0", "--dry-run", store)
    assert out.startswith("would remove 1 blobs"), out
    casfs.run("exists", store, gone, expect=0)
    assert snapshot(casfs) == before


def test_gc_removed_label_content(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"soon unlabelled")
    casfs.run("remove-label", store, "l")
    time.sleep(0.01)
    casfs.out("gc", "--grace", "0", store)
    casfs.run("exists", store, d, expect=1)


# -------------------------------------------------------------------- fsck


def test_fsck_clean_store_exits_0(casfs, store):
    casfs.out("store-at-label", store, "a/b", input=b"one")
    casfs.out("store", store, input=b"two")
    p = casfs.run("fsck", store, expect=0)
    assert p.stdout == b""
    p = casfs.run("fsck", expect=0)  # every store
    assert p.stdout == b""


@pytest.mark.dir_only  # corrupts a blob file of the backing directory
def test_fsck_reports_corrupt_blob(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"original content")
    corrupt_blob(casfs, store, d, b"tampered content")
    p = casfs.run("fsck", store, expect=1)
    lines = p.stdout.decode().splitlines()
    assert any(l.startswith("bad-blob ") and d in l for l in lines), lines
    assert casfs.run("exists", store, d).returncode == 0  # reported, not moved


@pytest.mark.dir_only  # corrupts a blob file of the backing directory
def test_fsck_repair_quarantines_corrupt_blob(casfs, store):
    d = casfs.out("store-at-label", store, "l", input=b"original content")
    good = casfs.out("store-at-label", store, "fine", input=b"healthy")
    corrupt_blob(casfs, store, d, b"tampered content")
    rep = casfs.run("fsck", "--repair", store, expect=1)
    lines = rep.stdout.decode().splitlines()
    assert any(l.startswith("bad-blob ") and d in l and "repaired" in l for l in lines), lines
    assert not (casfs.root / store / "data" / d).exists()
    q = casfs.root / store / ".casfs" / "quarantine"
    assert any(f.read_bytes() == b"tampered content" for f in q.iterdir() if f.is_file())
    p = casfs.run("get", store, d, expect=3)
    assert_one_message(p)
    # The label now names an absent blob: reported by the repair run itself
    # or by the next fsck, and repaired by a --repair run.
    second = casfs.run("fsck", store, expect=None)
    reported = rep.stdout.decode() + second.stdout.decode()
    assert any(l.startswith("dangling-label ") and " l:" in l for l in reported.splitlines()), reported
    casfs.run("fsck", "--repair", store, expect=None)
    p = casfs.run("fsck", store, expect=0)
    assert p.stdout == b""
    assert casfs.out("get-by-label", store, "fine") == good
    assert casfs.run("get", store, good).stdout == b"healthy"


@pytest.mark.dir_only  # corrupts a blob file of the backing directory
def test_get_corrupt_blob_fails(casfs, store):
    d = casfs.out("store", store, input=b"original content")
    corrupt_blob(casfs, store, d, b"tampered content")
    p = casfs.run("get", store, d, expect=3)
    assert_one_message(p)


@pytest.mark.dir_only  # corrupts a blob file of the backing directory
def test_get_corrupt_large_blob_fails(casfs, store):
    data = rand_bytes(3 << 20, 4)
    d = casfs.out("store", store, input=data)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    corrupt_blob(casfs, store, d, bytes(bad))
    p = casfs.run("get", store, d, expect=3)
    assert_one_message(p)


# ---------------------------------------------------------------- --expect


def test_label_expect_matching_old(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    casfs.run("label", "--expect", d1, store, "l", d2)
    assert casfs.out("get-by-label", store, "l") == d2


def test_label_expect_conflict_leaves_label(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    d3 = casfs.out("store", store, input=b"three")
    before = snapshot(casfs)
    p = casfs.run("label", "--expect", d3, store, "l", d2, expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d1
    assert snapshot(casfs) == before


def test_label_expect_none_on_existing_label_fails(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    p = casfs.run("label", "--expect", "none", store, "l", d2, expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d1


def test_label_expect_none_creates_new_label(casfs, store):
    d = casfs.out("store", store, input=b"one")
    casfs.run("label", "--expect", "none", store, "new", d)
    assert casfs.out("get-by-label", store, "new") == d


def test_label_expect_on_absent_label_fails(casfs, store):
    d1 = casfs.out("store", store, input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    p = casfs.run("label", "--expect", d1, store, "absent", d2, expect=3)
    assert_refused(p, (3,))
    casfs.run("get-by-label", store, "absent", expect=1)


def test_store_at_label_expect_conflict_leaves_label(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    other = sha256(b"something else")
    p = casfs.run("store-at-label", "--expect", other, store, "l", input=b"two", expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d1


def test_remove_label_expect_conflict(casfs, store):
    d1 = casfs.out("store-at-label", store, "l", input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    p = casfs.run("remove-label", "--expect", d2, store, "l", expect=3)
    assert_refused(p, (3,))
    assert casfs.out("get-by-label", store, "l") == d1


# --------------------------------------------------------------- bad input

BAD_IDS = [".hidden", "a/b", "..", "x" * 256, ".", ""]
BAD_LABELS = ["a//b", "../x", ".", "a/" + "c" * 256, "l" * 4096, "a/", "/a", "x/./y"]


@pytest.fixture
def seeded(casfs, store, inputs):
    """A store with one labelled blob; every lock/staging file exists."""
    f = write(inputs / "f", b"seed content")
    d = casfs.out("store-at-label", store, "keep", f)
    casfs.out("store-at-label", store, "dir/keep2", input=b"more")
    return store, d, f


def check_refusals(casfs, cmds):
    # A snapshot of a rados: root takes several commands: one before and
    # one after all of cmds, instead of around each.
    each = is_dir_root(casfs)
    first = snapshot(casfs)
    for cmd in cmds:
        before = snapshot(casfs) if each else first
        p = casfs.run(*cmd, expect=None)
        assert p.returncode in (2, 3), (cmd[:3], p.returncode, err_lines(p))
        assert p.stdout == b"", (cmd[:3], p.stdout[:200])
        try:
            assert_one_message(p)
        except AssertionError as e:
            raise AssertionError(f"{[str(c)[:60] for c in cmd]}: {e}") from None
        if each:
            assert snapshot(casfs) == before, [str(c)[:60] for c in cmd]
    if not each:
        assert snapshot(casfs) == first, [[str(c)[:60] for c in cmd] for cmd in cmds]


@pytest.mark.parametrize("bad", BAD_IDS, ids=["hidden", "slash", "dotdot", "256-bytes", "dot", "empty"])
def test_bad_store_id_refused(casfs, seeded, bad):
    store, d, f = seeded
    # (`new ""` is documented to make a fresh UUID, like `new` alone.)
    check_refusals(casfs, [("new", bad)] if bad else [])
    check_refusals(casfs, [
        ("list-labels", bad),
        ("list-all-content", bad),
        ("store", bad, f),
        ("get", bad, d),
        ("exists", bad, d),
        ("label", bad, "x", d),
        ("store-at-label", bad, "x", f),
        ("get-by-label", bad, "keep"),
        ("gc", "--grace", "0", bad),
        ("fsck", bad),
        ("stats", bad),
        ("events", bad),
    ])


@pytest.mark.parametrize("bad", BAD_LABELS,
                         ids=["double-slash", "dotdot", "dot", "256-component", "4096-bytes",
                              "trailing-slash", "leading-slash", "inner-dot"])
def test_bad_label_refused(casfs, seeded, bad):
    store, d, f = seeded
    check_refusals(casfs, [
        ("label", store, bad, d),
        ("store-at-label", store, bad, f),
        ("get-by-label", store, bad),
        ("replace-at-label", store, bad, d),
        ("replace-content-at-label", store, bad, f),
        ("remove-label", store, bad),
        ("remove-from-label", store, bad, d),
        ("rename-label", store, "keep", bad),
        ("rename-label", store, bad, "y"),
    ])
    assert casfs.out("list-labels", store).splitlines() == ["dir/keep2", "keep"]


@pytest.mark.parametrize("kind", ["upper-case", "too-short", "too-long", "sha1-length", "non-hex"])
def test_malformed_digest_refused(casfs, seeded, kind):
    store, d, f = seeded
    bad = {"upper-case": d.upper(), "too-short": d[:-1], "too-long": d + "0",
           "sha1-length": d[:40], "non-hex": "g" + d[1:]}[kind]
    check_refusals(casfs, [
        ("get", store, bad),
        ("exists", store, bad),
        ("label", store, "keep", bad),
        ("label", store, "new", bad),
        ("replace-at-label", store, "keep", bad),
        ("remove-from-label", store, "keep", bad),
        ("label", "--expect", bad, store, "keep", d),
        ("store-at-label", "--expect", bad, store, "keep", f),
    ])
    assert casfs.out("get-by-label", store, "keep") == d


def test_absent_digest_refused(casfs, seeded):
    store, d, f = seeded
    absent = sha256(b"never stored anywhere")
    check_refusals(casfs, [
        ("get", store, absent),
        ("label", store, "keep", absent),
        ("label", store, "new", absent),
        ("replace-at-label", store, "keep", absent),
        ("remove-from-label", store, "keep", absent),
    ])
    assert casfs.out("get-by-label", store, "keep") == d


def test_absent_store_refused(casfs, seeded):
    store, d, f = seeded
    check_refusals(casfs, [
        ("list-labels", "no-such-store"),
        ("store", "no-such-store", f),
        ("get", "no-such-store", d),
        ("label", "no-such-store", "x", d),
        ("store-at-label", "no-such-store", "x", f),
    ])
    assert "no-such-store" not in casfs.out("stores").splitlines()
    if is_dir_root(casfs):
        assert not (casfs.root / "no-such-store").exists()


LONGEST_LABEL = "/".join(["n" * 255] * 16)  # 16 components of 255 bytes: 4095 bytes


def test_longest_names_are_accepted(casfs, inputs):
    sid = "s" * 255
    assert casfs.out("new", sid) == sid
    assert casfs.out("stores") == sid
    d = casfs.out("store-at-label", sid, "c" * 255, input=b"long component")
    assert casfs.out("get-by-label", sid, "c" * 255) == d
    assert len(LONGEST_LABEL) == 4095
    d2 = casfs.out("store-at-label", sid, LONGEST_LABEL, input=b"longest label")
    assert casfs.out("get-by-label", sid, LONGEST_LABEL) == d2


def test_list_labels_shows_longest_label(casfs, store):
    d = casfs.out("store-at-label", store, LONGEST_LABEL, input=b"longest label")
    assert casfs.out("get-by-label", store, LONGEST_LABEL) == d
    assert casfs.out("list-labels", store).splitlines() == [LONGEST_LABEL]
    st = dict(l.split(" ", 1) for l in casfs.out("stats", store).splitlines())
    assert st["labels"] == "1"


def test_gc_keeps_blob_of_longest_label(casfs, store):
    d = casfs.out("store-at-label", store, LONGEST_LABEL, input=b"longest label")
    time.sleep(0.01)
    casfs.out("gc", "--grace", "0", store)
    casfs.run("exists", store, d, expect=0)
    assert casfs.run("get", store, casfs.out("get-by-label", store, LONGEST_LABEL)).stdout == b"longest label"


@pytest.mark.parametrize("char", ["\t", '"', "\\"], ids=["tab", "quote", "backslash"])
def test_events_record_label_change_with_long_escaped_name(casfs, store, char):
    """Label names may hold any byte but NUL and '/': a change of a long one
    whose characters JSON must escape is journalled like any other."""
    name = "/".join([char * 255] * 16)
    d = casfs.out("store-at-label", store, name, input=b"escaped")
    casfs.run("rename-label", store, name, name[:-1] + "z")
    evs = events(casfs, store)
    assert [e["op"] for e in evs if e.get("label") == name] == ["store-at-label"], \
        [e["op"] for e in evs]
    ren = [e for e in evs if e["op"] == "rename-label"]
    assert len(ren) == 1 and ren[0]["from"] == name and ren[0]["digest"] == d


# ------------------------------------------------------------------- usage


def test_unknown_verb_is_usage_error(casfs):
    p = casfs.run("frobnicate", expect=2)
    assert_refused(p, (2,))


def test_unknown_global_option_is_usage_error(casfs):
    p = casfs.run("--frobnicate", "stores", expect=2)
    assert_refused(p, (2,))


def test_unknown_verb_option_is_usage_error(casfs, store):
    p = casfs.run("list-labels", "--frobnicate", store, expect=2)
    assert_refused(p, (2,))
    p = casfs.run("get", "--repair", store, sha256(b"x"), expect=2)  # fsck's option
    assert_refused(p, (2,))


def test_wrong_argument_count_is_usage_error(casfs, store):
    assert_refused(casfs.run("get", store, expect=2), (2,))
    assert_refused(casfs.run("label", store, "l", expect=2), (2,))
    assert_refused(casfs.run("list-labels", store, "extra", expect=2), (2,))


def test_no_verb_is_usage_error(casfs):
    assert_refused(casfs.run(expect=2), (2,))


def test_bad_grace_is_usage_error(casfs, store):
    assert_refused(casfs.run("gc", "--grace", "soon", store, expect=2), (2,))
    assert_refused(casfs.run("gc", "--grace", "-5", store, expect=2), (2,))


# -------------------------------------------------------------------- help


def test_help_lists_every_verb(casfs):
    p = casfs.run("help")
    out = p.stdout.decode()
    for v in VERBS:
        assert re.search(rf"^\s+{re.escape(v)}\s", out, re.M), v


@pytest.mark.parametrize("verb", VERBS)
def test_help_verb(casfs, verb):
    p = casfs.run("help", verb)
    assert verb in p.stdout.decode()


@pytest.mark.parametrize("verb", VERBS)
def test_verb_dash_dash_help(casfs, verb):
    p = casfs.run(verb, "--help")
    assert verb in p.stdout.decode()
    # help touches no root (a rados: root would have made its cache directory)
    assert not os.path.exists(casfs.root if is_dir_root(casfs) else casfs.spec.cache_dir)


def test_help_unknown_verb_is_usage_error(casfs):
    assert_refused(casfs.run("help", "frobnicate", expect=2), (2,))


# -------------------------------------------------------------------- root


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CASFS_ROOT", "XDG_DATA_HOME", "HOME")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_root_from_option_beats_environment(casfs, tmp_path):
    env = clean_env(CASFS_ROOT=tmp_path / "env-root", XDG_DATA_HOME=tmp_path / "xdg",
                    HOME=tmp_path / "home")
    casfs.out("new", "s", env=env)
    assert casfs.out("stores") == "s"
    if is_dir_root(casfs):
        assert (casfs.root / "s" / "data").is_dir()
    assert not (tmp_path / "env-root").exists()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


@pytest.mark.dir_only  # the default roots are directories; --root is not used
def test_root_from_casfs_root(casfs, tmp_path):
    env = clean_env(CASFS_ROOT=tmp_path / "env-root", XDG_DATA_HOME=tmp_path / "xdg",
                    HOME=tmp_path / "home")
    assert casfs.out("new", "s", root=False, env=env) == "s"
    assert (tmp_path / "env-root" / "s" / "data").is_dir()
    assert casfs.out("stores", root=False, env=env) == "s"
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


@pytest.mark.dir_only  # the default roots are directories; --root is not used
def test_root_from_xdg_data_home(casfs, tmp_path):
    env = clean_env(XDG_DATA_HOME=tmp_path / "xdg", HOME=tmp_path / "home")
    assert casfs.out("new", "s", root=False, env=env) == "s"
    assert (tmp_path / "xdg" / "casfs" / "s" / "data").is_dir()
    assert casfs.out("stores", root=False, env=env) == "s"
    assert not (tmp_path / "home").exists()


@pytest.mark.dir_only  # the default roots are directories; --root is not used
def test_root_from_home(casfs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=home, CASFS_ROOT="", XDG_DATA_HOME="")  # empty = unset
    assert casfs.out("new", "s", root=False, env=env) == "s"
    assert (home / ".local" / "share" / "casfs" / "s" / "data").is_dir()
    assert casfs.out("stores", root=False, env=env) == "s"
    d = casfs.out("store-at-label", "s", "l", root=False, env=env, input=b"home")
    assert casfs.out("get-by-label", "s", "l", root=False, env=env) == d


@pytest.mark.dir_only  # the default roots are directories; --root is not used
def test_no_root_at_all_is_usage_error(casfs):
    p = casfs.run("stores", root=False, env=clean_env(), expect=2)
    assert_refused(p, (2,))


# ---------------------------------------------------------------- progress


def slow_fifo(path, chunks=6, delay=0.08):
    """A FIFO fed in small pieces over chunks*delay seconds, so a store
    reading it lasts long enough (> 0.2 s) to show progress if it would."""
    os.mkfifo(path)

    def feed():
        with open(path, "wb") as f:
            for i in range(chunks):
                f.write(f"piece {i}\n".encode() * 1000)
                f.flush()
                time.sleep(delay)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def test_no_progress_when_stderr_is_not_a_terminal(casfs, store, inputs):
    files = [write(inputs / f"f{i}", f"content {i}".encode()) for i in range(40)]
    fifo = inputs / "slow"
    t = slow_fifo(fifo)
    p = casfs.run("store", store, *files[:20], fifo, *files[20:])
    t.join(10)
    assert len(p.stdout.decode().splitlines()) == 41
    assert p.stderr == b""
    p = casfs.run("store-at-label", store, "l", input=b"x")
    assert p.stderr == b""


def test_progress_shown_when_stderr_is_a_terminal(casfs, store, inputs):
    """Control for the test above: the same slow store on a terminal does
    show progress, so its silence on a pipe is a choice."""
    files = [write(inputs / f"f{i}", f"content {i}".encode()) for i in range(10)]
    fifo = inputs / "slow"
    t = slow_fifo(fifo)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([casfs.exe, *casfs.root_args(), "store", store, *map(str, files),
                                 str(fifo)], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        out, _ = proc.communicate(timeout=60)
        t.join(10)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0
    assert len(out.decode().splitlines()) == 11
    assert b"store" in err, err


def test_failed_expectation_stores_nothing(casfs, store, tmp_path):
    """replace-content-at-label on a missing label, and store-at-label with a
    stale --expect, are refused before any content is published."""
    f = tmp_path / "new-content"
    f.write_bytes(b"content that must not be stored")
    casfs.run("replace-content-at-label", store, "missing", f, expect=3)
    old = tmp_path / "old"
    old.write_bytes(b"old")
    d_old = casfs.out("store-at-label", store, "l", old)
    casfs.run("store-at-label", "--expect", "0" * 64, store, "l", f, expect=3)
    assert casfs.out("list-all-content", store).split() == [d_old]
    assert casfs.out("get-by-label", store, "l") == d_old
