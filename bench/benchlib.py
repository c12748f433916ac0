"""benchlib: what bench/core and bench/run share.

Running commands with a timeout, timing them, medians, the build of casfs
(meson, buildtype=release), the scratch directories (tmpfs and disk), the
store written straight into casfs's layout, and the description of the
machine.  Standard library only (Debian's /usr/bin/python3).
"""
import hashlib
import json
import os
import platform
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
TIMEOUT = 300  # seconds, per command


def log(*a):
    print(*a, flush=True)


class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


def run(cmd, timeout=TIMEOUT, **kw):
    """Runs cmd, raising with its stderr if it fails."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.run(cmd, timeout=timeout, **kw)
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else ""
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))}{' ...' if len(cmd) > 6 else ''}"
                           f" failed with status {p.returncode}: {err.strip()}")
    return p


def timed(cmds, **kw):
    """Runs the commands one after the other; returns (seconds, last result)."""
    t0 = time.perf_counter()
    p = None
    for c in cmds:
        p = run(c, **kw)
    return time.perf_counter() - t0, p


def fstype(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def findmnt(path):
    p = subprocess.run(["findmnt", "-n", "-f", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS", "-T", path],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return " ".join(p.stdout.split()) or "?"


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fmt_s(x):
    return f"{x:.3f} s"


def med(xs):
    return statistics.median(xs)


def spread(xs):
    return f"{med(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


# ------------------------------------------------------------------- build

def build():
    """Builds casfs in <repo>/build-bench (or $CASFS_BUILD); returns
    (build dir, casfs executable, buildtype)."""
    bdir = os.environ.get("CASFS_BUILD") or os.path.join(REPO, "build-bench")
    if not os.path.exists(os.path.join(bdir, "build.ninja")):
        run(["meson", "setup", bdir, "--buildtype=release"], cwd=REPO,
            stdout=None, stderr=None)
    run(["meson", "compile", "-C", bdir], cwd=REPO, stdout=subprocess.DEVNULL, stderr=None)
    buildtype = "?"
    try:
        opts = json.loads(run(["meson", "introspect", bdir, "--buildoptions"]).stdout)
        buildtype = next(o["value"] for o in opts if o["name"] == "buildtype")
    except Exception:
        pass
    exe = os.path.join(bdir, "cli", "casfs")
    if not os.access(exe, os.X_OK):
        raise RuntimeError(f"no casfs executable at {exe}")
    return bdir, exe, buildtype


# ------------------------------------------------------------------- helpers

def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def build_list_store(store_dir, n):
    """Writes n blobs and n labels straight into casfs's layout
    (data/<sha256 hex> = content, labels/<name> = hex with no newline);
    returns (hexes, names)."""
    data = os.path.join(store_dir, "data")
    labels = os.path.join(store_dir, "labels")
    hexes, names = [], []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        content = b"casfs bench blob %d\n" % i
        h = hashlib.sha256(content).hexdigest()
        fd = os.open(os.path.join(data, h), flags, 0o444)
        os.write(fd, content)
        os.close(fd)
        name = f"bench-label-{i:06d}"
        fd = os.open(os.path.join(labels, name), flags, 0o644)
        os.write(fd, h.encode())
        os.close(fd)
        hexes.append(h)
        names.append(name)
    return hexes, names


def pick_disk_dir():
    for d in filter(None, [os.environ.get("CASFS_BENCH_DISK"), "/var/tmp",
                           os.path.dirname(REPO)]):
        if os.path.isdir(d) and fstype(d) not in ("tmpfs", "ramfs", "overlayfs") \
                and os.access(d, os.W_OK):
            return d
    raise RuntimeError("no writable directory on a disk filesystem (set CASFS_BENCH_DISK)")


def pick_tmpfs_dir():
    d = os.environ.get("CASFS_BENCH_TMPFS", "/dev/shm")
    if fstype(d) != "tmpfs":
        raise RuntimeError(f"{d} is not tmpfs (set CASFS_BENCH_TMPFS)")
    return d


# ------------------------------------------------------------------- machine

def balloon_reporting():
    """True if a virtio-balloon device with free page reporting is present:
    guest memory freed for a few seconds goes back to the host, and touching
    it again is slow (page cache for the 1 GiB runs then costs much more
    kernel time, at random)."""
    base = "/sys/bus/virtio/devices"
    try:
        for d in os.listdir(base):
            with open(os.path.join(base, d, "device")) as f:
                if int(f.read(), 16) != 5:
                    continue
            with open(os.path.join(base, d, "features")) as f:
                feats = f.read().strip()
            return len(feats) > 5 and feats[5] == "1"  # VIRTIO_BALLOON_F_REPORTING
    except (OSError, ValueError):
        pass
    return False


BALLOON_NOTE = ("- note: virtio-balloon free page reporting is on (a VM whose freed memory "
                "returns to the host): first touches of memory are slow at random, so "
                "the 1 GiB and disk figures vary from run to run more than on bare metal")


def machine_head(roots):
    """The first lines of the machine description: CPUs, memory, kernel, and
    the filesystem under each (label, directory) in roots."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    lines = [
        f"- nproc: {subprocess.run(['nproc'], stdout=subprocess.PIPE, text=True).stdout.strip()}",
        f"- CPU: {cpu}",
        f"- memory: {mem}",
        f"- kernel: {platform.release()} ({platform.machine()})",
    ]
    for label, d in roots:
        lines.append(f"- {label} root: {d} — `stat -f -c %T`: {fstype(d)}; findmnt: {findmnt(d)}")
    return lines


def git_rev():
    return subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True).stdout.strip()
