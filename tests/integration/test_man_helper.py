"""The man pages render without a single warning and document every verb of
the command; mount.casfs turns mount(8)'s call into `casfs mount` with the
fstab-only options dropped.

The helper is checked without mounting anything: CASFS_BIN points it at a
small script that records the arguments it was run with."""
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, REPO, SANITIZER_MARKS

MAN = REPO / "man"
PAGES = ["casfs.1", "casfs.7", "mount.casfs.8"]
HELPER = BUILD / "mount-helpers" / "mount.casfs"


# ------------------------------------------------------------ man pages

def groff():
    exe = shutil.which("groff")
    if not exe:
        pytest.fail("groff is not installed: the man pages cannot be checked "
                    "(Debian: apt-get install groff-base)")
    return exe


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings_in_groff(page):
    p = subprocess.run([groff(), "-ww", "-z", "-man", str(MAN / page)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", f"groff -ww on {page}:\n{p.stderr}"


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings_in_man(page):
    groff()  # man -l needs it too: fail, do not skip, when it is missing
    exe = shutil.which("man")
    if not exe:
        pytest.skip("man (man-db) is not installed; groff -ww checked the page")
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", LC_ALL="C.UTF-8")
    p = subprocess.run([exe, "--warnings", "-l", str(MAN / page)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 0 and p.stderr == "", f"man --warnings -l {page}:\n{p.stderr}"
    assert p.stdout.strip(), f"man -l {page} rendered nothing"


def rendered(page):
    """The page as plain text, 80 columns wide."""
    p = subprocess.run([groff(), "-man", "-Tutf8", "-P-cbou", "-rLL=80n", str(MAN / page)],
                       capture_output=True, text=True, check=True, timeout=60)
    return p.stdout.replace("\u2010", "-").replace("\u2212", "-")


def section(text, name):
    """The lines of one section (a heading at column 0) of a rendered page."""
    m = re.search(rf"^{name}\n(.*?)(?=^[A-Z][A-Z ]+\n)", text, re.S | re.M)
    assert m, f"no section {name}"
    return m.group(1)


def help_verbs(casfs_bin):
    out = subprocess.run([casfs_bin, "help"], capture_output=True, text=True, check=True).stdout
    block = out.split("Verbs:\n", 1)[1].split("\n\n", 1)[0]
    verbs = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert len(verbs) >= 20, out
    return verbs


def test_casfs_1_documents_every_verb_of_casfs_help(casfs_bin):
    verbs_section = section(rendered("casfs.1"), "VERBS")
    # Each verb is the tag of its own entry: at the left margin of the section.
    tags = {m.group(1) for m in re.finditer(r"^ {7}([a-z][a-z-]*)", verbs_section, re.M)}
    missing = [v for v in help_verbs(casfs_bin) if v not in tags]
    assert not missing, f"casfs.1 has no entry under VERBS for: {missing}"


def test_casfs_1_synopsis_of_each_verb_is_its_usage(casfs_bin):
    """`casfs help VERB` and the man page give the same arguments."""
    verbs_section = section(rendered("casfs.1"), "VERBS")
    lines = {line.strip() for line in verbs_section.splitlines()}
    wrong = []
    for v in help_verbs(casfs_bin):
        out = subprocess.run([casfs_bin, "help", v], capture_output=True, text=True,
                             check=True).stdout
        usage = out.splitlines()[0].replace("usage: casfs [--root ROOT] ", "").replace("usage: casfs ", "")
        if not any(line == usage or line.startswith(usage + " ") for line in lines):
            wrong.append(usage)
    assert not wrong, f"casfs.1 does not show these usages as in `casfs help VERB`: {wrong}"


def test_casfs_1_exit_statuses_and_environment():
    text = rendered("casfs.1")
    env = section(text, "ENVIRONMENT")
    for var in ("CASFS_ROOT", "XDG_DATA_HOME", "HOME", "CASFS_JOURNAL_MAX"):
        assert re.search(rf"^ {{7}}{var}\b", env, re.M), f"ENVIRONMENT lacks {var}"
    status = section(text, "EXIT STATUS")
    for code in "0123":
        assert re.search(rf"^ {{7}}{code}\b", status, re.M), f"EXIT STATUS lacks {code}"


def test_meson_install_installs_the_pages_and_the_helper(tmp_path):
    dest = tmp_path / "dest"
    env = dict(os.environ, DESTDIR=str(dest))
    subprocess.run(["meson", "install", "-C", str(BUILD), "--quiet", "--no-rebuild"],
                   check=True, env=env, capture_output=True, timeout=300)
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    for want in ("man1/casfs.1", "man7/casfs.7", "man8/mount.casfs.8"):
        assert any(f.endswith("share/man/" + want) for f in files), (want, files)
    opts = json.loads(subprocess.run(["meson", "introspect", str(BUILD), "--buildoptions"],
                                     check=True, capture_output=True, text=True).stdout)
    helper_dir = next(o["value"] for o in opts if o["name"] == "mount_helper_dir")
    helper = dest / helper_dir.lstrip("/") / "mount.casfs"
    assert helper.is_file() and os.access(helper, os.X_OK), files


# ----------------------------------------------------------- mount.casfs

@pytest.fixture(scope="session")
def helper():
    if not HELPER.is_file():
        pytest.fail(f"mount.casfs is not built at {HELPER}: build the project first")
    return str(HELPER)


class Fake:
    """A stand-in for casfs that records its arguments, NUL-separated."""

    def __init__(self, tmp_path, status=0):
        self.record = tmp_path / "argv"
        self.path = tmp_path / "fake-casfs"
        self.path.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{self.record}'\nexit {status}\n")
        self.path.chmod(0o755)

    def argv(self):
        if not self.record.exists():
            return None
        return self.record.read_bytes().decode().split("\0")[:-1]


def run_helper(helper, *args, fake=None, env=None, expect=0):
    e = dict(os.environ)
    e.pop("CASFS_BIN", None)
    if fake:
        e["CASFS_BIN"] = str(fake.path)
    e.update(env or {})
    p = subprocess.run([helper] + list(args), capture_output=True, text=True, env=e, timeout=60)
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, f"sanitizer report:\n{p.stderr}"
    assert p.returncode == expect, (
        f"mount.casfs {args} exited {p.returncode}, expected {expect}\n"
        f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


@pytest.fixture
def fake(tmp_path):
    return Fake(tmp_path)


def test_fstab_only_options_are_dropped(helper, fake):
    run_helper(helper, "/srv/root", "/mnt/point", "-o",
               "noauto,user,_netdev,nofail,defaults,ro,allow_other,x-systemd.automount,comment=foo",
               fake=fake)
    assert fake.argv() == ["mount", "/srv/root", "/mnt/point", "-o", "ro,allow_other"]


def test_every_fstab_only_word_is_dropped_and_the_rest_kept_in_order(helper, fake):
    run_helper(helper, "R", "M", "-o",
               "auto,sync,users,nouser,owner,group,hash=sha1,X-mount.mkdir,x-gvfs-show,"
               "default_permissions,noexec,rw,user,nosuid",
               fake=fake)
    assert fake.argv() == ["mount", "R", "M", "-o",
                           "sync,hash=sha1,default_permissions,noexec,rw,nosuid"]


def test_only_fstab_words_give_no_o_at_all(helper, fake):
    run_helper(helper, "R", "M", "-o", "defaults,noauto,nofail", fake=fake)
    assert fake.argv() == ["mount", "R", "M"]
    run_helper(helper, "R", "M", fake=fake)
    assert fake.argv() == ["mount", "R", "M"]


def test_as_mount_8_calls_it_flags_are_accepted_and_never_passed_on(helper, fake):
    # mount(8): mount.casfs SOURCE MOUNTPOINT [-sfnv] [-o options] [-t type]
    p = run_helper(helper, "/r", "/m", "-s", "-n", "-v", "-o", "rw,noatime", "-t", "casfs",
                   fake=fake)
    assert fake.argv() == ["mount", "/r", "/m", "-o", "rw,noatime"]
    assert "mount.casfs: running " in p.stderr and "mount /r /m -o rw,noatime" in p.stderr


def test_grouped_flags_attached_values_and_several_o(helper, fake):
    run_helper(helper, "/r", "/m", "-snv", "-oro", "-o", "allow_other", "-tcasfs", fake=fake)
    assert fake.argv() == ["mount", "/r", "/m", "-o", "ro,allow_other"]


def test_a_quoted_comment_with_commas_is_one_option(helper, fake):
    run_helper(helper, "/r", "/m", "-o", 'comment="a,b",ro', fake=fake)
    assert fake.argv() == ["mount", "/r", "/m", "-o", "ro"]


def test_fake_mount_runs_nothing(helper, fake):
    p = run_helper(helper, "/r", "/m", "-fv", "-o", "ro", fake=fake)
    assert fake.argv() is None
    assert "mount /r /m -o ro" in p.stderr


def test_paths_that_look_like_options_are_made_paths(helper, fake):
    run_helper(helper, "--", "-root", "-mnt", fake=fake)
    assert fake.argv() == ["mount", "./-root", "./-mnt"]


def test_the_status_of_casfs_is_the_status_of_the_helper(helper, tmp_path):
    failing = Fake(tmp_path, status=32)
    run_helper(helper, "/r", "/m", fake=failing, expect=32)
    assert failing.argv() == ["mount", "/r", "/m"]


def test_help(helper):
    for flag in ("-h", "--help"):
        p = run_helper(helper, flag)
        assert p.stdout.startswith("usage: mount.casfs ROOT MOUNTPOINT"), p.stdout
        assert p.stderr == ""


@pytest.mark.parametrize("args, message", [
    ([], "no ROOT and MOUNTPOINT"),
    (["/r"], "no MOUNTPOINT"),
    (["/r", "/m", "/x"], "too many arguments"),
    (["/r", "/m", "-x"], "unknown option '-x'"),
    (["/r", "/m", "-o"], "-o needs a value"),
    (["/r", "/m", "-t"], "-t needs a value"),
    (["/r", "/m", "-N", "/proc/1/ns/mnt"], "-N"),
    (["", "/m"], "must not be empty"),
])
def test_bad_usage_is_one_clear_line_and_status_1(helper, fake, args, message):
    p = run_helper(helper, *args, fake=fake, expect=1)
    first = p.stderr.splitlines()[0]
    assert first.startswith("mount.casfs: ") and message in first, p.stderr
    assert len(p.stderr.splitlines()) <= 2, p.stderr  # the message, then the usage line
    assert fake.argv() is None
    assert p.stdout == ""


def test_a_casfs_that_cannot_run_is_one_clear_line_and_status_1(helper, tmp_path):
    missing = tmp_path / "no-such-casfs"
    p = run_helper(helper, "/r", "/m", env={"CASFS_BIN": str(missing)}, expect=1)
    assert p.stderr == f"mount.casfs: cannot run {missing}: No such file or directory\n"


def installed_casfs():
    opts = json.loads(subprocess.run(["meson", "introspect", str(BUILD), "--buildoptions"],
                                     check=True, capture_output=True, text=True).stdout)
    val = {o["name"]: o["value"] for o in opts}
    return pathlib.Path(val["prefix"]) / val["bindir"] / "casfs"


def test_without_casfs_bin_the_installed_casfs_then_path_is_used(helper, tmp_path):
    fake = Fake(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake.path.rename(bindir / "casfs")
    p = run_helper(helper, "-fv", "/r", "/m", env={"PATH": str(bindir)})
    installed = installed_casfs()
    if os.access(installed, os.X_OK):
        assert f"running {installed} mount /r /m" in p.stderr, p.stderr
    else:
        assert "running casfs mount /r /m" in p.stderr, p.stderr
        run_helper(helper, "/r", "/m", env={"PATH": str(bindir)})
        assert fake.argv() == ["mount", "/r", "/m"]
        p = run_helper(helper, "/r", "/m", env={"PATH": str(tmp_path / "empty")}, expect=1)
        assert p.stderr.startswith("mount.casfs: cannot find casfs"), p.stderr
