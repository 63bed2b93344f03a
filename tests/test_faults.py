"""Write failures: a full disk or a read-only store stops the stage with a message naming the
shard, and leaves no file that looks complete."""
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_stages import project  # noqa: F401  (the 10-image project fixture)

# RLIMIT_FSIZE makes any write past 20 kB fail with EFBIG, as a full disk fails with ENOSPC
DISK_FULL = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)); sys.argv = ['regions']; "
             "from pipeline.stages import regions; regions.main()")


def _files(root):
    folder = root / "data/features/regions"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_disk_full_stops_the_stage_and_keeps_nothing(project):  # noqa: F811
    result = subprocess.run([sys.executable, "-c", DISK_FULL], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode != 0
    assert "regions/shard-00000.h5: cannot write the shard" in result.stderr and "File too large" in result.stderr
    assert not [f for f in _files(project) if f.endswith((".h5", ".tmp"))]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the disk-full test covers failed writes")
def test_read_only_store_is_named(project):  # noqa: F811
    from features.store import StoreError
    from pipeline.stages import regions

    (project / "data/features/regions").mkdir(parents=True)
    (project / "data/features/regions").chmod(0o555)
    try:
        with pytest.raises(StoreError, match="regions/shard-00000.h5: cannot write the shard"):
            regions.main()
    finally:
        (project / "data/features/regions").chmod(0o755)
    assert not _files(project)


# a parent (dvc) whose child (the stage) prints its pid once it runs, then sleeps
ORPHAN = ("import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', "
          "'import os, time; from pipeline.app import exit_with_parent; exit_with_parent(0.1); "
          "print(os.getpid(), flush=True); time.sleep(120)']); child.wait()")


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie waits only for its new parent to reap it


def test_a_stage_ends_when_its_dvc_parent_is_killed():
    """What `kill -9` of `dvc repro` does to a stage: its child notices the parent is gone and stops."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "the stage outlived its parent"
