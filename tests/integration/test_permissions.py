"""Permissions: mounted by root with allow_other,default_permissions, stores
and labels have owners and modes, and a user cannot write or label in
another user's store, through the mount or the command.  The test creates
two users (casfs-alice, casfs-bob) if they are missing."""
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

import pytest

from fuse_util import how, mounter, sha256  # noqa: F401

USERS = ("casfs-alice", "casfs-bob")


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.fail("the permission tests create users and mount for them: run them as root")
    ids = {}
    for u in USERS:
        try:
            pw = pwd.getpwnam(u)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", u],
                           check=True, capture_output=True)
            pw = pwd.getpwnam(u)
        ids[u.split("-")[1]] = (pw.pw_uid, pw.pw_gid)
    return ids


def as_user(ids, *cmd, input=None):
    uid, gid = ids
    return subprocess.run(list(cmd), user=uid, group=gid, extra_groups=[], input=input,
                          capture_output=True, timeout=60, cwd="/")


@pytest.fixture
def request_cleanup():
    dirs = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


# A rados: root's top and store directories belong to the daemon's user,
# mode 0755 (casfs(7)): owners and modes of stores are the backing
# directory's.
@pytest.mark.dir_only
def test_users_cannot_touch_each_others_stores(users, mounter, casfs_bin, request_cleanup):
    alice, bob = users["alice"], users["bob"]
    # pytest's tmp_path sits under a 0700 directory: the users need a path
    # they can reach.
    base = pathlib.Path(tempfile.mkdtemp(prefix="casfs-perm-", dir="/tmp"))
    request_cleanup.append(base)
    os.chmod(base, 0o755)
    root = base / "root"
    root.mkdir()
    os.chmod(root, 0o1777)                  # anyone may add a store, like /tmp
    m = mounter(root=root, mnt=base / "mnt", opts=("allow_other", "default_permissions"))
    mnt = m.mnt

    # Alice makes a store and writes into it through the mount.
    assert as_user(alice, "mkdir", str(mnt / "astore")).returncode == 0
    st = os.stat(root / "astore")
    assert (st.st_uid, st.st_gid) == alice
    p = as_user(alice, "sh", "-c", f"printf hello > {mnt}/astore/incoming/x")
    assert p.returncode == 0, p.stderr
    d = sha256(b"hello")
    assert (root / "astore" / "labels" / "x").read_text() == d
    assert os.stat(root / "astore" / "labels" / "x").st_uid == alice[0]
    assert os.stat(root / "astore" / "data" / d).st_uid == alice[0]
    assert os.stat(mnt / "astore" / "incoming" / "x").st_uid == alice[0]

    # Bob can read it ...
    p = as_user(bob, "cat", str(mnt / "astore" / "labels" / "x"))
    assert p.returncode == 0 and p.stdout == b"hello"
    # ... but changes nothing in it, through the mount:
    before = sorted(os.listdir(root / "astore" / "labels"))
    for cmd in (["sh", "-c", f"printf evil > {mnt}/astore/incoming/y"],
                ["sh", "-c", f"printf evil > {mnt}/astore/incoming/x"],
                ["ln", "-s", f"../data/{d}", str(mnt / "astore" / "labels" / "z")],
                ["rm", "-f", str(mnt / "astore" / "labels" / "x")],
                ["mv", str(mnt / "astore" / "labels" / "x"), str(mnt / "astore" / "labels" / "w")],
                ["mkdir", str(mnt / "astore" / "labels" / "dir")],
                ["rmdir", str(mnt / "astore")]):
        p = as_user(bob, *cmd)
        assert p.returncode != 0, f"bob could run {cmd}"
        assert b"ermission denied" in p.stderr or b"Operation not permitted" in p.stderr, (cmd, p.stderr)
    # ... nor with the command:
    for args in (["label", "astore", "z", d], ["remove-label", "astore", "x"],
                 ["store-at-label", "astore", "y", "-"]):
        p = as_user(bob, casfs_bin, "--root", str(root), *args, input=b"evil")
        assert p.returncode == 3, (args, p.returncode, p.stderr)
        assert p.stderr.startswith(b"casfs: ") and b"ermission denied" in p.stderr, p.stderr
    assert sorted(os.listdir(root / "astore" / "labels")) == before
    assert (root / "astore" / "labels" / "x").read_text() == d

    # Alice keeps full use of her store with the command as well.
    p = as_user(alice, casfs_bin, "--root", str(root), "label", "astore", "z", d)
    assert p.returncode == 0, p.stderr
    assert (mnt / "astore" / "labels" / "z").read_bytes() == b"hello"

    # Bob's own store is his.
    assert as_user(bob, "mkdir", str(mnt / "bstore")).returncode == 0
    assert as_user(bob, "sh", "-c", f"printf bob > {mnt}/bstore/incoming/b").returncode == 0
    assert os.stat(root / "bstore").st_uid == bob[0]
    p = as_user(alice, "sh", "-c", f"printf alice > {mnt}/bstore/incoming/a")
    assert p.returncode != 0
    assert not (root / "bstore" / "labels" / "a").exists()

    # A file being written belongs to its writer from its creation, as it
    # will once committed: in the reply to the create, and when asked
    # again later (after the kernel's attribute cache of a second).
    script = ("import os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)\n"
              "os.write(fd, b'being written')\n"
              "a = os.fstat(fd)\n"
              "time.sleep(1.2)\n"
              "b = os.stat(sys.argv[1])\n"
              "print(a.st_uid, a.st_gid, oct(a.st_mode), b.st_uid, b.st_gid, oct(b.st_mode), b.st_size)\n"
              "os.close(fd)\n")
    p = as_user(alice, "/usr/bin/python3", "-c", script, str(mnt / "astore" / "incoming" / "w"))
    assert p.returncode == 0, p.stderr
    a_uid, a_gid, a_mode, b_uid, b_gid, b_mode, b_size = p.stdout.split()
    assert (int(a_uid), int(a_gid)) == alice and (int(b_uid), int(b_gid)) == alice, p.stdout
    assert a_mode == b_mode == b"0o100640" and b_size == b"13", p.stdout
    st = os.stat(root / "astore" / "labels" / "w")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*alice, 0o640)
