"""Crashes and races (SPEC §2 invariants, §5): a writer killed with SIGKILL
in the middle of its input leaves no partial blob, no label change and no
staging debris (blobs stage in unnamed files, O_TMPFILE, that vanish with
the writer; the named staging files of filesystems without O_TMPFILE and
fsck's cleaning of them are tested in tests/unit/test_core.c);
compare-and-swap label changes racing from two processes let exactly one
win."""
import hashlib
import os
import pathlib
import re
import signal
import stat
import subprocess
import time


MIB = 1 << 20
FEED = 64 * MIB


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def data_files(store_dir):
    d = pathlib.Path(store_dir) / "data"
    return {f.name: f for f in d.iterdir()}


def staging_files(store_dir):
    return sorted(os.listdir(pathlib.Path(store_dir) / ".casfs" / "staging"))


def staged_size(proc):
    """Size of the largest regular file the writer proc has open: its
    staging file (unnamed, in the store's .casfs/staging on the dir backend,
    under the cache directory on a rados: root)."""
    fds = f"/proc/{proc.pid}/fd"
    size = 0
    try:
        names = os.listdir(fds)
    except FileNotFoundError:
        return 0
    for name in names:
        try:
            st = os.stat(f"{fds}/{name}")
        except (FileNotFoundError, PermissionError):
            continue
        if stat.S_ISREG(st.st_mode):
            size = max(size, st.st_size)
    return size


def is_dir_root(casfs):
    return casfs.spec is None


def feed_then_kill(casfs, store, *args):
    """Starts `casfs ARGS` reading stdin from a pipe, writes FEED bytes in
    1 MiB pieces, waits until the writer has staged all of them (it is then
    blocked reading for more: the pipe is still open) and kills it."""
    proc = casfs.popen(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    piece = os.urandom(MIB)
    try:
        for i in range(FEED // MIB):
            proc.stdin.write(piece)
            proc.stdin.flush()
            if i % 16 == 15:
                time.sleep(0.01)
        deadline = time.monotonic() + 30
        while staged_size(proc) < FEED:
            assert proc.poll() is None, "casfs exited before being killed"
            assert time.monotonic() < deadline, "casfs never staged its input"
            time.sleep(0.01)
        assert proc.poll() is None, "casfs exited before being killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    out = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert out == b""  # no digest was ever printed


def check_after_crash(casfs, store, blobs_before):
    # Nothing new, nothing partial; every blob hashes to its name.
    digests = casfs.out("list-all-content", store).splitlines()
    assert sorted(digests) == sorted(blobs_before)
    for d in digests:
        assert sha256(casfs.run("get", store, d).stdout) == d, d
    if is_dir_root(casfs):
        sdir = casfs.root / store
        # data/: nothing new, nothing partial; every file hashes to its name.
        files = data_files(sdir)
        assert sorted(files) == sorted(blobs_before)
        for name, f in files.items():
            assert sha256(f.read_bytes()) == name, name
        # The dead writer's staging file had no name: nothing is left.
        assert staging_files(sdir) == []
    # Nothing was left to clean: fsck finds the store sound.
    p = casfs.run("fsck", store, expect=0)
    assert p.stdout == b""
    if is_dir_root(casfs):
        m = re.search(r"(\d+) staging files of dead writers removed", p.stderr.decode())
        assert m and int(m.group(1)) == 0, p.stderr


def test_store_killed_mid_input(casfs, store):
    old = casfs.out("store-at-label", store, "l", input=b"before the crash")
    feed_then_kill(casfs, store, "store", store, "-")
    check_after_crash(casfs, store, [old])
    assert casfs.out("get-by-label", store, "l") == old
    assert casfs.out("list-labels", store) == "l"
    # The store still works.
    assert casfs.out("store", store, input=b"after") == sha256(b"after")


def test_store_at_label_killed_mid_input_keeps_old_label(casfs, store):
    old = casfs.out("store-at-label", store, "l", input=b"before the crash")
    if is_dir_root(casfs):
        label_file = casfs.root / store / "labels" / "l"
        raw = label_file.read_bytes()
    feed_then_kill(casfs, store, "store-at-label", store, "l", "-")
    check_after_crash(casfs, store, [old])
    assert casfs.out("get-by-label", store, "l") == old
    assert casfs.out("list-labels", store) == "l"
    if is_dir_root(casfs):
        assert label_file.read_bytes() == raw


def test_store_at_label_killed_mid_input_creates_no_label(casfs, store):
    old = casfs.out("store-at-label", store, "other", input=b"before the crash")
    feed_then_kill(casfs, store, "store-at-label", store, "new/label", "-")
    check_after_crash(casfs, store, [old])
    p = casfs.run("get-by-label", store, "new/label", expect=1)
    assert p.stdout == b""
    assert casfs.out("list-labels", store) == "other"
    if is_dir_root(casfs):
        assert not (casfs.root / store / "labels" / "new" / "label").exists()


def test_fsck_leaves_live_writers_staging_alone(casfs, store):
    """The cleaning is only for dead writers: a writer still reading keeps
    its staging file through an fsck and then finishes."""
    proc = casfs.popen("store", store, "-", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    first = os.urandom(2 * MIB)
    proc.stdin.write(first)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while staged_size(proc) < MIB:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    if is_dir_root(casfs):
        # Staged (staged_size saw its open file), but under no name.
        assert staging_files(casfs.root / store) == []
    p = casfs.run("fsck", store, expect=0)
    assert re.search(r"\b0 staging files of dead writers removed", p.stderr.decode()), p.stderr
    rest = os.urandom(MIB + 5)
    out, err = proc.communicate(rest, timeout=60)
    assert proc.returncode == 0, err
    assert out.decode().strip() == sha256(first + rest)
    assert casfs.run("get", store, sha256(first + rest)).stdout == first + rest


# --------------------------------------------------------------------- races


def race(casfs, cmds):
    procs = [casfs.popen(*c, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL) for c in cmds]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        res.append((p.returncode, out, err))
    return res


def test_label_compare_and_swap_race_has_one_winner(casfs, store):
    old = casfs.out("store", store, input=b"old")
    d1 = casfs.out("store", store, input=b"one")
    d2 = casfs.out("store", store, input=b"two")
    for _ in range(15):
        casfs.run("label", store, "l", old)
        res = race(casfs, [("label", "--expect", old, store, "l", d1),
                           ("label", "--expect", old, store, "l", d2)])
        codes = sorted(r[0] for r in res)
        assert codes == [0, 3], res
        winner = d1 if res[0][0] == 0 else d2
        loser = res[1] if res[0][0] == 0 else res[0]
        assert loser[2].decode().startswith("casfs: "), loser
        assert casfs.out("get-by-label", store, "l") == winner


def test_store_at_label_compare_and_swap_race_has_one_winner(casfs, store):
    for i in range(10):
        old = casfs.out("store-at-label", store, "l", input=f"old {i}".encode())
        procs = [casfs.popen("store-at-label", "--expect", old, store, "l", "-",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        res = [p.communicate(f"new {i} from {k}".encode(), timeout=60) + (p.returncode,)
               for k, p in enumerate(procs)]
        codes = sorted(r[2] for r in res)
        assert codes == [0, 3], res
        win = [r for r in res if r[2] == 0][0]
        assert casfs.out("get-by-label", store, "l") == win[0].decode().strip()
