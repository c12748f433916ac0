"""A throwaway Ceph cluster on loopback for the RADOS backend's tests: one
monitor and N OSDs (no manager, no systemd, no containers), every file under
one scratch directory, ports picked so that several clusters (a CI run and a
developer's) can run side by side.  The facts it relies on are in
/work/shared/CEPH-NOTES.md; in short:

    cephx keyring (mon., client.admin) -> monmaptool --create --addv
    -> ceph-mon --mkfs, start ceph-mon -> per OSD: `ceph osd new UUID ID`
    with a fresh cephx secret, OSD keyring, ceph-osd --mkfs, start ceph-osd
    -> wait until every OSD is up and in -> pools -> probe write.

Readiness is decided by `ceph osd dump` and by a probe write (`rados put`),
never by `ceph -s`/`ceph health`: without a manager those show nothing
useful.  Every `ceph`/`rados` call runs under timeout(1).

    from cephcluster import Cluster
    with Cluster(tmp_path / "ceph", osds=3) as c:
        c.create_pool("data", size=3)
        # clients: rados_conf_read_file(c.conf), id c.client_id ("admin")
        c.stop_osd(1); ...; c.start_osd(1)

Object store
------------
Measured on the 2-core test VM (median of 3; "+pool" = start() and one
create_pool(), i.e. until a first write works):

                     start  +pool  stop()  start_again()  RSS per OSD, idle / 400 MiB written
    1 OSD memstore   0.4 s  0.8 s  0.1 s   0.25 s         33 MB / 840 MB
    1 OSD bluestore  1.0 s  1.5 s  0.1 s   0.6 s          43 MB / 60 MB
    3 OSD memstore   0.7 s  1.1 s  0.2 s   0.3 s          34 MB / 480-690 MB (size 3)
    3 OSD bluestore  1.3 s  1.9 s  0.1 s   0.7 s          45 MB / 110-150 MB (size 3)
    (the monitor: ~34 MB, ~40 MB of disk)

persistent=False: memstore, the fast one.  Objects live in the OSD's heap
(about twice their size, never given back).  memstore writes its contents
to the OSD directory when it is unmounted cleanly and reads them back when
it starts, so `osd fast shutdown` (which skips the unmount) is turned off
for it: stop_osd()/start_osd() and stop()/start_again() keep the data as
long as the daemons exit through SIGTERM.  An OSD that was SIGKILLed
(kill=True) has lost everything; start_osd() makes its store afresh and it
comes back empty, refilled from its peers if the pool has replicas.

persistent=True: bluestore on a sparse file, osd.N/block (8 GiB apparent,
real disk = what is stored), created by mkfs (bluestore_block_create;
bluestore_block_path is left empty: set to osd.N/block it becomes a
symlink to itself), a fixed 64 MiB cache (no autotuning towards the 4 GiB
osd_memory_target), no fsck on mkfs/mount/umount.  Bluestore acknowledges
a write only once it is in its RocksDB WAL on disk, so a cluster that is
stopped, or SIGKILLed as a whole (stop(kill=True)), comes back with
everything committed.  It costs ~0.6 s more than memstore per start and
uses less memory once data is stored, so filestore (deprecated, gone after
Pacific) was not needed.  One setting matters for speed: `bdev aio poll
ms` (250 ms by default) is how long closing the block file waits for the
aio thread, and a start opens and closes it ~6 times: 20 ms makes an OSD
start in 1 s instead of 3.

Either store stops accepting writes when it is full (memstore: `memstore
device bytes`, 1 GiB, checked loosely; bluestore: some way short of 8 GiB):
client writes then block rather than fail.  Keep test data well below.

Processes
---------
Daemons are started without -f: ceph forks, the child detaches (new
session, stdin/stdout/stderr on files in the scratch directory) and the
command we ran exits only once the daemon is up (or has failed), which is
both the readiness signal and the reason a caller's pipes are never held
open.  They are stopped by the PIDs in their pid files, never by name,
checking /proc/PID/cmdline first so a recycled PID is never signalled.
The daemons are the init process's children, and orphans are reaped late
on some machines: a process in state Z counts as gone.
"""
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid

