"""The HDF5 feature store: the one module that knows the shard schema.

Layout: ``<store>/<kind>/shard-00000.h5`` where shard ``i`` holds the manifest entries
``[i * shard_size, (i + 1) * shard_size)`` in manifest order. Every shard file carries, as root
attributes, its ``kind``, the ``schema_version``, the manifest slice it covers, a JSON
``provenance`` record (producing model, weights hash, preprocessing parameters, code version) and
``inputs``, a digest of what its rows were computed from (the images' bytes, or the captions).
Readers compare the stored provenance with what the caller expects and refuse a mismatch with an
error that names the differing key; a caller that knows the inputs' digest checks it too. Shards are written under a temporary name and renamed when
complete, so a shard that exists is whole.

Kinds and their datasets (n = images in the shard):

==========  =====================================================================================
clip_image  ``embeddings`` (n, d) float16 — CLIP global image embeddings (not normalised);
            with ``clip.cache_tokens`` also ``tokens`` (n, L, width) float16 — the ViT tokens
            entering the last two blocks ((n, 50, 768) for ViT-B/32), to fine-tune those blocks
regions     ``features`` (n, N_max, D) float16, ``boxes`` (n, N_max, 4) float32 in pixels (x0, y0,
            x1, y1), ``scores`` (n, N_max) float16, ``labels`` (n, N_max) int32, ``counts`` (n,)
            int32, ``image_sizes`` (n, 2) int32 as (height, width) — padded to N_max with zeros;
            rows past ``counts`` are padding, never features
knn         ``neighbors`` (n, N_max, K) int32 (-1 = none), ``weights`` (n, N_max, K) float16 —
            directed K nearest neighbours per region with Gaussian edge weights
clip_text   ``embeddings`` (m, d) float16 over all captions of the shard, ``offsets`` (n + 1,)
            int64 — captions of image j are rows offsets[j]:offsets[j+1]
region_     ``ids`` (n, N_max, k) int32 — object-bank keyword ids per region (-1 = none),
keywords    ``scores`` (n, N_max, k) float16 — region score (labels) or cosine (retrieval)
region_clip ``embeddings`` (n, N_max, d) float16 — CLIP image embedding of each region's crop
            (not normalised; zeros past ``counts``)
==========  =====================================================================================

Every kind also stores ``image_ids`` (n,) as UTF-8 strings, checked against the manifest, and
``valid`` (n,) bool: False for images rejected at extraction (unreadable, unusable). Rejected
rows hold NaN, never a made-up feature, and readers refuse to serve them; the reasons are in the
``rejects`` attribute (JSON list of {id, file, reason}). Keyword banks live in
``<store>/keywords.h5`` (see :func:`write_bank`).

Ragged regions are stored padded to N_max with a count rather than flat with offsets: a batch
reads one contiguous row per image either way, and the padded layout keeps every row addressable
without an offsets table. Datasets are uncompressed, so the padding is stored as zeros
(docs/features.md has the measured sizes).

Integrity: every dataset is chunked (about :data:`CHUNK_BYTES` a chunk, whole rows) with HDF5's
Fletcher-32 checksum, which HDF5 verifies on every read; the file format (``libver`` v110) gives
the metadata — superblock, object headers with the attributes, chunk indexes — checksums of its
own, and every text (attributes, image ids) is stored fixed-length so that it lives in those
checksummed blocks rather than in HDF5's unchecked global heap. A damaged byte anywhere a shard
holds data therefore fails the read that touches it; :func:`check_shard` reads every byte. What
is left unchecked is space HDF5 leaves unused (at most ~1 KB a file, measured; tests/test_verify.py
flips every 16-byte window of a shard), which holds no value: a flip there changes nothing read.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from features.errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: checksummed chunks and fixed-length texts (1: contiguous, unchecked)
KINDS = ("clip_image", "regions", "knn", "clip_text", "region_keywords", "region_clip")
OPTIONAL_KINDS = ("region_clip",)  # made only when the parameters ask for them (store.optional_kinds)
CHUNK_BYTES = 16 * 2**10  # a chunk holds whole rows up to about this size: a random row reads little more than itself
LIBVER = ("v110", "latest")  # file format versions whose metadata carry checksums


def _create(where: h5py.Group, name: str, data: np.ndarray) -> None:
    """A dataset checksummed (Fletcher-32) by chunks of whole rows."""
    data = np.asarray(data)
    if data.size == 0:  # nothing to checksum, and HDF5 has no empty chunks
        where.create_dataset(name, data=data)
        return
    row_bytes = max(1, data[:1].nbytes)
    chunk_rows = int(min(len(data), max(1, CHUNK_BYTES // row_bytes)))
    where.create_dataset(name, data=data, chunks=(chunk_rows, *data.shape[1:]), fletcher32=True)


def _texts(values: Sequence[str]) -> np.ndarray:
    """Strings as fixed-length UTF-8 bytes (held in checksummed chunks, unlike HDF5's variable-length strings)."""
    return np.array([v.encode() for v in values], dtype=bytes)


def _set_text(attrs: h5py.AttributeManager, name: str, value: str) -> None:
    attrs.create(name, np.bytes_(value.encode()))  # fixed length: stored in the checksummed object header


def _text(attrs: h5py.AttributeManager, name: str, default: str = "") -> str:
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def shard_path(store: Path, kind: str, index: int) -> Path:
    return Path(store) / kind / f"shard-{index:05d}.h5"


def shard_slices(n_images: int, shard_size: int) -> list[slice]:
    """The fixed, deterministic manifest slice of every shard."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    return [slice(start, min(start + shard_size, n_images)) for start in range(0, n_images, shard_size)]


def write_shard(path: Path, kind: str, image_ids: Sequence[str], arrays: Mapping[str, np.ndarray],
                provenance: Mapping[str, Any], first_index: int, rejects: Sequence[Mapping[str, str]] = (),
                inputs: str = "") -> None:
    """Write one complete shard atomically (temporary file, fsync, rename). ``rejects`` lists the
    images of this slice that could not be used, as {"id", "file", "reason"}; ``inputs`` is the
    digest of what the rows were computed from."""
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; known: {KINDS}")
    path = Path(path)
    # a name of its own per writer: two workers handed the same shard (a retry while the first
    # still runs) each write a whole file, and the last rename wins
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(tmp, kind, image_ids, arrays, provenance, first_index, rejects, inputs)
        tmp.replace(path)
    except (OSError, RuntimeError) as err:  # disk full, read-only folder, quota (h5py reports some as
        tmp.unlink(missing_ok=True)          # RuntimeError): stop, leaving nothing that looks complete
        reason = getattr(err, "strerror", None) or str(err)
        raise StoreError(f"{path}: cannot write the shard ({reason}); nothing was kept — free space or fix "
                         "permissions, then run the stage again") from err


def _write_file(tmp: Path, kind: str, image_ids: Sequence[str], arrays: Mapping[str, np.ndarray],
                provenance: Mapping[str, Any], first_index: int, rejects: Sequence[Mapping[str, str]],
                inputs: str) -> None:
    # meta_block_size 0: no partly filled metadata blocks, so fewer unused (unchecked) bytes
    with h5py.File(tmp, "w", libver=LIBVER, meta_block_size=0) as f:
        _set_text(f.attrs, "kind", kind)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["first_index"] = first_index
        _set_text(f.attrs, "provenance", json.dumps(dict(provenance), sort_keys=True))
        _set_text(f.attrs, "rejects", json.dumps(list(map(dict, rejects))))
        _set_text(f.attrs, "inputs", inputs)
        _create(f, "image_ids", _texts(image_ids))
        rejected = {r["id"] for r in rejects}
        _create(f, "valid", np.array([i not in rejected for i in image_ids], dtype=bool))
        for name, array in arrays.items():
            _create(f, name, array)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


def check_provenance(path: Path, stored: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a shard whose provenance differs from ``expected`` on any key ``expected`` names."""
    for key, value in expected.items():
        if key not in stored:
            raise StoreError(f"{path}: provenance has no key {key!r} (made by another version?)")
        if json.dumps(stored[key], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise StoreError(
                f"{path}: provenance key {key!r} differs: stored {stored[key]!r}, expected {value!r}; "
                "re-run the stage that makes these features"
            )


@dataclass
class Shard:
    """An open, validated shard. Datasets are read lazily through :meth:`read`."""

    path: Path
    file: h5py.File
    first_index: int
    image_ids: list[str]
    valid: np.ndarray  # (n,) bool
    rejects: list[dict[str, str]]
    offsets: np.ndarray | None = None  # clip_text: caption offsets, read once on first use
    _datasets: dict[str, h5py.Dataset] = field(default_factory=dict)

    def check_valid(self, row: int) -> None:
        if not self.valid[row]:
            reason = next((r["reason"] for r in self.rejects if r["id"] == self.image_ids[row]), "unknown")
            raise StoreError(f"{self.path}: image {self.image_ids[row]} was rejected at extraction ({reason})")

    def read(self, name: str, rows: slice | int | list[int] | None = None) -> np.ndarray:
        """Rows of one dataset; their chunks' checksums are verified by HDF5 as they are read."""
        try:
            dataset = self._datasets.get(name)
            if dataset is None:  # h5py name lookups cost more than small reads: look each up once
                if name not in self.file:
                    raise StoreError(f"{self.path}: no dataset {name!r}")
                dataset = self._datasets[name] = self.file[name]
            if rows is None:
                return dataset[()]
            return _read_runs(dataset, rows) if isinstance(rows, list) else dataset[rows]
        except (OSError, KeyError, ValueError) as err:  # a chunk's or the dataset header's checksum fails
            raise StoreError(f"{self.path}: {name!r} is damaged ({err}); `dvc repro` recomputes the shard") from err

    def close(self) -> None:
        self.file.close()


SPAN_BYTES = 256 * 2**10  # rows spanning at most this are read in one slice and picked in memory


def _read_runs(dataset: h5py.Dataset, rows: list[int]) -> np.ndarray:
    """Rows (increasing) read as slices: h5py's list selection on a chunked dataset costs up to
    ~10 ms a row (measured, benchmarks/checksums.py), a slice ~40 µs. Small rows (counts, boxes)
    are read as the one slice spanning them: 32 of 1,000 demo boxes in 0.06 ms, not 1.3 ms."""
    if not rows:
        return dataset[0:0]
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))
    if (rows[-1] - rows[0] + 1) * row_bytes <= SPAN_BYTES:
        return dataset[rows[0]:rows[-1] + 1][np.asarray(rows) - rows[0]]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = np.split(np.asarray(rows), breaks)
    return np.concatenate([dataset[int(run[0]):int(run[-1]) + 1] for run in runs])


