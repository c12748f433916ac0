"""The journal stays bounded on the dir backend: it rotates into journal.1
and `events` reads both, oldest first (a rados: root's journal is never
rotated, by design)."""
import json
import os

import pytest


def test_journal_rotates_and_stays_bounded(casfs, store, tmp_path):
    env = dict(os.environ, CASFS_JOURNAL_MAX="4096")
    digests = []
    for i in range(120):
        f = tmp_path / f"f{i}"
        f.write_text(f"content {i}")
        digests.append(casfs.out("store-at-label", store, f"l{i}", f, env=env))
    if casfs.spec is None:
        meta = casfs.root / store / ".casfs"
        journal = meta / "journal"
        rotated = meta / "journal.1"
        assert rotated.exists(), "journal was never rotated"
        # Each file stays near the limit: one line over at most.
        assert journal.stat().st_size <= 4096 + 1024
        assert rotated.stat().st_size <= 4096 + 1024
    lines = casfs.out("events", store).splitlines()
    events = [json.loads(line) for line in lines]
    # Oldest first, and the newest operation is the last line.
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert events[-1]["label"] == "l119" and events[-1]["digest"] == digests[-1]
    # Bounded: far fewer lines than the 120 operations made (a rados:
    # root's journal is never rotated, see casfs(7)).
    if casfs.spec is None:
        assert len(events) < 120


@pytest.mark.dir_only  # traces the directory backend's fdatasync of its journal file
def test_label_changes_are_journaled_durably(casfs, store, tmp_path):
    """SPEC §6: label history is never silently lost, so the journal line of
    a label change is synced before the command returns (checked with
    strace: there is no power cut to pull here)."""
    import shutil
    import subprocess
    strace = shutil.which("strace")
    assert strace, "strace is missing: add it to scripts/install-deps"
    f = tmp_path / "c"
    f.write_bytes(b"content")
    d = casfs.out("store", store, f)
    log = tmp_path / "strace.log"
    subprocess.run([strace, "-f", "-qq", "-e", "trace=openat,fdatasync", "-o", str(log),
                    casfs.exe, "--root", str(casfs.root), "label", store, "l", d], check=True,
                   capture_output=True,
                   # LeakSanitizer cannot run under ptrace; the other suites check leaks.
                   env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    lines = log.read_text().splitlines()
    jfd = None
    synced = False
    for line in lines:
        if '"journal"' in line and "openat(" in line and "= " in line:
            jfd = line.rsplit("= ", 1)[1].split()[0]
        elif jfd is not None and f"fdatasync({jfd})" in line:
            synced = True
    assert jfd is not None, "the journal was not opened:\n" + "\n".join(lines)
    assert synced, "the journal line of a label change was not synced:\n" + "\n".join(lines)
