"""`verify`: check a feature store against the manifest and the current parameters.

    python -m pipeline.verify [--params params.yaml]     (or the console script graphcap-verify)

Every shard of every kind must be present and complete, made for the manifest's images (ids and
file bytes; captions for clip_text) under the provenance the current parameters imply, with
coherent row counts and shapes and no NaN/Inf outside rejected rows; the keyword banks must match too. Each problem is printed on its own
line, naming the file and key; the exit code is 1 if there is any (2 for a bad params file, one line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from features.shards import shard_inputs
from features.store import StoreError, check_shard, open_shard, read_bank, shard_path, shard_slices
from pipeline.app import load_manifest, run_command, start
from pipeline.params import Params
from pipeline.paths import keyword_banks
from pipeline.provenance import expected, keyword_bank, stored_kinds


def verify_store(params: Params, manifest: dict[str, Any]) -> tuple[list[str], int]:
    """(problems, shards checked)."""
    store, images = Path(params.store.dir), manifest["images"]
    slices = shard_slices(len(images), params.store.shard_size)
    records, problems, checked = expected(params), [], 0
    for kind in stored_kinds(params):
        for index, part in enumerate(slices):
            try:
                shard = open_shard(shard_path(store, kind, index), kind, records[kind], [e["id"] for e in images[part]],
                                   shard_inputs(kind, images[part]))
            except (StoreError, OSError) as err:  # missing, unreadable, other provenance, images or captions
                problems.append(str(err))
                continue
            try:
                problems += check_shard(shard, kind)
                checked += 1
            finally:
                shard.close()
        for path in sorted((store / kind).glob("shard-*.h5")):
            if int(path.stem.split("-")[1]) >= len(slices):
                problems.append(f"{path}: beyond the manifest's {len(slices)} shards (the data set shrank?)")
        problems += [f"{path}: unfinished write (a stage was stopped); `dvc repro` redoes it"
                     for path in sorted((store / kind).glob("*.tmp"))]
    for bank in ("scene", "object"):
        try:
            read_bank(keyword_banks(store), bank, keyword_bank(params))
        except (StoreError, OSError) as err:
            problems.append(str(err))
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    return run_command("graphcap-verify", lambda: _verify_and_print(args.params))


def _verify_and_print(params_file: Path) -> int:
    params = start(params_file)
    problems, checked = verify_store(params, load_manifest())
    for problem in problems:
        print(problem)
    print(f"{params.store.dir}: {checked} shards checked, {len(problems)} problem(s)",
          file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
