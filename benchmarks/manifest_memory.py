"""What the train stage holds of the manifest, side by side in one run: the whole file parsed (how
training read it before) against the streamed, slimmed view it reads now (``training_view``).

    python benchmarks/manifest_memory.py --manifest <a data/manifest.json, e.g. a scale run's>

Each way runs in a fresh process; the figure is the peak of the Python heap while reading
(tracemalloc: the interpreter and imports excluded; it slows the reading down, so the seconds
are measured apart, in a second read without it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.datasets import read_manifest, write_manifest  # noqa: E402
from pipeline.app import load_manifest  # noqa: E402
from pipeline.training import training_view  # noqa: E402

WAYS = ("whole", "training_view")


def _read(way: str, path: Path) -> dict:
    return json.loads(path.read_text()) if way == "whole" else load_manifest(path, keep=training_view)


def measure(way: str, path: Path) -> dict[str, float]:
    """In this process: read ``path`` one way; the heap's peak while reading, what stays, seconds."""
    started = time.perf_counter()
    images = len(_read(way, path)["images"])
    seconds = time.perf_counter() - started
    tracemalloc.start()
    manifest = _read(way, path)
    kept, peak = tracemalloc.get_traced_memory()
    del manifest
    return {"images": images, "peak_mb": peak / 1e6, "kept_mb": kept / 1e6, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(measure(args.way, args.manifest)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        streamed = Path(tmp) / "manifest.json"  # in prepare's layout, whatever wrote the input
        write_manifest(streamed, read_manifest(args.manifest))
        rows = {way: json.loads(subprocess.run([sys.executable, __file__, "--manifest", str(streamed), "--way", way],
                                               check=True, capture_output=True, text=True).stdout)
                for way in WAYS}
        size_mb = streamed.stat().st_size / 1e6
    print(f"manifest: {rows['whole']['images']:,} images, {size_mb:.0f} MB on disk")
    for way, row in rows.items():
        print(f"  {way:<14} peak {row['peak_mb']:7.0f} MB, kept {row['kept_mb']:7.0f} MB (Python heap), "
              f"{row['seconds']:6.1f} s")
    print(f"  training_view / whole: peak {rows['training_view']['peak_mb'] / rows['whole']['peak_mb']:.2f}, "
          f"kept {rows['training_view']['kept_mb'] / rows['whole']['kept_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
