"""`beam-curator dedup`: find duplicates in curated outputs' parquet, as a Beam pipeline.

Reads only the parquet beside the tars (never the tars), and writes removal lists:
`REMOVAL_DIR/duplicates-{method}-{n}.parquet` with `id` (the image_id to remove), `kept_id` (the image
kept in its place), `method`, `distance` (Hamming bits, or 1 - cosine), `keep` (the policy that chose
the kept copy) and `original_path` (where the removed image came from). The algorithms are in
beam_curator.dedup.algorithms; here is how the work is spread:

- exact: rows keyed by `sha256`, a GroupByKey; the group keeps one copy (see `keep`).
- perceptual: each hash keyed by each of its max_hamming + 1 bands (two hashes within max_hamming
  bits share a band exactly), a GroupByKey per band value, pairs verified by Hamming distance in
  each group; the pairs (duplicates only) are gathered on one worker, which joins them into connected
  components (union-find) and keeps one copy of each.
- semantic (SemDeDup): spherical k-means fitted on a deterministic sample (the sample_size rows with
  the smallest id digests), every embedding assigned to its nearest centroid in chunks, a GroupByKey
  per cluster, and the greedy removal within each cluster computed in blocks.

keep: "largest" (most pixels, then larger file, then smaller id) or "smallest-id"; semantic dedup also
NeMo Curator's "hard", "easy" and "random" rankings. Removal is by id, so the ids of the inputs must be
unique: a step checks it, and nothing is written when two images share one (DuplicateIdsError).

No worker holds all hashes or embeddings: a band group, a cluster, or the duplicate pairs at most.
The output is deterministic: the same input gives the same rows, sorted by id, in the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beam_curator import storage
from beam_curator.dedup.removal import id_digest
from beam_curator.errors import DuplicateIdsError
from beam_curator.output.layout import duplicates_name, kind_of
from beam_curator.transforms.gather import GatherAll

__all__ = [
    "COLUMNS",
    "DEDUP_SCHEMA",
    "KEEP",
    "METHODS",
    "FindDuplicates",
    "FoundDuplicates",
    "WriteDuplicates",
    "list_parquet",
]

_LOG = logging.getLogger(__name__)
METHODS = ("exact", "perceptual", "semantic")
KEEP = {"exact": ("largest", "smallest-id"), "perceptual": ("largest", "smallest-id"),
        "semantic": ("largest", "smallest-id", "hard", "easy", "random")}
DEDUP_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("kept_id", pa.string(), nullable=False),
                          pa.field("method", pa.string(), nullable=False), pa.field("distance", pa.float64()),
                          pa.field("keep", pa.string()), pa.field("original_path", pa.string())])
COLUMNS = {"exact": "sha256", "perceptual": "phash", "semantic": "embedding"}
_CHUNK_ROWS = 8192  # rows per parquet batch read and per assignment call
_COLLISIONS_SHOWN = 5


def list_parquet(inputs: Sequence[str]) -> list[str]:
    """The curated parquet (images-*.parquet) of each input directory, sorted."""
    files = []
    for directory in inputs:
        found = [path for path in storage.match_files(storage.join(directory, "*.parquet"))
                 if kind_of(path.rsplit("/", 1)[-1]) == "shard"]
        if not found:
            raise FileNotFoundError(f"{directory} holds no curated parquet (images-*.parquet): point dedup at "
                                    "directories `beam-curator curate` or `prune` wrote")
        files += found
    return sorted(files)


class _Chunk(NamedTuple):
    """One parquet record batch's rows that have the method's value: ids, values (sha256 str, phash int
    or an n x d float32 array), (pixels, file size) and original_path per row; and how many rows lacked it."""

    ids: list
    values: Any
    sizes: list
    origins: list
    missing: int


def _read_chunks(path: str, column: str):
    import pyarrow.parquet as pq

    with storage.open_read(path) as handle:
        parquet = pq.ParquetFile(handle)
        if column not in parquet.schema_arrow.names:
            raise ValueError(f"{path} has no {column!r} column: curate it with this version"
                             + (" and --phash" if column == "phash" else " and --embed" if column == "embedding" else ""))
        extra = [name for name in ("width", "height", "file_size", "original_path") if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=["image_id", column, *extra], batch_size=_CHUNK_ROWS):
            table = pa.Table.from_batches([batch])
            values = table.column(column).combine_chunks()
            present = values.is_valid()
            rows = table.filter(present)
            ids = rows.column("image_id").to_pylist()

            def get(name, rows=rows):
                return rows.column(name).to_pylist() if name in extra else [None] * rows.num_rows

            sizes = [((width or 0) * (height or 0), size or 0)
                     for width, height, size in zip(get("width"), get("height"), get("file_size"))]
            values = values.filter(present)
            if column == "embedding":
                lengths = set(values.value_lengths().to_pylist())
                if len(lengths) > 1:
                    raise ValueError(f"{path}: embeddings of different sizes {sorted(lengths)}: dedup the outputs "
                                     "of one model at a time")
                flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                values = flat.reshape(len(ids), -1) if ids else np.zeros((0, 0), np.float32)
            else:
                values = values.to_pylist()
            yield _Chunk(ids, values, sizes, get("original_path"), values_missing(batch, column))


def values_missing(batch, column: str) -> int:
    return batch.column(batch.schema.get_field_index(column)).null_count


def _row(removed: tuple, kept_id: str, method: str, distance: float, keep: str) -> dict:
    """A removal row; removed = (id, pixels, file size, original_path)."""
    return {"id": removed[0], "kept_id": kept_id, "method": method, "distance": float(distance), "keep": keep,
            "original_path": removed[3]}


def _keeper(members, keep: str):
    from beam_curator.dedup.algorithms import keep_rank

    return min(members, key=lambda member: keep_rank(keep, member[0], member[1], member[2]))


# --- ids ---------------------------------------------------------------------------------------------

def _check_unique(collisions: list) -> int:
    """Raise DuplicateIdsError naming a few ids two images share; else 0 (the gate's value)."""
    if collisions:
        shown = ", ".join(f"{image_id} ({count} images)" for count, image_id in sorted(collisions, reverse=True))
        raise DuplicateIdsError(
            f"the inputs hold different images under one id (e.g. {shown}): removal by id would remove the wrong "
            "image. Give each output once; outputs curated from the same source shards hold the same ids: dedup "
            "one of them; outputs curated by a version before ids were made unique must be curated again")
    return 0


# --- exact -------------------------------------------------------------------------------------------

def _exact_members(chunk: _Chunk):
    for image_id, sha256, (pixels, size), origin in zip(chunk.ids, chunk.values, chunk.sizes, chunk.origins):
        yield sha256, (image_id, pixels, size, origin)


def _exact_group(item, keep: str):
    _, members = item
    members = sorted(set(members))
    kept = _keeper(members, keep)
    for member in members:
        if member != kept:
            yield _row(member, kept[0], "exact", 0.0, keep)


# --- perceptual --------------------------------------------------------------------------------------

def _band_items(chunk: _Chunk, bands):
    from beam_curator.dedup.algorithms import band_keys

    for image_id, phash, (pixels, size), origin in zip(chunk.ids, chunk.values, chunk.sizes, chunk.origins):
        for key in band_keys(phash, bands):
            yield key, (image_id, phash, pixels, size, origin)


def _band_pairs(item, max_hamming: int):
    from beam_curator.dedup.algorithms import close_pairs

    _, members = item
    members = sorted(set(members))
    if len(members) < 2:
        return
    by_id = {member[0]: member for member in members}
    for a, b, distance in close_pairs([m[0] for m in members], [m[1] for m in members], max_hamming):
        yield by_id[a], by_id[b], distance


def _components(pairs, keep: str):
    from beam_curator.dedup.algorithms import connected_components, hamming

    members = {}
    for a, b, _ in pairs:
        members[a[0]], members[b[0]] = a, b
    roots = connected_components((a[0], b[0]) for a, b, _ in pairs)
    groups: dict[str, list] = {}
    for image_id, root in roots.items():
        groups.setdefault(root, []).append(members[image_id])
    for root in sorted(groups):
        group = groups[root]
        kept = _keeper([(m[0], m[2], m[3], m[4]) for m in group], keep)
        kept_hash = members[kept[0]][1]
        for member in sorted(group):
            if member[0] != kept[0]:
                yield _row((member[0], member[2], member[3], member[4]), kept[0], "perceptual",
                           hamming(member[1], kept_hash), keep)


# --- semantic ----------------------------------------------------------------------------------------

def _sample_rows(chunk: _Chunk, cutoff: int):
    """(digest, embedding) of the chunk's rows whose id digest is at most cutoff."""
    for image_id, vector in zip(chunk.ids, chunk.values):
        digest = id_digest(image_id)
        if digest <= cutoff:
            yield digest, vector


def _each_file(value, paths: list[str]):
    """(path, value) for every file: a read that starts from the value cannot run before it exists."""
    return [(path, value) for path in paths]


def _read_sample(item, column: str):
    """The sample rows of one (path, cutoff)."""
    path, cutoff = item
    for chunk in _read_chunks(path, column):
        yield from _sample_rows(chunk, cutoff)


def _read_assigned(item, column: str):
    """One (path, centroids)'s rows by cluster."""
    path, centroids = item
    for chunk in _read_chunks(path, column):
        yield from _assign_chunk(chunk, centroids)


def _fit(sample, n_clusters: int, seed: int):
    from beam_curator.dedup.algorithms import kmeans_cosine

    if not sample:
        return None  # no image has an embedding: nothing to find (the summary counts them as skipped)
    vectors = np.stack([vector for _, vector in sorted(sample, key=lambda item: item[0])])
    distinct = len(np.unique(vectors, axis=0))  # k-means wants at least as many distinct points as clusters
    if distinct < n_clusters:
        _LOG.warning("semantic dedup: %d clusters asked for, but the sample has %d distinct embeddings: using %d",
                     n_clusters, distinct, distinct)
    return kmeans_cosine(vectors, min(n_clusters, distinct), seed=seed)


def _assign_chunk(chunk: _Chunk, centroids):
    from beam_curator.dedup.algorithms import assign

    if not chunk.ids or centroids is None:
        return
    clusters, _ = assign(chunk.values, centroids)
    for cluster in np.unique(clusters):
        mask = clusters == cluster
        chosen = np.flatnonzero(mask).tolist()
        yield int(cluster), ([chunk.ids[i] for i in chosen], chunk.values[mask], [chunk.sizes[i] for i in chosen],
                             [chunk.origins[i] for i in chosen])


def _cluster_duplicates(item, centroids, eps: float, keep: str, seed: int):
    from beam_curator.dedup.algorithms import semdedup_cluster

    cluster, parts = item
    ids = [image_id for part in parts for image_id in part[0]]
    vectors = np.concatenate([part[1] for part in parts])
    sizes = [size for part in parts for size in part[2]]
    origins = dict(zip(ids, (origin for part in parts for origin in part[3])))
    for removed, kept, distance in semdedup_cluster(ids, vectors, centroids[cluster], eps, keep, seed=seed,
                                                    sizes=sizes):
        yield _row((removed, 0, 0, origins[removed]), kept, "semantic", distance, keep)


def _add_counts(pairs) -> tuple[int, int]:
    with_value = without = 0
    for present, missing in pairs:
        with_value, without = with_value + present, without + missing
    return with_value, without


class FoundDuplicates(NamedTuple):
    duplicates: beam.PCollection  # dict rows: id, kept_id, method, distance, keep, original_path
    counts: beam.PCollection  # one (images with the fingerprint, images without it)
    checked: beam.PCollection  # one 0 once the ids are found unique (DuplicateIdsError otherwise)
    clusters: beam.PCollection | None  # semantic: one, the number of clusters used


class FindDuplicates(beam.PTransform):
    """PBegin -> FoundDuplicates: the duplicates among the parquet files' images, how many were looked
    at (rows without the method's column value are left out and counted), and the ids' check."""

    def __init__(self, files: Sequence[str], method: str, *, max_hamming: int = 6, eps: float = 0.01,
                 n_clusters: int = 1, keep: str = "largest", sample_size: int = 100_000, seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if isinstance(max_hamming, bool) or not isinstance(max_hamming, int) or not 0 <= max_hamming <= 31:
            raise ValueError(f"max_hamming must be an integer from 0 to 31, got {max_hamming!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1): cosine similarity >= 1 - eps is a duplicate; got {eps!r}")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
        if keep not in KEEP[method]:
            raise ValueError(f"keep must be one of {', '.join(KEEP[method])} for {method} dedup, got {keep!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")
        self.files, self.method = list(files), method
        self.max_hamming, self.eps, self.n_clusters = max_hamming, float(eps), n_clusters
        self.keep, self.sample_size, self.seed = keep, sample_size, seed

    def expand(self, begin):
        column = COLUMNS[self.method]
        # _Chunk per parquet record batch
        files = begin | "Files" >> beam.Create(self.files) | "Reshuffle" >> beam.Reshuffle()
        chunks = files | "Read" >> beam.FlatMap(_read_chunks, column)
        counts = (chunks | "Sizes" >> beam.Map(lambda chunk: (len(chunk.ids), chunk.missing))
                  | "Count" >> beam.CombineGlobally(_add_counts))
        # Every id of every row (with the value or not) once: removal by id must name one image.
        every_id = files | "ReadIds" >> beam.FlatMap(_read_ids)
        checked = (every_id | "CountIds" >> beam.combiners.Count.PerElement()
                   | "Shared" >> beam.Filter(lambda item: item[1] > 1)
                   | "Swap" >> beam.Map(lambda item: (item[1], item[0]))
                   | "Examples" >> beam.combiners.Top.Of(_COLLISIONS_SHOWN)
                   | "CheckIds" >> beam.Map(_check_unique))
        duplicates, clusters = self._duplicates(files, chunks)
        return FoundDuplicates(duplicates, counts, checked, clusters)

    def _duplicates(self, files, chunks):
        column = COLUMNS[self.method]
        if self.method == "exact":
            return (chunks | "BySha256" >> beam.FlatMap(_exact_members) | "Group" >> beam.GroupByKey()
                    | "Duplicates" >> beam.FlatMap(_exact_group, self.keep)), None
        if self.method == "perceptual":
            from beam_curator.dedup.algorithms import hash_bands

            bands = hash_bands(self.max_hamming)
            return (chunks | "ByBand" >> beam.FlatMap(_band_items, bands) | "Group" >> beam.GroupByKey()
                    | "Pairs" >> beam.FlatMap(_band_pairs, self.max_hamming)
                    | "AllPairs" >> GatherAll() | "Components" >> beam.FlatMap(_components, self.keep)), None
        # The sample: the sample_size smallest id digests are found on the digests alone, then the files
        # are read again for those rows' embeddings, and again for the assignment. Each re-read starts
        # from what it waits for (the cutoff, the centroids) paired with every path: reading from `files`
        # would make the runner hold every embedding until then (runners fuse sibling reads of `files`
        # into the first stage, whose output on Flink must stay under ~1 GB per task), and a Top combine
        # over (digest, embedding) pairs holds several copies of the sample.
        paths = beam.pvalue.AsList(files)
        cutoff = (chunks | "Digests" >> beam.FlatMap(lambda chunk: map(id_digest, chunk.ids))
                  | "SmallestDigests" >> beam.combiners.Top.Smallest(self.sample_size)
                  | "Cutoff" >> beam.Map(lambda smallest: smallest[-1] if smallest else -1))
        rows = (cutoff | "SampleFiles" >> beam.FlatMap(_each_file, paths) | "SpreadSample" >> beam.Reshuffle()
                | "ReadSample" >> beam.FlatMap(_read_sample, column))
        fitted = rows | "Sample" >> GatherAll() | "KMeans" >> beam.Map(_fit, self.n_clusters, self.seed)
        centroids = beam.pvalue.AsSingleton(fitted)
        clusters = fitted | "Clusters" >> beam.Map(lambda fit: 0 if fit is None else len(fit))
        duplicates = (fitted | "AssignFiles" >> beam.FlatMap(_each_file, paths) | "SpreadAssign" >> beam.Reshuffle()
                      | "ReadAndAssign" >> beam.FlatMap(_read_assigned, column) | "Group" >> beam.GroupByKey()
                      | "Duplicates" >> beam.FlatMap(_cluster_duplicates, centroids, self.eps, self.keep, self.seed))
        return duplicates, clusters


def _read_ids(path: str):
    import pyarrow.parquet as pq

    with storage.open_read(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(columns=["image_id"], batch_size=65536):
            yield from batch.column(0).to_pylist()


class WriteDuplicates(beam.PTransform):
    """dict rows -> `{output}/duplicates-{method}-{shard:05d}.parquet`, rows spread over `shards` files
    by a digest of their id and sorted by id in each (deterministic), each written atomically once
    `gate` (a PCollection of one element: the ids' check) is done. Returns the paths written."""

    def __init__(self, output: str, method: str, shards: int = 16, *, gate=None):
        super().__init__()
        self.output, self.method, self.shards, self._gate = output.rstrip("/"), method, shards, gate

    def expand(self, rows):
        shards = self.shards
        keyed = rows | "ByShard" >> beam.Map(lambda row: (id_digest(row["id"]) % shards, row))
        # Every shard gets a file, empty or not: the same files whatever was found, and a removal list
        # with no duplicates is still a list.
        every = rows.pipeline | "EveryShard" >> beam.Create([(shard, None) for shard in range(shards)])
        gate = [beam.pvalue.AsSingleton(self._gate)] if self._gate is not None else []
        return ((keyed, every) | "Flatten" >> beam.Flatten() | "Group" >> beam.GroupByKey()
                | "Write" >> beam.Map(self._write, *gate))

    def _write(self, item, *_gate) -> str:
        import io

        import pyarrow.parquet as pq

        shard, rows = item
        rows = sorted((row for row in rows if row is not None), key=lambda row: row["id"])
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=DEDUP_SCHEMA), buffer)
        return storage.write_atomically(storage.join(self.output, duplicates_name(self.method, shard)),
                                        buffer.getvalue())