def open_shard(path: Path, kind: str, expected: Mapping[str, Any], image_ids: Sequence[str] | None = None,
               inputs: str | None = None) -> Shard:
    """Open a shard for reading after checking kind, schema, provenance, and, where given, the
    image ids and the inputs' digest."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: missing shard (run `dvc repro` for the {kind} stage)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # truncated or not HDF5: not something a stage of ours leaves behind
        raise StoreError(f"{path}: unreadable shard ({err}); `dvc repro` recomputes it") from err
    try:
        return _checked_shard(path, f, kind, expected, image_ids, inputs)
    except (OSError, KeyError, ValueError) as err:  # a checksum fails, or an attribute is missing or garbled
        f.close()
        raise StoreError(f"{path}: damaged shard ({type(err).__name__}: {err}); `dvc repro` recomputes it") from err
    except Exception:
        f.close()
        raise


def _checked_shard(path: Path, f: h5py.File, kind: str, expected: Mapping[str, Any],
                   image_ids: Sequence[str] | None, inputs: str | None) -> Shard:
    if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema_version {f.attrs.get('schema_version')} != {SCHEMA_VERSION} "
                         "(made by another version); `dvc repro` recomputes it")
    if _text(f.attrs, "kind") != kind:
        raise StoreError(f"{path}: kind is {_text(f.attrs, 'kind')!r}, expected {kind!r}")
    check_provenance(path, json.loads(_text(f.attrs, "provenance")), expected)
    stored_ids = [s.decode() for s in f["image_ids"][()]]
    if image_ids is not None and list(image_ids) != stored_ids:
        raise StoreError(f"{path}: image ids differ from the manifest slice; the manifest changed")
    if inputs is not None and _text(f.attrs, "inputs") != inputs:
        raise StoreError(f"{path}: computed from other inputs (an image file or a caption of its slice "
                         "changed since); re-run the stage that makes these features")
    return Shard(path, f, int(f.attrs["first_index"]), stored_ids, f["valid"][()], json.loads(_text(f.attrs, "rejects")))


# datasets every shard of a kind holds (beyond image_ids and valid), and those with one row per image
REQUIRED = {
    "clip_image": ("embeddings",),
    "regions": ("features", "boxes", "scores", "labels", "counts", "image_sizes"),
    "knn": ("neighbors", "weights"),
    "clip_text": ("embeddings", "offsets"),
    "region_keywords": ("ids", "scores"),
    "region_clip": ("embeddings",),
}


def nonfinite_rows(kind: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """dataset name → the images (rows) whose values in it are not all finite; a caption
    embedding of clip_text counts against its image (through ``offsets``)."""
    found = {}
    for name, data in arrays.items():
        if data.dtype.kind != "f" or not len(data):
            continue
        bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
        if (kind, name) == ("clip_text", "embeddings"):
            offsets = np.asarray(arrays["offsets"])
            bad = np.array([bad[a:b].any() for a, b in zip(offsets[:-1], offsets[1:])], dtype=bool)
        if bad.any():
            found[name] = np.flatnonzero(bad)
    return found


def check_shard(shard: Shard, kind: str) -> list[str]:
    """Every problem of one open shard's contents, each naming the shard and dataset: bytes that
    fail a checksum (every byte is read), missing datasets, row counts that disagree, NaN/Inf in
    rows marked valid, out-of-range counts, neighbour indices and caption offsets."""
    try:
        return _content_problems(shard, kind)
    except StoreError as err:  # a dataset's chunk fails its checksum (named by Shard.read)
        return [str(err)]
    except (OSError, KeyError, ValueError) as err:  # h5py: a dataset's header fails its checksum
        return [f"{shard.path}: damaged shard ({type(err).__name__}: {err}); `dvc repro` recomputes it"]


def _content_problems(shard: Shard, kind: str) -> list[str]:
    n, valid = len(shard.image_ids), shard.valid
    missing = [name for name in REQUIRED[kind] if name not in shard.file]
    if missing:
        return [f"{shard.path}: missing datasets {missing}"]
    expected_rows = {name: n for name in shard.file}  # one row per image ...
    if kind == "clip_text":  # ... except the captions' embeddings and their offsets
        expected_rows.update(offsets=n + 1, embeddings=shard.file["embeddings"].shape[0])
    problems = [f"{shard.path}: {name!r} has {shard.file[name].shape[0]} rows, expected {rows}"
                for name, rows in expected_rows.items() if shard.file[name].shape[:1] != (rows,)]
    if problems:
        return problems
    data = {name: shard.read(name) for name in shard.file}  # every byte: each chunk's checksum is verified
    for name, rows in nonfinite_rows(kind, {k: v for k, v in data.items() if k not in ("image_ids", "valid")}).items():
        if (valid[rows]).any():  # rejected rows hold NaN
            problems.append(f"{shard.path}: {name!r} has NaN/Inf in {int(valid[rows].sum())} rows that are not rejected")
    if kind == "clip_text":
        offsets = data["offsets"]
        if offsets[0] != 0 or offsets[-1] != expected_rows["embeddings"] or (np.diff(offsets) < 0).any():
            problems.append(f"{shard.path}: 'offsets' do not partition the caption embeddings")
    if kind == "regions":
        counts, n_max = data["counts"], data["features"].shape[1]
        if ((counts < 0) | (counts > n_max))[valid].any():
            problems.append(f"{shard.path}: 'counts' outside [0, {n_max}]")
    if kind == "knn":
        neighbors = data["neighbors"]
        if ((neighbors < -1) | (neighbors >= neighbors.shape[1]))[valid].any():
            problems.append(f"{shard.path}: 'neighbors' index outside [-1, {neighbors.shape[1]})")
    return problems


class FeatureReader:
    """Random access by manifest index over one kind's shards; files open lazily, on first use
    in the process that uses them (so each DataLoader worker gets its own handles). At most
    ``max_open`` shards stay open (least recently used closed first), so memory does not grow
    with the number of shards."""

    def __init__(self, store: Path, kind: str, shard_size: int, n_images: int, expected: Mapping[str, Any],
                 max_open: int = 16):
        self.store, self.kind, self.shard_size, self.expected = Path(store), kind, shard_size, dict(expected)
        self.n_shards = len(shard_slices(n_images, shard_size))
        self.max_open = max_open
        self._open: OrderedDict[int, Shard] = OrderedDict()
        self._pid = os.getpid()

    def shard(self, index: int) -> Shard:
        if os.getpid() != self._pid:  # forked into a worker: never share HDF5 handles
            self._open, self._pid = OrderedDict(), os.getpid()
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)[1].close()
        self._open[index] = open_shard(shard_path(self.store, self.kind, index), self.kind, self.expected)
        return self._open[index]

    def validate_all(self) -> None:
        """Open every shard once, so a bad store fails before training starts."""
        for i in range(self.n_shards):
            self.shard(i)

    def is_valid(self, manifest_index: int) -> bool:
        shard = self.shard(manifest_index // self.shard_size)
        return bool(shard.valid[manifest_index - shard.first_index])

    def rejects(self) -> list[dict[str, str]]:
        return [r for i in range(self.n_shards) for r in self.shard(i).rejects]

    def row(self, manifest_index: int, name: str) -> np.ndarray:
        return self.rows([manifest_index], name)[0]

    def _by_shard(self, manifest_indices: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """shard → (positions in the request, rows in the shard), every row checked valid."""
        indices = np.asarray(manifest_indices, dtype=np.int64)
        shard_of = indices // self.shard_size
        groups = {}
        for shard_index in np.unique(shard_of).tolist():
            positions = np.flatnonzero(shard_of == shard_index)
            shard = self.shard(shard_index)
            rows = indices[positions] - shard.first_index
            for row in rows[~shard.valid[rows]][:1]:
                shard.check_valid(int(row))  # raises, naming the image and why it was rejected
            groups[shard_index] = (positions, rows)
        return groups

    def rows(self, manifest_indices: Sequence[int], name: str) -> list[np.ndarray]:
        """One dataset's rows for many images, with one HDF5 read per shard (not per image):
        per-read overhead, not bytes, is what limits random access."""
        out: list[np.ndarray] = [None] * len(manifest_indices)  # type: ignore[list-item]
        for shard_index, (positions, rows) in self._by_shard(manifest_indices).items():
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing rows
            block = self.shard(shard_index).read(name, unique.tolist())
            for position, k in zip(positions.tolist(), inverse.tolist()):
                out[position] = block[k]
        return out

    def captions(self, manifest_indices: Sequence[int]) -> list[np.ndarray]:
        """clip_text only: each image's caption embeddings (n_captions, d), one read per shard."""
        out: list[np.ndarray] = [None] * len(manifest_indices)  # type: ignore[list-item]
        for shard_index, (positions, rows) in self._by_shard(manifest_indices).items():
            shard = self.shard(shard_index)
            if shard.offsets is None:
                shard.offsets = shard.read("offsets")  # (n + 1,) integers per shard: kept, it is tiny
            spans = {row: range(int(shard.offsets[row]), int(shard.offsets[row + 1])) for row in rows.tolist()}
            unique = sorted({r for span in spans.values() for r in span})
            block = shard.read("embeddings", unique)
            where = {r: k for k, r in enumerate(unique)}
            for position, row in zip(positions.tolist(), rows.tolist()):
                out[position] = block[[where[r] for r in spans[row]]]
        return out

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
        self._open.clear()


