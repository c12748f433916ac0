"""Proves the throwaway-cluster tooling (cephcluster.py, the `cluster`
command) before the RADOS backend's tests rely on it: a cluster starts,
stores and returns bytes, survives a stopped OSD, keeps its data across a
full stop with persistent=True, becomes unreachable when paused, and
leaves no daemon and no directory behind.

    /usr/bin/python3 -m pytest -q tests/ceph/test_cephcluster.py
"""
import os
import pathlib
import subprocess
import time

import pytest

import cephcluster
from cephcluster import Cluster

CLUSTER_CMD = pathlib.Path(__file__).resolve().parent / "cluster"


@pytest.fixture
def cluster(tmp_path):
    """Factory: cluster(**Cluster kwargs) -> a started Cluster.  Every
    cluster is torn down after the test, which must leave no daemon and no
    scratch directory."""
    if not cephcluster.available():
        pytest.fail("ceph is not installed: add ceph-mon ceph-osd ceph-common to scripts/install-deps")
    made = []

    def make(**kw):
        c = Cluster(tmp_path / f"ceph{len(made)}", **kw)
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        pids = list(c.pids().values())
        c.teardown()
        left = [p for p in pids if cephcluster._alive(p)]
        assert not left, f"daemons still running after teardown: {left}"
        assert not c.scratch.exists(), f"{c.scratch} left behind"


def put(c, pool, name, data):
    c.rados("-p", pool, "put", name, "-", input=data)


def get(c, pool, name, timeout=cephcluster.CLI_TIMEOUT):
    return c.rados("-p", pool, "get", name, "-", timeout=timeout).stdout


def pool_info(c, name):
    return next(p for p in c.osd_dump()["pools"] if p["pool_name"] == name)


def test_memstore_round_trip_and_pause(cluster):
    c = cluster()
    assert c.objectstore == "memstore" and c.client_id == "admin"
    c.create_pool("data")
    info = pool_info(c, "data")
    assert (info["size"], info["min_size"], info["pg_num"]) == (1, 1, 8)
    assert "rados" in info["application_metadata"]

    data = os.urandom(100_000)
    put(c, "data", "obj", data)
    assert get(c, "data", "obj") == data
    # The probe object lives in its own namespace: a listing shows only ours.
    assert c.rados("-p", "data", "ls").stdout.split() == [b"obj"]

    # Paused, the cluster does not answer; resumed, it does again.
    c.pause()
    p = c.rados("-p", "data", "get", "obj", "-", timeout=2, check=False)
    assert p.returncode != 0
    c.resume()
    assert get(c, "data", "obj") == data


def test_three_osds_survive_a_stopped_one(cluster):
    c = cluster(osds=3)
    c.create_pool("rep", size=3)
    info = pool_info(c, "rep")
    assert (info["size"], info["min_size"]) == (3, 2)

    objs = {f"o{i}": os.urandom(4096 + i) for i in range(8)}  # spread over the PGs
    for name, data in objs.items():
        put(c, "rep", name, data)
    c.stop_osd(1)
    assert not c.osd_dump()["osds"][1]["up"]
    for name, data in objs.items():
        assert get(c, "rep", name, timeout=10) == data
    put(c, "rep", "while-degraded", b"x")  # two replicas = min_size: writes go on
    c.start_osd(1)
    c.wait_healthy(timeout=30)
    assert get(c, "rep", "while-degraded") == b"x"


def test_persistent_survives_stop_and_start(cluster):
    c = cluster(persistent=True)
    assert c.objectstore == "bluestore"
    c.create_pool("keep")
    data = os.urandom(300_000)
    put(c, "keep", "obj", data)
    c.stop()
    assert c.pids() == {}
    c.start_again()
    assert get(c, "keep", "obj") == data
    # Also after a power cut: SIGKILL, nothing shut down cleanly.
    put(c, "keep", "obj2", data[::-1])
    c.stop(kill=True)
    c.start_again()
    assert get(c, "keep", "obj2") == data[::-1]


def test_cluster_command(tmp_path):
    """`cluster start` returns while the daemons run (its output is a pipe
    here: a daemon holding it would hang this), `cluster stop` ends them."""
    if not cephcluster.available():
        pytest.fail("ceph is not installed: add ceph-mon ceph-osd ceph-common to scripts/install-deps")
    d = tmp_path / "cli"
    t = time.monotonic()
    p = subprocess.run([CLUSTER_CMD, "start", d, "--pool", "one", "--pool", "two:1"],
                       capture_output=True, timeout=120)
    try:
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        assert time.monotonic() - t < 60
        assert p.stdout.decode() == f"CEPH_CONF={d}/ceph.conf\n"
        c = Cluster.attach(d)
        assert set(c.pools) == {"one", "two"} and len(c.pids()) == 2
        env = dict(os.environ, CEPH_CONF=str(d / "ceph.conf"))
        subprocess.run(["rados", "-p", "two", "put", "o", "-"], input=b"hi", env=env,
                       check=True, timeout=30)
        assert subprocess.run(["rados", "-p", "two", "get", "o", "-"], env=env, check=True,
                              capture_output=True, timeout=30).stdout == b"hi"
        pids = list(c.pids().values())
    finally:
        q = subprocess.run([CLUSTER_CMD, "stop", d], capture_output=True, timeout=60)
    assert q.returncode == 0, q.stderr.decode(errors="replace")
    assert not d.exists()
    assert not [p for p in pids if cephcluster._alive(p)]
