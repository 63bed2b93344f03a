"""`make paper-check`'s guards (the run itself is CI's second command): it refuses to start
without the disk a run needs, and a failed run leaves its log, not gigabytes of weights."""
import tempfile

from tests.conftest import REAL_SAMPLE, real_photos
from tools import paper_check


def test_refuses_to_start_without_enough_disk(monkeypatch, tmp_path, capsys):
    real_photos()  # skips where the real sample is absent (paper-check's first check)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches its folder: read TMPDIR again
    monkeypatch.setattr(paper_check, "DISK_NEEDED", 2**70)  # more than any disk has
    assert paper_check.main(["--real-sample", str(REAL_SAMPLE)]) == 2
    message = capsys.readouterr().err
    assert str(tmp_path) in message and "GB free" in message and "TMPDIR" in message
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_a_failed_run_keeps_its_log_only(tmp_path):
    project = tmp_path / "project"
    (project / "weights").mkdir(parents=True)
    (project / "weights/clip.safetensors").write_bytes(b"\0" * 1024)
    (project / "repro.log").write_text("ERROR: failed to reproduce 'train'\n")
    message = paper_check._after_failure(tmp_path, keep=False)
    assert not project.exists()
    assert (tmp_path / "repro.log").read_text().startswith("ERROR: failed to reproduce 'train'")
    assert str(tmp_path / "repro.log") in message and "--keep" in message


def test_keep_keeps_a_failed_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "repro.log").write_text("ERROR\n")
    assert str(project) in paper_check._after_failure(tmp_path, keep=True)
    assert (project / "repro.log").is_file()