def write_bank(path: Path, name: str, words: Sequence[str], embeddings: np.ndarray,
               provenance: Mapping[str, Any]) -> None:
    """Write (or replace) one keyword bank in ``keywords.h5``: the words and their embeddings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{name}.tmp")
    if path.exists():
        tmp.write_bytes(path.read_bytes())
    with h5py.File(tmp, "a", libver=LIBVER) as f:
        if name in f:
            del f[name]
        group = f.create_group(name)
        group.attrs["schema_version"] = SCHEMA_VERSION
        _set_text(group.attrs, "provenance", json.dumps(dict(provenance), sort_keys=True))
        _create(group, "words", _texts(words))
        _create(group, "embeddings", embeddings.astype(np.float16))
    tmp.replace(path)


def read_bank(path: Path, name: str, expected: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: missing keyword bank file (run the clip_text stage)")
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise StoreError(f"{path}: no keyword bank {name!r}")
            group = f[name]
            if int(group.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                raise StoreError(f"{path}/{name}: schema_version {group.attrs.get('schema_version')} != "
                                 f"{SCHEMA_VERSION}; re-run the clip_text stage")
            check_provenance(path / name, json.loads(_text(group.attrs, "provenance")), expected)
            words = [w.decode() for w in group["words"][()]]
            return words, group["embeddings"][()].astype(np.float32)
    except (OSError, KeyError, ValueError) as err:  # not HDF5, or a checksum fails
        raise StoreError(f"{path}: damaged keyword bank {name!r} ({type(err).__name__}: {err}); "
                         "re-run the clip_text stage") from err
