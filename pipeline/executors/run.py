"""One round of a stage's missing shards handed to an engine: a folder on the file system every
worker shares (``.graphcap/runs/<kind>-<round>/`` in the project), holding the shard list, one
claim file per shard a worker has taken, each worker's report and its log."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS = Path(".graphcap/runs")  # git- and dvc-ignored


@dataclass(frozen=True)
class ShardRun:
    kind: str
    shards: list[int]
    folder: Path  # absolute: workers on other machines find it on the shared file system

    @classmethod
    def create(cls, kind: str, shards: list[int], round_: int) -> "ShardRun":
        folder = (RUNS / f"{kind}-{round_}").resolve()
        shutil.rmtree(folder, ignore_errors=True)  # an earlier stage run's round of the same number
        for sub in ("claims", "workers", "logs"):
            (folder / sub).mkdir(parents=True)
        (folder / "shards.json").write_text(json.dumps({"kind": kind, "shards": shards}))
        return cls(kind, shards, folder)

    @classmethod
    def open(cls, folder: Path) -> "ShardRun":
        spec = json.loads((Path(folder) / "shards.json").read_text())
        return cls(spec["kind"], spec["shards"], Path(folder).resolve())

    @property
    def project(self) -> Path:
        return self.folder.parents[2]

    def worker_command(self) -> list[str]:
        """What a worker process runs (from the project root): the stage itself, as a worker."""
        return [sys.executable, "-m", f"pipeline.stages.{self.kind}", "--worker", str(self.folder)]

    def claim(self, index: int) -> bool:
        """Take shard ``index`` unless another worker has: an exclusive create, atomic on local
        file systems and on NFS v3+, so no two workers of a round compute the same shard."""
        try:
            os.close(os.open(self.folder / "claims" / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def save_report(self, report: dict[str, Any]) -> None:
        path = self.folder / "workers" / f"{report['host']}-{report['pid']}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.folder / "workers").glob("*.json"))]

    def failures(self) -> dict[int, str]:
        """shard → why a worker failed on it; a shard a killed worker had taken has no entry."""
        return {int(index): reason for report in self.reports() for index, reason in report["failed"].items()}
