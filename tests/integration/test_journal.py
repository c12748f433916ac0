"""The journal stays bounded: it rotates into journal.1 and `events` reads
both, oldest first."""
import json
import os


def test_journal_rotates_and_stays_bounded(casfs, store, tmp_path):
    env = dict(os.environ, CASFS_JOURNAL_MAX="4096")
    meta = casfs.root / store / ".casfs"
    digests = []
    for i in range(120):
        f = tmp_path / f"f{i}"
        f.write_text(f"content {i}")
        digests.append(casfs.out("store-at-label", store, f"l{i}", f, env=env))
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
    # Bounded: far fewer lines than the 120 operations made.
    assert len(events) < 120
