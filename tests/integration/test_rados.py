"""The RADOS backend as several machines see it: two daemons on one rados:
root, an OSD lost while files are written, the whole cluster gone and back,
gc on one side while the other labels.

Each "machine" is a daemon (or a `casfs` command) with a cache directory of
its own: nothing is shared between them but the Ceph cluster.  Tests that
stop daemons of the cluster start a cluster of their own (cephcluster.py);
the others use the session cluster of conftest.py (`ceph`).

Measured timings are printed (run with -s to see them) and the bounds that
matter are asserted: a label changed on one machine shows on the other
within 1.5 s; with the cluster down an operation fails (EIO or ETIMEDOUT)
within ceph_timeout * 3 + 5 s; the same mount works again once the cluster
is back.
"""
import concurrent.futures
import errno
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, SANITIZER_MARKS, Casfs, RootSpec, rados_root
from fuse_util import Mounter, poll, sha256

sys.path.insert(0, str(REPO / "tests" / "ceph"))
import cephcluster  # noqa: E402

MiB = 1 << 20
CHUNK = 4 * MiB          # bytes per RADOS object of a blob (backend_rados.c)
LABEL_VISIBLE = 1.5      # seconds for a label change to show on another machine
DOWN_ERRNOS = (errno.EIO, errno.ETIMEDOUT)


def say(*a):
    """A measurement, shown with pytest -s."""
    print("[test_rados]", *a, flush=True)


# ------------------------------------------------------------ fixtures


@pytest.fixture
def mounter(casfs_bin, tmp_path):
    """Factory: mounter(root=spec, mnt=...) -> Mount, always with `casfs
    mount` (the backend, not the way of mounting, is what these tests are
    about); every mount is torn down and its log checked at the end."""
    m = Mounter("casfs-mount", casfs_bin, tmp_path)
    try:
        yield m
    finally:
        m.finish()


def _own_cluster(tmp_path_factory, name, pool, size, **kw):
    if not cephcluster.available():
        pytest.fail("Ceph is not installed (ceph-mon, ceph-osd, rados): run scripts/install-deps")
    c = cephcluster.Cluster(tmp_path_factory.mktemp(name) / "c", **kw)
    try:
        t0 = time.monotonic()
        c.start()
        c.create_pool(pool, size=size)
        say(f"cluster {name} ({kw}) up with pool {pool} in {time.monotonic() - t0:.1f} s")
        yield c
    finally:
        if c.paused:
            c.resume()
        c.teardown()


@pytest.fixture
def ceph3(tmp_path_factory):
    """Three memstore OSDs of our own, pool 'r3' of size 3 (min_size 2)."""
    yield from _own_cluster(tmp_path_factory, "ceph3", "r3", 3, osds=3)


@pytest.fixture
def ceph_persistent(tmp_path_factory):
    """One bluestore OSD of our own: data survives stop()/start_again()."""
    yield from _own_cluster(tmp_path_factory, "cephp", "p", 1, osds=1, persistent=True)


@pytest.fixture
def ceph_pausable(tmp_path_factory):
    """One memstore OSD of our own, to SIGSTOP."""
    yield from _own_cluster(tmp_path_factory, "cephz", "z", 1, osds=1)


def machine(spec, tmp_path, name, timeout=None):
    """The same root as seen from another machine: its own cache_dir."""
    return RootSpec(spec.spec, spec.ceph_conf, tmp_path / f"cache-{name}",
                    spec.timeout if timeout is None else timeout)


def pool_root(cluster, pool, tmp_path, name, timeout=None):
    import uuid
    return RootSpec(f"rados:{pool}/{name}-{uuid.uuid4().hex[:12]}", cluster.conf,
                    tmp_path / f"cache-{name}", timeout)


def write_file(path, data, piece=MiB):
    """Writes data to a new file and closes it (the commit)."""
    with open(path, "wb") as f:
        for i in range(0, len(data), piece):
            f.write(data[i:i + piece])