DAEMON_BINARIES = ("ceph-mon", "ceph-osd", "rados")
TOOLS = ("ceph", "monmaptool", "timeout")

MON_NAME = "a"
CLIENT_ID = "admin"

# Ports: each cluster claims a block of BLOCK consecutive ports inside
# PORT_RANGE: the monitor's v2 and v1 ports first, then the OSDs' range
# (`ms bind port min/max`).  An OSD binds 8 ports (public, cluster and two
# heartbeat messengers, each v2 + v1).  The range lies below the kernel's
# ephemeral ports (32768-60999 by default), so outgoing connections never
# take them.  A claim is a symlink PORT_CLAIMS/<first port> -> scratch dir,
# made under a lock; it is stale once that directory no longer says it owns
# the block (teardown removes it).
PORT_RANGE = (20000, 32000)
BLOCK = 64
PORTS_PER_OSD = 8
MAX_OSDS = (BLOCK - 2) // PORTS_PER_OSD
PORT_CLAIMS = pathlib.Path(tempfile.gettempdir()) / "casfs-ceph-ports"

START_TIMEOUT = 60.0   # one daemon's start, mkfs included
STOP_GRACE = 10.0      # SIGTERM to SIGKILL, for a daemon that should stop cleanly
KILL_GRACE = 2.0       # the same at teardown, where the data does not matter
CLI_TIMEOUT = 30.0     # one ceph/rados command
POOL_TIMEOUT = 60.0    # a new pool until a probe write succeeds

MEMSTORE_BYTES = 1 << 30    # memstore's capacity (a limit, not an allocation)
BLUESTORE_BYTES = 8 << 30   # bluestore's block file (sparse)
PROBE_NAMESPACE = "casfs-probe"  # probe objects never show in a test's listing


class CephError(RuntimeError):
    """Something about the cluster failed; the message carries the command's
    output or the daemon's log tail."""


def available():
    """True if the programs a cluster needs are installed."""
    return all(shutil.which(b) for b in DAEMON_BINARIES + TOOLS)


# ------------------------------------------------------------- helpers


def gen_key():
    """A fresh cephx secret, as `ceph-authtool --gen-print-key` makes one:
    base64 of (type AES=1, created sec, nsec, length 16) + 16 random bytes."""
    raw = os.urandom(16)
    return base64.b64encode(struct.pack("<hiih", 1, int(time.time()), 0, len(raw)) + raw).decode()


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _claim_ports(scratch):
    """Claims a free block of ports for the cluster in scratch (an existing
    directory); returns its first port."""
    try:
        PORT_CLAIMS.mkdir()
        os.chmod(PORT_CLAIMS, 0o1777)  # shared by every user, like /tmp
    except FileExistsError:
        pass
    lock = os.open(PORT_CLAIMS / ".lock", os.O_RDONLY | os.O_CREAT, 0o444)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bases = list(range(PORT_RANGE[0], PORT_RANGE[1] - BLOCK + 1, BLOCK))
        # Random order: two containers that share the network but not /tmp
        # rarely collide either (and the bind test below sees running ones).
        random.SystemRandom().shuffle(bases)
        for base in bases:
            claim = PORT_CLAIMS / str(base)
            if os.path.lexists(claim):
                if _claim_alive(claim, base):
                    continue
                try:
                    os.unlink(claim)
                except OSError:  # another user's, in the sticky directory
                    continue
            if not all(_port_free(p) for p in range(base, base + BLOCK)):
                continue
            pathlib.Path(scratch, "port-claim").write_text(f"{base}\n")
            os.symlink(scratch, claim)
            return base
    finally:
        os.close(lock)
    raise CephError(f"no free block of {BLOCK} ports in {PORT_RANGE} (claims in {PORT_CLAIMS})")


def _claim_alive(claim, base):
    """A claim holds while its directory still names the block."""
    try:
        return (pathlib.Path(os.readlink(claim)) / "port-claim").read_text().strip() == str(base)
    except OSError:
        return False


