"""The RADOS backend measured (bench/run's workload R, or alone:
`bench/rados_bench.py`).

A throwaway one-OSD Ceph cluster (tests/ceph/cephcluster.py, memstore: the
objects live in the OSD's memory, so the network stack and the OSD are the
limit, not a disk) runs on loopback.  Side by side in the same loop:

  casfs-rados   a casfs mount of rados:POOL/NS (fresh local cache per cold read)
  casfs-dir     a casfs mount of a directory on the disk (the directory backend)
  rados CLI     `rados --striper put` / `rados --striper get` of the same data
                (libradosstriper cuts it into 4 MiB objects, as casfs does; a
                plain `rados put` refuses objects over osd_max_object_size,
                128 MiB): the ceiling on this cluster for one big file
  librados      a python3-rados loop writing the small files as objects (one
                process, one connection: the ceiling for many small objects,
                without a process per file)

Workloads (medians of RUNS runs after a warm-up; each run writes content
never stored before, so nothing is deduplicated away):

  R1 ingest      cp of a BIG-byte file into incoming/ (close included)
  R2 cold read   cat data/<hash> > /dev/null, local cache and page cache empty
  R3 small files cp -r of SMALL_N files of 4 KiB into incoming/
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "ceph"))

MIB = 1 << 20
POOL = "casfs-bench"


def _log(msg):
    print(msg, flush=True)


def _med(v):
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _rand_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def _sha256(path):
    return subprocess.run(["sha256sum", path], check=True, capture_output=True).stdout.decode().split()[0]


def _timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


class _Mount:
    def __init__(self, exe, root, mnt, opts, logpath):
        os.makedirs(mnt, exist_ok=True)
        argv = [exe, "mount", root, mnt, "-f"] + (["-o", ",".join(opts)] if opts else [])
        self.mnt = mnt
        self.log = open(logpath, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"casfs mount {root} failed (see {logpath})")
            time.sleep(0.01)

    def stop(self):
        for _ in range(50):
            if not os.path.ismount(self.mnt):
                break
            if subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run(exe, base, runs=5, big=256 * MIB, small_n=1000, log=_log):
    """Runs R1-R3 with scratch space under base (on the disk); returns the
    result table as markdown lines."""
    import cephcluster
    import rados  # python3-rados, from Debian's ceph packages

    cephcluster.MEMSTORE_BYTES = (runs + 2) * (big * 2 + small_n * 8192) + (1 << 30)
    work = tempfile.mkdtemp(prefix="casfs-radosbench.", dir=base)
    cl = cephcluster.Cluster(os.path.join(work, "ceph"), osds=1)
    mounts = []
    try:
        t0 = time.perf_counter()
        cl.start()
        cl.create_pool(POOL)
        log(f"  cluster up in {time.perf_counter() - t0:.1f} s (1 monitor, 1 memstore OSD, loopback)")
        ns = "bench-" + uuid.uuid4().hex[:8]
        spec = f"rados:{POOL}/{ns}"
        cache = os.path.join(work, "cache")
        dirroot = os.path.join(work, "dirroot")
        os.makedirs(dirroot)
        env = dict(os.environ, CEPH_CONF=cl.conf)
        src = os.path.join(work, "src")
        os.makedirs(src)
        sources = []
        for i in range(runs + 1):
            p = os.path.join(src, f"big{i}")
            _rand_file(p, big)
            sources.append(p)
        smalls = []
        for i in range(runs + 1):
            d = os.path.join(src, f"small{i}")
            os.makedirs(d)
            for j in range(small_n):
                with open(os.path.join(d, f"f{j:05d}"), "wb") as f:
                    f.write(os.urandom(4096))
            smalls.append(d)

        def mount_rados(cache_dir):
            m = _Mount(exe, spec, os.path.join(work, "mnt-rados"),
                       [f"ceph_conf={cl.conf}", f"cache_dir={cache_dir}", "cache_size=4G"],
                       os.path.join(work, "rados.log"))
            mounts.append(m)
            return m

        def mount_dir():
            m = _Mount(exe, dirroot, os.path.join(work, "mnt-dir"), [], os.path.join(work, "dir.log"))
            mounts.append(m)
            return m

        subprocess.run([exe, "--root", spec, "--ceph-conf", cl.conf, "--cache-dir", cache, "new", "s"],
                       check=True, capture_output=True)
        subprocess.run([exe, "--root", dirroot, "new", "s"], check=True, capture_output=True)
        mr, md = mount_rados(cache), mount_dir()
        cluster = rados.Rados(conffile=cl.conf)
        cluster.connect()
        io = cluster.open_ioctx(POOL)
        io.set_namespace("bench-ceiling")

        res = {}

        def add(k, v):
            res.setdefault(k, []).append(v)

        log(f"  R1 ingest: cp of {big >> 20} MiB; R2 cold read; R3 {small_n} files of 4 KiB")
        for i in range(runs + 1):
            s = sources[i]
            r = {}
            r["R1 casfs-rados"] = _timed(["cp", s, os.path.join(mr.mnt, "s", "incoming", f"big{i}")])
            r["R1 casfs-dir"] = _timed(["cp", s, os.path.join(md.mnt, "s", "incoming", f"big{i}")])
            r["R1 rados put"] = _timed(["rados", "--striper", "-p", POOL, "-N", "bench-ceiling", "put",
                                        f"big{i}", s], env=env)
            h = _sha256(s)
            # R2: a cold cache: the rados mount with an empty cache directory.
            mr.stop()
            mounts.remove(mr)
            shutil.rmtree(cache, ignore_errors=True)
            mr = mount_rados(cache)
            _drop_caches()
            r["R2 casfs-rados"] = _timed(["cat", os.path.join(mr.mnt, "s", "data", h)])
            _drop_caches()
            r["R2 casfs-dir"] = _timed(["cat", os.path.join(md.mnt, "s", "data", h)])
            r["R2 rados get"] = _timed(["rados", "--striper", "-p", POOL, "-N", "bench-ceiling", "get",
                                        f"big{i}", "/dev/null"], env=env)
            d = smalls[i]
            r["R3 casfs-rados"] = _timed(["cp", "-r", d, os.path.join(mr.mnt, "s", "incoming", f"small{i}")])
            r["R3 casfs-dir"] = _timed(["cp", "-r", d, os.path.join(md.mnt, "s", "incoming", f"small{i}")])
            t = time.perf_counter()
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    io.write_full(f"small{i}/{name}", f.read())
            r["R3 librados"] = time.perf_counter() - t
            if i == 0:
                log("  warm-up: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
                continue
            log(f"  run {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
            for k, v in r.items():
                add(k, v)
        io.close()
        cluster.shutdown()

        m = {k: _med(v) for k, v in res.items()}
        mbs = lambda secs: big / MIB / secs  # noqa: E731
        fps = lambda secs: small_n / secs  # noqa: E731
        lines = [
            "| workload | casfs on rados | casfs on a directory (disk) | RADOS ceiling | rados / ceiling |",
            "|---|---|---|---|---|",
            f"| R1 ingest, cp of {big >> 20} MiB | {mbs(m['R1 casfs-rados']):.0f} MiB/s | "
            f"{mbs(m['R1 casfs-dir']):.0f} MiB/s | {mbs(m['R1 rados put']):.0f} MiB/s (`rados --striper put`) | "
            f"{m['R1 rados put'] / m['R1 casfs-rados']:.0%} |",
            f"| R2 cold read, cat data/<hash> | {mbs(m['R2 casfs-rados']):.0f} MiB/s | "
            f"{mbs(m['R2 casfs-dir']):.0f} MiB/s | {mbs(m['R2 rados get']):.0f} MiB/s (`rados --striper get`) | "
            f"{m['R2 rados get'] / m['R2 casfs-rados']:.0%} |",
            f"| R3 small files, cp -r of {small_n} x 4 KiB | {fps(m['R3 casfs-rados']):.0f} files/s | "
            f"{fps(m['R3 casfs-dir']):.0f} files/s | {fps(m['R3 librados']):.0f} objects/s (librados loop) | "
            f"{m['R3 librados'] / m['R3 casfs-rados']:.0%} |",
        ]
        return lines
    finally:
        for mnt in reversed(mounts):
            try:
                mnt.stop()
            except Exception as e:  # keep tearing down
                print(f"rados bench: unmounting {mnt.mnt}: {e}", file=sys.stderr)
        cl.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    exe = os.environ.get("CASFS_EXE") or os.path.join(REPO, "build-bench", "cli", "casfs")
    base = os.environ.get("CASFS_BENCH_DISK", "/var/tmp")
    runs = int(os.environ.get("CASFS_BENCH_RUNS", "5"))
    for line in run(exe, base, runs=runs):
        print(line)
