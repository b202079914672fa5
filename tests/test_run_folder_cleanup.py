"""What a killed process leaves in a run folder is removed when a run claims it again:
the hidden temporary files of atomic writes, once they are old enough that no live
process is still writing them."""

import os
import time

from transfer import runs


def test_claiming_a_run_folder_removes_stale_partial_files(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [
        run / ".model.k3j2h1.partial.keras",
        run / ".metrics.x8y7.partial.json",
        run / "checkpoints" / ".best-fine-tune.q1w2.partial.npz",
    ]
    stale_folder = run / ".export.partial-a1b2"
    fresh = run / ".history.z9z9.partial.csv"
    other = run / "notes.partial.txt"  # not hidden: not a temporary file of ours
    for path in [*stale, fresh, other]:
        path.write_bytes(b"half written")
    stale_folder.mkdir()
    (stale_folder / "saved_model.pb").write_bytes(b"x")
    old = time.time() - getattr(runs, "STALE_PARTIAL_SECONDS", 300) - 60  # minutes old
    for path in [*stale, stale_folder, other]:
        os.utime(path, (old, old))
    with runs.claimed_run_dir(run, keep=True):
        pass
    assert not any(path.exists() for path in [*stale, stale_folder])
    assert fresh.exists() and other.exists()  # may still be being written; not ours
