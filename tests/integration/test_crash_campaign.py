"""The crash campaign (SPEC §2 invariants, §5, §6): many times in a row,
mount, drive a random mix of large and small writes, label renames, hard
links, removals and `casfs gc`, kill the daemon with SIGKILL at a random
moment, and check the store:

- every label names a present blob, and every blob hashes to its name;
- no staging debris once a daemon serves the store again (dir backend; a
  rados: root stages in unnamed files);
- every operation that had returned is reflected exactly (each worker owns
  its names and keeps a model of them; the one operation in flight at the
  kill may show its old or its new state);
- `casfs fsck` reports nothing.

On the dir backend the store is checked in the backing directory right
after each kill.  A rados: root has no directory and its daemons do nothing
at start after an unclean stop (casfs(7)), so it is checked through the
next round's mount (labels) and `casfs fsck` (blobs, dangling labels).

CASFS_CRASH_ITERATIONS sets the number of rounds (default 10 here, 4 on a
rados: root, where each round takes ~10 s more: the `casfs gc` running at
the kill waits for the dead daemon's shared lock to run out, SHARED_SECONDS
in core/backend_rados.c; the full campaign in tests/RELIABILITY.md uses
50)."""
import os
import random
import threading
import time

import pytest

from fuse_util import Mounter, backing_blobs, backing_labels, sha256, staging_files

ITERATIONS = os.environ.get("CASFS_CRASH_ITERATIONS")
WORKERS = 4
NAMES = [f"n{i}" for i in range(5)]


class Worker:
    """Runs random operations on its own names t<k>/n*, keeping a model of
    what each name holds."""

    def __init__(self, k, mdir, rnd, state):
        self.k, self.mdir, self.rnd = k, mdir, rnd
        self.state = state          # name -> digest, carried across rounds
        self.pending = None         # (pre, post) of the operation in flight
        self.done = 0
        self.history = []           # (round, op, names, digest), for failure reports

    def path(self, sub, name):
        return self.mdir / sub / f"t{self.k}" / name

    def step(self):
        rnd, st = self.rnd, self.state
        op = rnd.choice(["write", "write", "write", "rename", "link", "remove"])
        post = dict(st)
        existing = sorted(st)
        if op == "write" or not existing:
            name = rnd.choice(NAMES)
            size = rnd.randrange(0, 4096) if rnd.random() < 0.6 else rnd.randrange(1 << 20, 3 << 20)
            body = rnd.randbytes(size)
            post[name] = sha256(body)
            self.history.append(("write", name, post[name], len(body)))
            self.pending = (dict(st), post)
            with open(self.path("incoming", name), "wb") as f:
                for off in range(0, len(body), 256 * 1024):
                    f.write(body[off:off + 256 * 1024])
        elif op == "rename":
            a, b = rnd.choice(existing), rnd.choice(NAMES)
            post[b] = post.pop(a)
            self.history.append(("rename", a, b))
            self.pending = (dict(st), post)
            os.rename(self.path("labels", a), self.path("labels", b))
        elif op == "link":
            a = rnd.choice(existing)
            free = [n for n in NAMES if n not in st]
            if not free:
                return
            b = rnd.choice(free)
            post[b] = st[a]
            self.history.append(("link", a, b))
            self.pending = (dict(st), post)
            os.link(self.path("incoming", a), self.path("incoming", b))
        else:
            a = rnd.choice(existing)
            del post[a]
            self.history.append(("remove", a))
            self.pending = (dict(st), post)
            os.unlink(self.path("labels", a))
        st.clear()
        st.update(post)
        self.pending = None
        self.done += 1

    def run(self, stop):
        try:
            while not stop.is_set():
                self.step()
        except OSError:
            pass  # the daemon is gone (ENOTCONN) mid-operation