def check_quiet(p, cmd):
    err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else (p.stderr or "")
    for mark in SANITIZER_MARKS:
        assert mark not in err, f"sanitizer report from {cmd}:\n{err}"


def link_target(lnk):
    """The digest a label symlink names, or None if there is no label."""
    try:
        return os.path.basename(os.readlink(lnk))
    except FileNotFoundError:
        return None


def set_label(store_mnt, name, hexd):
    """Points labels/name at hexd through the mount, atomically (symlink to
    a temporary name, then rename over), as `ln -sf` + `mv -T` would."""
    tmp = store_mnt / "labels" / f".tmp-{name}-{threading.get_ident()}"
    os.symlink(f"../data/{hexd}", tmp)
    os.rename(tmp, store_mnt / "labels" / name)


# ------------------------------------------------------- 1. two machines


def test_two_mounts_share_labels_and_content(ceph, mounter, casfs_bin, tmp_path):
    spec = rados_root(ceph, tmp_path, "two")
    ra, rb = machine(spec, tmp_path, "A"), machine(spec, tmp_path, "B")
    a = mounter(root=ra, mnt=tmp_path / "mntA")
    b = mounter(root=rb, mnt=tmp_path / "mntB")
    os.mkdir(a.mnt / "s")
    sa, sb = a.mnt / "s", b.mnt / "s"
    poll(lambda: sb.is_dir(), LABEL_VISIBLE, "store made on A, seen on B")

    # Both sides write, label, rename and remove at once, each in its own
    # names; every name ends with a known digest or none.
    rounds = 12
    want = {}        # label name -> digest it must end with (None: removed)
    content = {}     # digest -> bytes
    lock = threading.Lock()

    def side(tag, smnt):
        rnd = random.Random(tag)
        for i in range(rounds):
            size = CHUNK + 12345 if i == 3 else rnd.choice((0, 1, 4096, 100_000))
            data = rnd.randbytes(size)
            data += f"{tag}{i}".encode()
            h = sha256(data)
            write_file(smnt / "incoming" / f"{tag}-f{i}", data)
            with lock:
                content[h] = data
                want[f"{tag}-f{i}"] = h
            os.symlink(f"../data/{h}", smnt / "labels" / f"{tag}-l{i}")
            os.rename(smnt / "labels" / f"{tag}-l{i}", smnt / "labels" / f"{tag}-m{i}")
            with lock:
                want[f"{tag}-m{i}"] = h
            if i % 3 == 0:
                os.unlink(smnt / "labels" / f"{tag}-m{i}")
                with lock:
                    want[f"{tag}-m{i}"] = None
            # A label both sides fight over: ends at one of the values.
            set_label(smnt, "hot", h)
            with lock:
                want.setdefault("hot", set()).add(h)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        fa, fb = ex.submit(side, "a", sa), ex.submit(side, "b", sb)
        fa.result()
        fb.result()
    say(f"two sides, {rounds} rounds each of write+label+rename(+remove): {time.monotonic() - t0:.2f} s")

    # Each side sees every label of the other, pointing at the right
    # content, within the label timeout.
    def agree():
        for mnt in (sa, sb):
            for name, h in want.items():
                got = link_target(mnt / "labels" / name)
                if name == "hot":
                    if got not in h:
                        return False
                elif got != h:
                    return False
        return link_target(sa / "labels" / "hot") == link_target(sb / "labels" / "hot")
    poll(agree, LABEL_VISIBLE, "both mounts agree on every label")
    for mnt in (sa, sb):
        names = set(os.listdir(mnt / "labels"))
        assert names == {n for n, h in want.items() if h is not None}, (mnt, names ^ set(want))
        for name, h in want.items():
            if h is not None and name != "hot":
                assert (mnt / "labels" / name).read_bytes() == content[h], (mnt, name)
                assert (mnt / "incoming" / name).read_bytes() == content[h], (mnt, name)

    # Visibility: B has the label in its kernel cache (just read), A changes
    # it, B must see the change within LABEL_VISIBLE.
    hs = sorted(content)
    delays = []
    for i in range(4):
        new = hs[i]
        old = link_target(sb / "labels" / "hot")
        if new == old:
            new = hs[i + 5]
        assert link_target(sb / "labels" / "hot") == old
        set_label(sa, "hot", new)
        t0 = time.monotonic()
        poll(lambda: link_target(sb / "labels" / "hot") == new, 5, "label change on A seen on B")
        delays.append(time.monotonic() - t0)
    # A new label and a removed one.
    assert link_target(sb / "labels" / "fresh") is None
    os.symlink(f"../data/{hs[0]}", sa / "labels" / "fresh")
    t0 = time.monotonic()
    poll(lambda: link_target(sb / "labels" / "fresh") == hs[0], 5, "new label on A seen on B")
    delays.append(time.monotonic() - t0)
    assert (sb / "labels" / "fresh").read_bytes() == content[hs[0]]
    os.unlink(sa / "labels" / "fresh")
    t0 = time.monotonic()
    poll(lambda: link_target(sb / "labels" / "fresh") is None, 5, "label removed on A gone on B")
    delays.append(time.monotonic() - t0)
    # The same through incoming/: B rereads a file A rewrote.
    assert (sb / "incoming" / "a-f1").read_bytes() == content[want["a-f1"]]
    write_file(sa / "incoming" / "a-f1", b"rewritten on A")
    t0 = time.monotonic()
    poll(lambda: (sb / "incoming" / "a-f1").read_bytes() == b"rewritten on A", 5,
         "incoming/ file rewritten on A, new content on B")
    delays.append(time.monotonic() - t0)
    say("label change on A -> seen on B, seconds: " + ", ".join(f"{d:.3f}" for d in delays))
    assert max(delays) < LABEL_VISIBLE, delays

    # Compare-and-swap from both machines through the command: one winner
    # per round, and the label ends at the winner's digest.
    ca, cb = Casfs(casfs_bin, ra), Casfs(casfs_bin, rb)
    cur = ca.out("get-by-label", "s", "hot")
    wins = []
    for rnd in range(5):
        choices = [h for h in hs if h != cur]
        ha, hb = choices[rnd % len(choices)], choices[(rnd + 1) % len(choices)]
        procs = [(c, h, c.popen("label", "--expect", cur, "s", "hot", h,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                 for c, h in ((ca, ha), (cb, hb))]
        results = []
        for c, h, p in procs:
            out, err = p.communicate(timeout=60)
            check_quiet(subprocess.CompletedProcess(p.args, p.returncode, out, err), p.args)
            results.append((p.returncode, h, err.decode(errors="replace")))
        winners = [r for r in results if r[0] == 0]
        assert len(winners) == 1, f"round {rnd}: expected one winner of --expect {cur}: {results}"
        loser = [r for r in results if r[0] != 0][0]
        assert loser[0] == 3 and loser[2].startswith("casfs: ") and "changed" in loser[2], loser
        cur = winners[0][1]
        assert ca.out("get-by-label", "s", "hot") == cur
        assert cb.out("get-by-label", "s", "hot") == cur
        poll(lambda: link_target(sa / "labels" / "hot") == cur == link_target(sb / "labels" / "hot"),
             LABEL_VISIBLE, "CAS result seen through both mounts")
        wins.append("AB"[[ha, hb].index(cur)])
    say(f"CAS rounds won by: {''.join(wins)}")


# ------------------------------------------- 2. an OSD lost while writing


def test_osd_stopped_while_writing(ceph3, mounter, casfs_bin, tmp_path):
    spec = pool_root(ceph3, "r3", tmp_path, "osd")
    m = mounter(root=spec, mnt=tmp_path / "mnt")
    os.mkdir(m.mnt / "s")
    s = m.mnt / "s"

    n = 30
    sizes = []
    for i in range(n):
        if i % 3 == 0:
            sizes.append((CHUNK, 2 * CHUNK + 1, CHUNK + 1, 9 * MiB + 7, 5 * MiB)[i // 3 % 5])
        else:
            sizes.append((0, 1, 4096, 65536, 200_000 + i)[i % 5])
    rnd = random.Random(2)
    files = {f"f{i:02d}": rnd.randbytes(sizes[i]) for i in range(n)}
    results = {}   # name -> (close error or None, seconds)
    stopping, stopped = threading.Event(), threading.Event()

    def writer():
        for i, (name, data) in enumerate(files.items()):
            if i == 10:
                stopping.set()     # the OSD goes down from here on
            if i == 22:
                stopped.wait(60)   # some writes surely after it is down
            t0 = time.monotonic()
            try:
                write_file(s / "incoming" / name, data)
                results[name] = (None, time.monotonic() - t0)
            except OSError as e:
                results[name] = (e, time.monotonic() - t0)

    th = threading.Thread(target=writer)
    th.start()
    try:
        assert stopping.wait(60), "writer made no progress"
        t0 = time.monotonic()
        ceph3.stop_osd(1)
        say(f"osd.1 stopped (and marked down) in {time.monotonic() - t0:.2f} s, "
            f"{len(results)} files closed by then")
    finally:
        stopped.set()
        th.join(120)
    assert not th.is_alive(), "writer hung"
    assert len(results) == n, f"the writer stopped after {len(results)} files"
    say("close() seconds: " + " ".join(f"{k}:{v[1]:.2f}" for k, v in results.items()))

    problems = []
    committed = {k for k, (e, _) in results.items() if e is None}
    for k, (e, t) in results.items():
        if e is not None:
            problems.append(f"{k} ({len(files[k])} bytes): close failed after {t:.1f} s with "
                            f"{errno.errorcode.get(e.errno, e.errno)}: {e} (2 of 3 replicas were up)")

    # A cold cache: a second machine reads everything committed.
    cold = mounter(root=machine(spec, tmp_path, "cold"), mnt=tmp_path / "mnt-cold")
    t0 = time.monotonic()
    for k in sorted(committed):
        got = (cold.mnt / "s" / "labels" / k).read_bytes()
        if got != files[k]:
            problems.append(f"{k}: read back through a cold mount differs ({len(got)} of "
                            f"{len(files[k])} bytes)")
        if link_target(cold.mnt / "s" / "labels" / k) != sha256(files[k]):
            problems.append(f"{k}: label points at {link_target(cold.mnt / 's' / 'labels' / k)}")
    say(f"cold-cache reads of {len(committed)} files: {time.monotonic() - t0:.2f} s")

    # And through the command (yet another cache).
    cli = Casfs(casfs_bin, machine(spec, tmp_path, "cli"))
    assert set(cli.out("list-labels", "s").split()) >= committed
    t0 = time.monotonic()

    def get(k):
        p = cli.run("get", "s", sha256(files[k]), expect=None)
        return k, p
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for k, p in ex.map(get, sorted(committed)):
            if p.returncode != 0 or p.stdout != files[k]:
                problems.append(f"{k}: casfs get exited {p.returncode}, {len(p.stdout)} bytes, "
                                f"stderr {p.stderr.decode(errors='replace')!r}")
    say(f"casfs get of {len(committed)} files: {time.monotonic() - t0:.2f} s")

    t0 = time.monotonic()
    ceph3.start_osd(1)
    say(f"osd.1 up again in {time.monotonic() - t0:.2f} s")
    # While it catches up: more writes, read back by the other machines.
    more = {f"g{i}": rnd.randbytes(sz) for i, sz in enumerate((2 * CHUNK + 3, 1000, 0))}
    for k, v in more.items():
        try:
            write_file(s / "incoming" / k, v)
        except OSError as e:
            problems.append(f"{k}: close after osd.1 came back failed: {e!r}")
            continue
        if (cold.mnt / "s" / "labels" / k).read_bytes() != v:
            problems.append(f"{k} (written after osd.1 came back): differs through the cold mount")
        if cli.run("get", "s", sha256(v), expect=None).stdout != v:
            problems.append(f"{k} (written after osd.1 came back): differs through casfs get")
    for k in sorted(committed)[:5]:
        if cli.run("get", "s", sha256(files[k]), expect=None).stdout != files[k]:
            problems.append(f"{k}: differs through casfs get after osd.1 came back")
    assert not problems, "\n".join(problems) + f"\ndaemon log:\n{m.log()}"


# ------------------------------------------------ 3. the cluster stopped


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    try:
        return fn(*a, **kw), None, time.monotonic() - t0
    except OSError as e:
        return None, e, time.monotonic() - t0


def outage_checks(s, uh, pending, cli, bound, problems, what):
    """With the cluster unreachable: reading a blob not cached here,
    creating a file, closing a file written before the outage (its commit)
    and `casfs list-labels` must each fail with EIO or ETIMEDOUT (the
    command: exit 3 and a message) within bound seconds.  They run at once,
    as several programs would meet the outage; returns {step: seconds}."""
    took = {}

    def check(step, e, t):
        took[step] = t
        say(f"{what}: {step}: {e!r} after {t:.2f} s")
        if e is None:
            problems.append(f"{what}: {step} succeeded with the cluster unreachable")
        elif e.errno not in DOWN_ERRNOS:
            problems.append(f"{what}: {step} failed with {errno.errorcode.get(e.errno, e.errno)} "
                            f"({e}), expected EIO or ETIMEDOUT")
        if t > bound:
            problems.append(f"{what}: {step} took {t:.1f} s (bound {bound} s)")

    def read_uncached():
        with open(s / "data" / uh, "rb") as f:
            return f.read()

    def create_new():
        fd = os.open(s / "incoming" / "new1", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"written while the cluster is down")
        finally:
            os.close(fd)

    def close_pending():
        # Opened and partly written before the outage: the write goes to
        # local staging, the close (the commit) needs the cluster.
        _, e, t = timed(os.write, pending[0], b" and more while the cluster is down")
        if e is not None:
            problems.append(f"{what}: write to a file opened before the outage failed: {e!r} after {t:.2f} s")
        check("close (commit) of a file opened before the outage", *timed(os.close, pending.pop())[1:])
        took["closed at"] = time.monotonic()

    def command():
        t0 = time.monotonic()
        p = cli.run("list-labels", "s", expect=None)
        t = time.monotonic() - t0
        err = p.stderr.decode(errors="replace")
        took["casfs list-labels"] = t
        say(f"{what}: casfs list-labels exited {p.returncode} after {t:.2f} s: {err.strip()!r}")
        if p.returncode != 3 or not err.startswith("casfs: ") or not any(
                w in err for w in ("time", "reach", "answer")):
            problems.append(f"{what}: list-labels: exit {p.returncode}, stderr {err!r} "
                            "(expected 3 and a message saying the cluster did not answer)")
        if t > bound:
            problems.append(f"{what}: list-labels took {t:.1f} s (bound {bound} s)")

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        fs = [ex.submit(lambda: check("read of an uncached blob", *timed(read_uncached)[1:])),
              ex.submit(lambda: check("create+write+close of a new file", *timed(create_new)[1:])),
              ex.submit(close_pending), ex.submit(command)]
        for f in fs:
            f.result()
    return took


def outage_setup(m, casfs_bin, spec, tmp_path):
    """A store with committed files (some of several RADOS objects), a blob
    stored by another machine and never read here, and a file of that
    store open for rewriting.  Returns (store path, files, uncached digest,
    uncached bytes, [open fd]: whoever closes it pops it)."""
    os.mkdir(m.mnt / "s")
    s = m.mnt / "s"
    rnd = random.Random(3)
    files = {f"f{i}": rnd.randbytes(sz) for i, sz in enumerate((0, 10, 70_000, CHUNK + 5, 2 * CHUNK))}
    for k, v in files.items():
        write_file(s / "incoming" / k, v)
    other = Casfs(casfs_bin, machine(spec, tmp_path, "other"))
    uncached = rnd.randbytes(100_000)
    uh = other.out("store-at-label", "s", "u", "-", input=uncached)
    assert uh == sha256(uncached)
    assert os.stat(s / "data" / uh).st_size == len(uncached)   # known here, content not fetched
    assert (s / "labels" / "f2").read_bytes() == files["f2"]     # cached here
    pending = [os.open(s / "incoming" / "f2", os.O_WRONLY | os.O_TRUNC)]
    os.write(pending[0], b"new f2, written before the outage")
    return s, files, uh, uncached, pending


def recover_and_verify(m, s, files, uh, uncached, casfs_bin, spec, tmp_path, problems, what,
                       settle_until):
    """Polls (up to 30 s) until a write through the same mount succeeds,
    then checks that nothing committed was lost or changed: through the
    mount and through the command with a cold cache.  f2's rewrite, whose
    close failed, must never show: watched until settle_until (monotonic),
    when anything the daemon still did for it would have ended.  Returns
    the seconds until the first successful write."""
    t1 = time.monotonic()
    attempts = []

    def write_after():
        name = f"after{len(attempts)}"
        data = f"written after the outage, try {len(attempts)}".encode()
        _, e, t = timed(write_file, s / "incoming" / name, data)
        attempts.append((name, data, e, t))
        return e is None
    try:
        poll(write_after, 30, "a write through the same mount after the outage", interval=0.2)
    except AssertionError:
        problems.append(f"{what}: the mount did not recover within 30 s: {attempts}")
    t_rec = time.monotonic() - t1
    say(f"{what}: first successful write through the same mount {t_rec:.2f} s after the cluster "
        f"was back, {len(attempts)} attempts: " + "; ".join(f"{e!r} in {t:.2f} s" for *_, e, t in attempts))
    assert not problems, "\n".join(problems) + f"\ndaemon log:\n{m.log()}"

    name, data, _, _ = attempts[-1]
    cold = Casfs(casfs_bin, machine(spec, tmp_path, f"cold-{what}"))
    # Everything committed is there, unchanged.  f2's rewrite was refused
    # (its close(2) failed): its old content stays, now and later -- nothing
    # may commit it behind the program's back.
    while time.monotonic() < settle_until and link_target(s / "labels" / "f2") == sha256(files["f2"]):
        time.sleep(0.1)
    expect = dict(files, u=uncached, **{name: data})
    for k, v in expect.items():
        got = (s / "labels" / k).read_bytes()
        if got != v:
            target = link_target(s / "labels" / k)
            p = cold.run("get", "s", target, expect=None)
            events = [ln for ln in cold.out("events", "s").splitlines() if f'"{k}"' in ln]
            problems.append(
                f"{what}: labels/{k} -> {target} holds {len(got)} bytes {got[:80]!r} "
                f"(their sha256 is {sha256(got)}), expected {len(v)} bytes with sha256 {sha256(v)}"
                + (" (the close(2) of this rewrite failed)" if k == "f2" else "")
                + f"; casfs get {target[:12]}... exits {p.returncode}: "
                f"{p.stderr.decode(errors='replace').strip()!r}; journal of {k}:\n  "
                + "\n  ".join(events))
        elif cold.out("get-by-label", "s", k) != sha256(v) or cold.run("get", "s", sha256(v)).stdout != v:
            problems.append(f"{what}: {k} differs through the command with a cold cache")
    labels = set(cold.out("list-labels", "s").split())
    want = set(expect) | {a[0] for a in attempts if a[2] is None}
    if labels != want:   # the failed create left no label (new1)
        problems.append(f"{what}: labels {sorted(labels)}, expected {sorted(want)}")
    fsck = cold.run("fsck", "s", expect=None)
    if fsck.returncode != 0:
        problems.append(f"{what}: fsck exits {fsck.returncode}: {fsck.stdout.decode().strip()} "
                        f"{fsck.stderr.decode().strip()}")
    assert not problems, "\n".join(problems) + f"\ndaemon log:\n{m.log()}"
    return t_rec


def test_cluster_stopped_and_started_again(ceph_persistent, mounter, casfs_bin, tmp_path):
    tmo = 5
    bound = tmo * 3 + 5
    c = ceph_persistent
    spec = pool_root(c, "p", tmp_path, "down", timeout=tmo)
    m = mounter(root=spec, mnt=tmp_path / "mnt")
    s, files, uh, uncached, pending = outage_setup(m, casfs_bin, spec, tmp_path)

    try:
        t0 = time.monotonic()
        c.stop()
        say(f"cluster stopped in {time.monotonic() - t0:.2f} s")
        problems = []
        cli = Casfs(casfs_bin, machine(spec, tmp_path, "cli"))
        took = outage_checks(s, uh, pending, cli, bound, problems, "stopped")
    finally:
        if pending:   # a failure on the way: do not keep the mount busy
            os.close(pending.pop())

    t0 = time.monotonic()
    c.start_again()
    say(f"cluster started again (a probe write works) in {time.monotonic() - t0:.2f} s")
    recover_and_verify(m, s, files, uh, uncached, casfs_bin, spec, tmp_path, problems, "stopped",
                       took["closed at"] + 3 * tmo + 2)


def test_cluster_unreachable_and_back(ceph_pausable, mounter, casfs_bin, tmp_path):
    """The same with every daemon SIGSTOPped: connections stay open but
    nothing answers, as when the network to the cluster is cut."""
    tmo = 3
    bound = tmo * 3 + 5
    c = ceph_pausable
    spec = pool_root(c, "z", tmp_path, "paused", timeout=tmo)
    m = mounter(root=spec, mnt=tmp_path / "mnt")
    s, files, uh, uncached, pending = outage_setup(m, casfs_bin, spec, tmp_path)
    problems = []
    try:
        c.pause()
        cli = Casfs(casfs_bin, machine(spec, tmp_path, "cli"))
        took = outage_checks(s, uh, pending, cli, bound, problems, "paused")
    finally:
        c.resume()
        if pending:
            os.close(pending.pop())
    recover_and_verify(m, s, files, uh, uncached, casfs_bin, spec, tmp_path, problems, "paused",
                       took["closed at"] + 3 * tmo + 2)


# ------------------------------- 4. gc on one machine, labels on another


def test_gc_on_one_machine_while_another_labels(ceph, mounter, casfs_bin, tmp_path):
    """Machine A runs `gc --grace 0` while machine B points labels (ln -s
    through its mount) at blobs gc is about to take: every ln either fails
    (ENOENT/EINVAL: the blob is gone) or leaves a label on a blob that
    stays.  No label may ever name a blob gc removed."""
    spec = rados_root(ceph, tmp_path, "gc")
    ra, rb = machine(spec, tmp_path, "A"), machine(spec, tmp_path, "B")
    ca = Casfs(casfs_bin, ra)
    sid = ca.out("new")
    b = mounter(root=rb, mnt=tmp_path / "mntB")
    sb = b.mnt / sid
    src = tmp_path / "blobs"
    src.mkdir()
    labelled, refused, gc_runs = {}, {}, []
    content = {}
    rounds, per_round = 6, 60
    for r in range(rounds):
        # Unlabelled blobs, stored by A: gc's prey, unless B labels them first.
        batch = [f"round {r} blob {i} {os.urandom(8).hex()}\n".encode() for i in range(per_round)]
        paths = []
        for i, data in enumerate(batch):
            (src / f"{r}-{i}").write_bytes(data)
            paths.append(src / f"{r}-{i}")
        hexes = ca.out("store", sid, *paths).split()
        assert hexes == [sha256(d) for d in batch]
        content.update(zip(hexes, batch))
        go = threading.Event()

        def gc_once():
            go.wait(10)
            time.sleep(0.002 * r)   # a different overlap each round
            t0 = time.monotonic()
            p = ca.run("gc", "--grace", "0", sid, expect=None)
            gc_runs.append((p.returncode, p.stdout.decode().strip(), p.stderr.decode().strip(),
                            time.monotonic() - t0))

        def labeller(part):
            go.set()
            for i in range(part, per_round, 2):
                name = f"r{r}-l{i}"
                try:
                    os.symlink(f"../data/{hexes[i]}", sb / "labels" / name)
                    labelled[name] = hexes[i]
                except OSError as e:
                    refused[name] = e.errno
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            fs = [ex.submit(gc_once), ex.submit(labeller, 0), ex.submit(labeller, 1)]
            for f in fs:
                f.result()
    say(f"gc runs: {', '.join(f'{t:.2f}s' for *_, t in gc_runs)}; labelled {len(labelled)}, "
        f"refused {len(refused)} ({sorted({errno.errorcode.get(e, e) for e in refused.values()})})")
    assert all(rc == 0 for rc, *_ in gc_runs), gc_runs
    assert set(refused.values()) <= {errno.ENOENT, errno.EINVAL}, refused

    # No label names a blob that is gone.
    present = set(ca.out("list-all-content", sid).split())
    names = set(ca.out("list-labels", sid).split())
    assert names == set(labelled), names ^ set(labelled)
    dangling = {n: h for n, h in labelled.items() if h not in present}
    fsck = ca.run("fsck", sid, expect=None)
    say(f"dangling labels: {len(dangling)} of {len(labelled)}")
    assert not dangling and fsck.returncode == 0, (
        f"{len(dangling)} of {len(labelled)} labels made on B while A ran gc name a blob "
        f"gc removed, e.g. {sorted(dangling.items())[:3]}; fsck exit {fsck.returncode}: "
        f"{fsck.stdout.decode()[-600:]} {fsck.stderr.decode()[-600:]}")
    for n, h in labelled.items():
        assert (sb / "labels" / n).read_bytes() == content[h], n


def test_without_librados(ceph, casfs_bin, tmp_path):
    """librados is loaded on the first rados: root, not linked: with the
    library gone (here: /dev/null bound over it in a mount namespace of the
    command's own) a rados: root is a clear error and changes nothing, and
    directory roots work as before."""
    lib = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    paths = [line.split("=>")[-1].strip() for line in lib.splitlines()
             if line.strip().startswith("librados.so.2 ")]
    assert paths, "librados.so.2 is not installed: run scripts/install-deps"
    real = os.path.realpath(paths[0])
    spec = rados_root(ceph, tmp_path, "nolib")
    casfs = Casfs(casfs_bin, spec)

    def hidden(*args):
        """casfs ARGS with librados.so.2 bound over by /dev/null."""
        inner = f'mount --bind /dev/null "{real}" && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, "sh",
               casfs_bin] + [str(a) for a in args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    sid = casfs.out("new")
    p = hidden(*casfs.root_args(), "stores")
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert "need Ceph's client library (Debian package librados2)" in p.stderr, p.stderr
    assert p.stdout == ""
    p = hidden(*casfs.root_args(), "new")
    assert p.returncode == 3 and "librados2" in p.stderr, (p.returncode, p.stderr)
    assert casfs.out("stores").split() == [sid], "a failed new made a store"
    d = tmp_path / "dirroot"
    d.mkdir()
    p = hidden("--root", d, "new")
    assert p.returncode == 0 and len(p.stdout.split()) == 1, (p.returncode, p.stderr)