def _release_ports(scratch, base):
    claim = PORT_CLAIMS / str(base)
    try:
        if os.readlink(claim) == str(scratch):
            os.unlink(claim)
    except OSError:
        pass


def _proc_state(pid):
    """The state letter of /proc/PID/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid):
    """A process that exists and is not a zombie (zombies of daemons are
    reaped late by init on some machines: they are gone for us)."""
    return _proc_state(pid) not in (None, "Z", "X")


def _tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return f"--- {path} (last lines)\n" + "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------- the cluster


class Cluster:
    """One monitor and `osds` OSDs on 127.0.0.1, everything in scratch_dir
    (created; removed by teardown).  Attributes: conf (the ceph.conf
    clients read), keyring, client_id ("admin"), scratch, osds, persistent,
    objectstore, pools (name -> size)."""

    client_id = CLIENT_ID

    def __init__(self, scratch_dir, osds=1, persistent=False):
        if not 1 <= osds <= MAX_OSDS:
            raise ValueError(f"osds must be 1..{MAX_OSDS}")
        self.scratch = pathlib.Path(os.path.abspath(scratch_dir))
        if any(ch in str(self.scratch) for ch in " \t\n$#;=\"'"):
            # ceph.conf would expand or cut such a path.
            raise ValueError(f"scratch_dir {str(self.scratch)!r}: no blanks or $#;=\"' please")
        self.osds = osds
        self.persistent = persistent
        self.objectstore = "bluestore" if persistent else "memstore"
        self.conf = str(self.scratch / "ceph.conf")
        self.keyring = str(self.scratch / "keyring")
        self.fsid = None
        self.base_port = None
        self.osd_uuids = []
        self.pools = {}
        self.paused = False
        self._owns_scratch = False   # teardown removes only a directory start() filled
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}

    @classmethod
    def attach(cls, scratch_dir):
        """The Cluster that start() left running in scratch_dir (possibly
        from another process, as `cluster stop DIR` does)."""
        scratch = pathlib.Path(os.path.abspath(scratch_dir))
        try:
            state = json.loads((scratch / "cluster.json").read_text())
        except (OSError, ValueError) as e:
            raise CephError(f"{scratch} holds no cluster started by cephcluster: {e}")
        c = cls(scratch, osds=state["osds"], persistent=state["persistent"])
        c.fsid, c.base_port = state["fsid"], state["base_port"]
        c.osd_uuids, c.pools = state["osd_uuids"], state["pools"]
        c._owns_scratch = True
        return c

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.teardown()

    # ---------------------------------------------------------- layout

    def _path(self, *parts):
        return str(self.scratch.joinpath(*parts))

    def _save_state(self):
        state = {"fsid": self.fsid, "base_port": self.base_port, "osds": self.osds,
                 "persistent": self.persistent, "objectstore": self.objectstore,
                 "osd_uuids": self.osd_uuids, "pools": self.pools}
        tmp = self.scratch / "cluster.json.tmp"
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.scratch / "cluster.json")

    @property
    def mon_addrs(self):
        return f"[v2:127.0.0.1:{self.base_port},v1:127.0.0.1:{self.base_port + 1}]"

    def _write_conf(self):
        d = self._path()
        # An admin socket path longer than sun_path (108 bytes) would fail to
        # bind; the sockets are only a debugging aid, so drop them then.
        asok = self._path("run", "$name.asok")
        if len(asok.replace("$name", f"osd.{MAX_OSDS}")) >= 100:
            asok = ""
        store = {
            "memstore": f"""\
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
# memstore saves its contents only on a clean unmount, which fast shutdown skips
osd fast shutdown = false
""",
            "bluestore": f"""\
osd objectstore = bluestore
# No block path: mkfs creates the file osd.N/block itself (a path here would
# be made a symlink osd.N/block -> path).
bluestore block size = {BLUESTORE_BYTES}
bluestore block create = true
bluestore cache autotune = false
bluestore cache size = 64M
bluestore fsck on mkfs = false
bluestore fsck on mount = false
bluestore fsck on umount = false
# The block device's aio thread notices a close only when its poll times
# out: 250 ms by default, and a start opens and closes the device ~6 times.
bdev aio poll ms = 20
""",
        }[self.objectstore]
        text = f"""\