def check_store(bdir, workers):
    labels = {n: d.decode() for n, d in backing_labels(bdir).items()}
    blobs = backing_blobs(bdir)
    for name, d in labels.items():
        assert d in blobs, f"label {name} names absent blob {d}"
    for d, body in blobs.items():
        assert sha256(body) == d, f"blob {d} does not hash to its name"
    check_model(labels, workers)


def check_remote_store(m, workers):
    """check_store for a rados: root, through the mount m of it and fsck."""
    p = m.casfs.run("fsck", "s", expect=None)
    assert p.returncode == 0 and p.stdout == b"", (p.returncode, p.stdout, p.stderr)
    ldir = m.mnt / "s" / "labels"
    labels = {}
    for dirpath, dirnames, filenames in os.walk(ldir):
        for n in filenames:
            path = os.path.join(dirpath, n)
            target = os.readlink(path)
            assert os.path.exists(path), f"label {path} names an absent blob"
            labels[os.path.relpath(path, ldir)] = target.rsplit("/", 1)[1]
    assert sorted(labels) == sorted(m.casfs.out("list-labels", "s").splitlines())
    check_model(labels, workers)


def check_model(labels, workers):
    for w in workers:
        mine = {n.split("/", 1)[1]: d for n, d in labels.items() if n.startswith(f"t{w.k}/")}
        if w.pending is None:
            assert mine == w.state, f"worker {w.k}: store {mine} != model {w.state}"
        else:
            pre, post = w.pending
            assert mine in (pre, post), (f"worker {w.k}: {mine} is neither {pre} nor {post}; "
                                         f"last operations: {w.history[-12:]}")
            w.state.clear()
            w.state.update(mine)  # whichever it was, go on from there
            w.pending = None


def test_crash_campaign(casfs_bin, tmp_path, root_spec, backend):
    rounds = int(ITERATIONS or (10 if backend == "dir" else 4))
    rnd = random.Random(int(os.environ.get("CASFS_CRASH_SEED", "20261122")))
    mounter = Mounter("casfs-mount", casfs_bin, tmp_path)
    root, mnt = root_spec, tmp_path / "mnt"
    states = [dict() for _ in range(WORKERS)]
    total_ops = 0
    workers = []
    try:
        for it in range(rounds):
            m = mounter(root=root, mnt=mnt)
            if it == 0:
                os.mkdir(mnt / "s")
                for k in range(WORKERS):
                    os.mkdir(mnt / "s" / "incoming" / f"t{k}")
            mdir, bdir = m.store("s")
            if it > 0 and m.remote:
                check_remote_store(m, workers)  # as the last round's kill left it
            if it > 0 and not m.remote:
                # The daemon cleared the debris of the one killed before.
                assert staging_files(bdir) == [], f"round {it}: staging debris left"
            workers = [Worker(k, mdir, random.Random(rnd.random()), states[k]) for k in range(WORKERS)]
            stop = threading.Event()
            threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
            gc_runs = [0]

            def gc_loop():
                while not stop.is_set():
                    m.casfs.run("gc", "--grace", "0", "s", expect=None)
                    gc_runs[0] += 1
            threads.append(threading.Thread(target=gc_loop))
            for t in threads:
                t.start()
            time.sleep(rnd.uniform(0.2, 1.0))
            rc = m.kill()
            stop.set()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads), "a worker is stuck on the dead mount"
            assert rc == -9
            total_ops += sum(w.done for w in workers)
            if not m.remote:
                check_store(bdir, workers)
        # A last, clean mount: fsck finds nothing, and no debris is left.
        m = mounter(root=root, mnt=mnt)
        mdir, bdir = m.store("s")
        if m.remote:
            check_remote_store(m, workers)
        p = m.casfs.run("fsck", "s")
        assert p.stdout == b"", p.stdout
        if not m.remote:
            assert staging_files(bdir) == []
            check_store(bdir, [])
        m.unmount()
    finally:
        mounter.finish()
    assert total_ops > rounds * 5, f"only {total_ops} operations in {rounds} rounds"
    print(f"crash campaign: {rounds} rounds, {total_ops} operations checked")
