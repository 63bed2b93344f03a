"""Write failures: a full disk or a read-only store stops the stage with a message naming the
shard, and leaves no file that looks complete."""
import os
import subprocess
import sys

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