# Generated by tests/ceph/cephcluster.py: a throwaway cluster, see there.
[global]
fsid = {self.fsid}
mon host = {self.mon_addrs}
public network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind port min = {self.base_port + 2}
ms bind port max = {self.base_port + BLOCK - 1}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/keyring
run dir = {d}/run
crash dir = {d}/crash
pid file = {d}/run/$name.pid
mon data = {d}/mon.$id
osd data = {d}/osd.$id
# No manager: without this the monitor turns HEALTH_WARN after 120 s.
mon mgr mkfs grace = 86400
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# Pool creation in well under a second instead of ~2 s.
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
log file = {d}/log/$name.log
admin socket = {asok}

[osd]
log file = {d}/log/$name.log
admin socket = {asok}
keyring = {d}/osd.$id/keyring
osd op num shards = 2
osd op num threads per shard = 1
{store}
[client]
# One log for every client (librados opens it O_APPEND); no admin sockets,
# which several processes of the same name would fight over.
log file = {d}/log/client.log
admin socket =
"""
        pathlib.Path(self.conf).write_text(text)

    # -------------------------------------------------------- commands

    def _run(self, cmd, timeout, input=None, check=True):
        """Runs cmd under timeout(1); returns the CompletedProcess.  check:
        raise CephError (with its output) unless it exits 0."""
        full = ["timeout", "-k", "3", str(timeout)] + [str(c) for c in cmd]
        try:
            p = subprocess.run(full, input=input, capture_output=True, env=self._env,
                               stdin=None if input is not None else subprocess.DEVNULL,
                               timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            raise CephError(f"{' '.join(full)} did not finish")
        if check and p.returncode != 0:
            what = "timed out" if p.returncode in (124, 137) else f"exited {p.returncode}"
            raise CephError(f"{' '.join(map(str, cmd))} {what}\nstdout: {p.stdout[-2000:]!r}\n"
                            f"stderr: {p.stderr.decode(errors='replace')[-3000:]}")
        return p

    def ceph(self, *args, timeout=CLI_TIMEOUT, input=None, check=True):
        """`ceph ARGS` as client.admin; returns stdout as text."""
        cmd = ["ceph", "-c", self.conf, "--id", CLIENT_ID,
               "--connect-timeout", str(max(1, int(timeout))), *args]
        return self._run(cmd, timeout, input=input, check=check).stdout.decode()

    def ceph_json(self, *args, timeout=CLI_TIMEOUT):
        return json.loads(self.ceph(*args, "-f", "json", timeout=timeout))

    def rados(self, *args, timeout=CLI_TIMEOUT, input=None, check=True):
        """`rados ARGS` as client.admin; returns the CompletedProcess."""
        cmd = ["rados", "-c", self.conf, "--id", CLIENT_ID,
               f"--client_mount_timeout={max(1, int(timeout))}", *args]
        return self._run(cmd, timeout, input=input, check=check)

    # --------------------------------------------------------- daemons

    def _pidfile(self, name):
        return self._path("run", f"{name}.pid")

    def _pid(self, name):
        """The PID of daemon `name` (mon.a, osd.0) if it runs from this
        scratch dir, else None.  The pid file may be stale after a crash,
        and a PID may be reused: the command line must name our ceph.conf."""
        try:
            pid = int(pathlib.Path(self._pidfile(name)).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if self.conf.encode() not in cmdline or not _alive(pid):
            return None
        return pid

    def _daemons(self):
        """Every daemon name, OSDs first (the order they are stopped in)."""
        return [f"osd.{i}" for i in range(self.osds)] + [f"mon.{MON_NAME}"]

    def _log_tails(self, name):
        return "\n".join(_tail(p) for p in (self._path("log", f"{name}.out"),
                                              self._path("log", f"{name}.log")))

    def _launch(self, name, argv, timeout=START_TIMEOUT):
        """Runs a ceph daemon command (daemonizing, or --mkfs) and waits for
        it: ceph's launcher exits 0 once the daemon is up.  Output goes to
        log/NAME.out."""
        with open(self._path("log", f"{name}.out"), "ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 env=self._env, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            self._stop_daemon(name, kill=True)  # the daemon has its own session
            raise CephError(f"{name}: `{' '.join(argv)}` did not finish in {timeout} s\n"
                            + self._log_tails(name))
        if rc != 0:
            raise CephError(f"{name}: `{' '.join(argv)}` exited {rc}\n" + self._log_tails(name))

    def _start_daemon(self, name, binary, ident):
        self._launch(name, [binary, "-c", self.conf, "-i", str(ident)])
        deadline = time.monotonic() + 10
        while self._pid(name) is None:
            if time.monotonic() > deadline:
                raise CephError(f"{name} started but is not running (pid file "
                                f"{self._pidfile(name)})\n" + self._log_tails(name))
            time.sleep(0.05)

    def _stop_daemon(self, name, grace=STOP_GRACE, kill=False):
        """SIGTERM (and SIGCONT, in case it is paused), wait up to grace,
        then SIGKILL; kill: SIGKILL at once.  Returns True if it was killed."""
        pid = self._pid(name)
        if pid is None:
            return False
        killed = kill
        for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _alive(pid):
            if time.monotonic() > deadline:
                if killed:
                    raise CephError(f"{name} (pid {pid}) survives SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + 10
            time.sleep(0.02)
        if killed and self.objectstore == "memstore" and name.startswith("osd."):
            # Its memory is gone and what memstore saved on disk is stale:
            # _start_osd makes the store afresh.
            pathlib.Path(self._path(name, "killed")).touch()
        return killed

    def _parallel(self, fn, items):
        """fn(item) for every item, in threads (the daemons' start-up is
        mostly waiting); raises the first failure after all have finished."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as ex:
            futures = [ex.submit(fn, it) for it in items]
        for f in futures:
            f.result()

    # ------------------------------------------------------- bootstrap

    def start(self):
        """Creates and starts the cluster; returns once every OSD is up and
        in.  On failure everything started so far is torn down."""
        if not available():
            missing = [b for b in DAEMON_BINARIES + TOOLS if not shutil.which(b)]
            raise CephError(f"ceph is not installed (missing {', '.join(missing)}): "
                            "apt-get install ceph-mon ceph-osd ceph-common")
        self.scratch.mkdir(parents=True, exist_ok=True)
        if any(self.scratch.iterdir()):
            raise CephError(f"{self.scratch} is not empty")
        self._owns_scratch = True
        try:
            self._bootstrap()
        except BaseException:
            self.teardown()
            raise

    def _bootstrap(self):
        for sub in ("run", "log", "crash"):
            os.mkdir(self._path(sub))
        self.fsid = str(uuid.uuid4())
        self.base_port = _claim_ports(str(self.scratch))
        self.osd_uuids = [str(uuid.uuid4()) for _ in range(self.osds)]
        self._save_state()
        self._write_conf()

        # The monitor's and the admin's keys; OSD keys come with `osd new`.
        pathlib.Path(self.keyring).write_text(f"""\
[mon.]
\tkey = {gen_key()}
\tcaps mon = "allow *"
[client.{CLIENT_ID}]
\tkey = {gen_key()}
\tcaps mon = "allow *"
\tcaps osd = "allow *"
\tcaps mds = "allow *"
\tcaps mgr = "allow *"
""")
        monmap = self._path("monmap")
        self._run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
                   "--enable-all-features", "--set-min-mon-release", "pacific",
                   "--addv", MON_NAME, self.mon_addrs, monmap], CLI_TIMEOUT)
        mon = f"mon.{MON_NAME}"
        self._launch(mon, ["ceph-mon", "-c", self.conf, "-i", MON_NAME, "--mkfs",
                           "--monmap", monmap, "--keyring", self.keyring])
        self._start_daemon(mon, "ceph-mon", MON_NAME)

        # Registering talks to the monitor, one OSD after the other; making
        # the stores and starting the daemons runs in parallel.
        for i in range(self.osds):
            self._register_osd(i)
        self._parallel(self._start_osd, range(self.osds))
        self.wait_healthy(timeout=START_TIMEOUT, probe=False)

    def _register_osd(self, i):
        """`ceph osd new` for osd.i with a fresh cephx secret, which goes to
        the OSD's own keyring."""
        name, data = f"osd.{i}", self._path(f"osd.{i}")
        os.mkdir(data)
        secret = gen_key()
        got = self.ceph("osd", "new", self.osd_uuids[i], str(i), "-i", "-",
                        input=json.dumps({"cephx_secret": secret}).encode()).strip()
        if got != str(i):
            raise CephError(f"`ceph osd new` gave id {got!r}, expected {i}")
        pathlib.Path(data, "keyring").write_text(f"[{name}]\n\tkey = {secret}\n")
        pathlib.Path(data, "needs-mkfs").touch()

    def _start_osd(self, i):
        """Starts osd.i, making its store first if it has none (a new OSD,
        or a memstore OSD that was killed: everything but its keyring goes,
        and it comes back empty, to be refilled from its peers)."""
        name, data = f"osd.{i}", pathlib.Path(self._path(f"osd.{i}"))
        if (data / "killed").exists():
            for f in data.iterdir():
                if f.name != "keyring":
                    shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
            (data / "needs-mkfs").touch()
        if (data / "needs-mkfs").exists():
            self._launch(name, ["ceph-osd", "-c", self.conf, "-i", str(i), "--mkfs",
                                "--osd-uuid", self.osd_uuids[i]])
            (data / "needs-mkfs").unlink()
        self._start_daemon(name, "ceph-osd", i)

    # ----------------------------------------------------------- state

    def osd_dump(self):
        """`ceph osd dump` as a dict (osds[i]["up"], ["in"], pools...)."""
        return self.ceph_json("osd", "dump")

    def _wait_osds(self, want_up, timeout, what):
        """Waits until `ceph osd dump` shows exactly the OSDs in want_up up
        and every OSD in."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                dump = self.osd_dump()
                up = {o["osd"] for o in dump["osds"] if o["up"]}
                notin = {o["osd"] for o in dump["osds"] if not o["in"]}
                last = f"up {sorted(up)}, not in {sorted(notin)}"
                if up == set(want_up) and not notin and len(dump["osds"]) == self.osds:
                    return
            except CephError as e:
                last = str(e)
            if time.monotonic() > deadline:
                tails = "\n".join(self._log_tails(f"osd.{i}") for i in want_up)
                raise CephError(f"{what}: not reached in {timeout} s ({last})\n{tails}")
            time.sleep(0.1)

    def wait_healthy(self, timeout=30, probe=True):
        """Waits until every OSD is up and in and (probe) a probe write to
        each pool made by create_pool succeeds."""
        deadline = time.monotonic() + timeout
        self._wait_osds(range(self.osds), timeout, "all OSDs up and in")
        if probe:
            for pool in self.pools:
                self.probe(pool, timeout=max(1.0, deadline - time.monotonic()))

    def probe(self, pool, timeout=POOL_TIMEOUT):
        """Writes (and removes) an object in pool's probe namespace, retrying
        until it works or timeout passes."""
        path = self._path("probe")
        pathlib.Path(path).write_bytes(b"probe\n")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            p = self.rados("-p", pool, "-N", PROBE_NAMESPACE, "put", "probe", path,
                           timeout=max(1, min(10, int(left))), check=False)
            if p.returncode == 0:
                self.rados("-p", pool, "-N", PROBE_NAMESPACE, "rm", "probe")
                return
            if time.monotonic() > deadline:
                raise CephError(f"probe write to pool {pool} failed for {timeout} s: exit "
                                f"{p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
            time.sleep(0.1)

    # ----------------------------------------------------------- pools

    def create_pool(self, name, size=1, pg_num=8):
        """Creates a replicated pool (min_size 2 for size 3, else
        size - size // 2) tagged for rados, and waits until a write works."""
        if not 1 <= size <= self.osds:
            raise ValueError(f"pool size {size} needs at least {size} OSDs (have {self.osds})")
        min_size = size - size // 2
        self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num), "replicated",
                  "--size", str(size))
        self.ceph("osd", "pool", "application", "enable", name, "rados")
        self.ceph("osd", "pool", "set", name, "min_size", str(min_size))
        self.pools[name] = size
        self._save_state()
        self.probe(name)

    # ----------------------------------------------------- stop, start

    def stop_osd(self, i, kill=False):
        """Stops osd.i (SIGTERM: it tells the monitor and its store keeps
        its data; kill: SIGKILL, as a crash would, which loses a memstore
        OSD's data) and waits until the monitor has marked it down."""
        name = f"osd.{i}"
        if self._pid(name) is None:
            raise CephError(f"{name} is not running")
        killed = self._stop_daemon(name, kill=kill)
        up = [j for j in range(self.osds) if j != i and self._pid(f"osd.{j}")]
        if killed:
            # A killed OSD said no goodbye; its peers would take
            # osd_heartbeat_grace (20 s) to report it.
            self.ceph("osd", "down", name)
        self._wait_osds(up, 30, f"{name} marked down")

    def start_osd(self, i):
        """Starts osd.i again (after stop_osd) and waits until it is up."""
        name = f"osd.{i}"
        if self._pid(name) is not None:
            raise CephError(f"{name} is already running")
        self._start_osd(i)
        up = [j for j in range(self.osds) if self._pid(f"osd.{j}")]
        self._wait_osds(up, START_TIMEOUT, f"{name} up again")

    def stop(self, kill=False):
        """Stops every daemon, OSDs first, keeping the data; start_again()
        brings them back.  kill: SIGKILL everything at once, as a power cut
        would (bluestore keeps every acknowledged write; memstore loses
        everything the OSDs held)."""
        self._stop_all(grace=STOP_GRACE, kill=kill)

    def _stop_all(self, grace, kill=False):
        """Stops the OSDs (in parallel), then the monitor.  A paused cluster
        is resumed first: an OSD on SIGTERM tells the monitor it goes down,
        and waits osd_mon_shutdown_timeout (5 s) if the monitor is stopped."""
        if not kill:
            self.resume()
        self._parallel(lambda n: self._stop_daemon(n, grace=grace, kill=kill),
                       [f"osd.{i}" for i in range(self.osds)])
        self._stop_daemon(f"mon.{MON_NAME}", grace=grace, kill=kill)

    def start_again(self, timeout=START_TIMEOUT):
        """Starts the daemons stop() stopped (the monitor first) and waits
        until the cluster is healthy again (a probe write in every pool)."""
        if self._pid(f"mon.{MON_NAME}") is None:
            self._start_daemon(f"mon.{MON_NAME}", "ceph-mon", MON_NAME)
        self._parallel(self._start_osd, [i for i in range(self.osds)
                                         if self._pid(f"osd.{i}") is None])
        self.wait_healthy(timeout)

    def pause(self):
        """SIGSTOPs every daemon: to a client the cluster is unreachable."""
        for name in self._daemons():
            pid = self._pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        """SIGCONTs every daemon (monitor first)."""
        for name in reversed(self._daemons()):
            pid = self._pid(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self.paused = False

    def client_env(self, env=None):
        """env (default os.environ) plus CEPH_CONF, for client programs:
        librados's rados_conf_read_file(NULL) and the ceph tools read it."""
        return dict(os.environ if env is None else env, CEPH_CONF=self.conf)

    def pids(self):
        """{daemon name: PID} of the daemons running now."""
        return {n: p for n in self._daemons() if (p := self._pid(n)) is not None}

    def teardown(self):
        """Stops every daemon (SIGTERM, SIGKILL after a short grace, by the
        PIDs in their pid files) and removes the scratch directory.  Safe to
        call twice, or after a failed start."""
        # If a daemon survives this raises, and the directory and the ports
        # stay claimed: something still runs from them.
        self._stop_all(grace=KILL_GRACE)
        if self.base_port is not None:
            _release_ports(str(self.scratch), self.base_port)
        if self._owns_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
