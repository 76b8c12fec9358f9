"""`beam-curator dedup`: find duplicates in curated outputs' parquet, as a Beam pipeline.

Reads only the parquet beside the tars (never the tars), and writes removal lists:
`REMOVAL_DIR/duplicates-{method}-{n}.parquet` with `id` (the image_id to remove), `kept_id` (the
image it duplicates), `method` and `distance` (Hamming bits, or 1 - cosine). The algorithms are in
beam_curator.dedup.algorithms; here is how the work is spread:

- exact: rows keyed by `sha256`, a GroupByKey; the smallest image_id of a group is kept.
- perceptual: each hash keyed by each of its max_hamming + 1 bands (two hashes within max_hamming
  bits share a band exactly), a GroupByKey per band value, pairs verified by Hamming distance in
  each group; the pairs (duplicates only) are gathered on one worker, which joins them into connected
  components (union-find) and keeps the smallest image_id of each.
- semantic (SemDeDup): spherical k-means fitted on a deterministic sample (the sample_size rows with
  the smallest id digests), every embedding assigned to its nearest centroid in chunks, a GroupByKey
  per cluster, and the greedy removal within each cluster computed in blocks.

No worker holds all hashes or embeddings: a band group, a cluster, or the duplicate pairs at most.
The output is deterministic: the same input gives the same rows, sorted by id, in the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beam_curator import storage
from beam_curator.dedup.removal import id_digest

__all__ = ["DEDUP_SCHEMA", "FindDuplicates", "FoundDuplicates", "METHODS", "WriteDuplicates", "list_parquet"]

_LOG = logging.getLogger(__name__)
METHODS = ("exact", "perceptual", "semantic")
DEDUP_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("kept_id", pa.string(), nullable=False),
                          pa.field("method", pa.string(), nullable=False), pa.field("distance", pa.float64())])
_COLUMNS = {"exact": "sha256", "perceptual": "phash", "semantic": "embedding"}
_CHUNK_ROWS = 8192  # rows per parquet batch read and per assignment call


def list_parquet(inputs: Sequence[str]) -> list[str]:
    """The curated parquet of each input directory (not its _filtered/ or _failures/ records), sorted."""
    files = []
    for directory in inputs:
        found = [path for path in storage.match_files(storage.join(directory, "*.parquet"))
                 if not path.rsplit("/", 1)[-1].startswith("_")]
        if not found:
            raise FileNotFoundError(f"{directory} holds no curated parquet (images-*.parquet): point dedup at "
                                    "directories `beam-curator curate` wrote")
        files += found
    return sorted(files)


def _read_chunks(path: str, column: str):
    """(image_ids, values, rows without a value) per record batch of one parquet file."""
    import pyarrow.parquet as pq

    with storage.open_read(path) as handle:
        parquet = pq.ParquetFile(handle)
        if column not in parquet.schema_arrow.names:
            raise ValueError(f"{path} has no {column!r} column: curate it with this version"
                             + (" and --phash" if column == "phash" else " and --embed" if column == "embedding" else ""))
        for batch in parquet.iter_batches(columns=["image_id", column], batch_size=_CHUNK_ROWS):
            ids, values = batch.column(0), batch.column(1)
            present = values.is_valid()
            missing = values.null_count
            ids = ids.filter(present).to_pylist()
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
            yield ids, values, missing


def _row(removed: str, kept: str, method: str, distance: float) -> dict:
    return {"id": removed, "kept_id": kept, "method": method, "distance": float(distance)}


# --- exact -------------------------------------------------------------------------------------------

def _exact_group(item):
    _, ids = item
    ids = sorted(set(ids))
    for removed in ids[1:]:
        yield _row(removed, ids[0], "exact", 0.0)


# --- perceptual --------------------------------------------------------------------------------------

def _band_items(chunk, bands):
    from beam_curator.dedup.algorithms import band_keys

    for image_id, phash in zip(chunk[0], chunk[1]):
        for key in band_keys(phash, bands):
            yield key, (image_id, phash)


def _band_pairs(item, max_hamming: int):
    from beam_curator.dedup.algorithms import close_pairs

    _, members = item
    members = sorted(set(members))
    if len(members) < 2:
        return
    hashes = dict(members)
    for a, b, distance in close_pairs([m[0] for m in members], [m[1] for m in members], max_hamming):
        yield a, hashes[a], b, hashes[b], distance


def _components(pairs):
    from beam_curator.dedup.algorithms import connected_components, hamming

    hashes = {}
    for a, hash_a, b, hash_b, _ in pairs:
        hashes[a], hashes[b] = hash_a, hash_b
    roots = connected_components((a, b) for a, _, b, _, _ in pairs)
    for image_id in sorted(roots):
        root = roots[image_id]
        if root != image_id:
            yield _row(image_id, root, "perceptual", hamming(hashes[image_id], hashes[root]))


# --- semantic ----------------------------------------------------------------------------------------

def _sample_rows(chunk, cutoff: int):
    """(digest, embedding) of the chunk's rows whose id digest is at most cutoff."""
    ids, vectors, _ = chunk
    for image_id, vector in zip(ids, vectors):
        digest = id_digest(image_id)
        if digest <= cutoff:
            yield digest, vector


def _fit(sample, n_clusters: int, seed: int):
    from beam_curator.dedup.algorithms import kmeans_cosine

    if not sample:
        return None  # no image has an embedding: nothing to find (the summary counts them as skipped)
    vectors = np.stack([vector for _, vector in sorted(sample, key=lambda item: item[0])])
    distinct = len(np.unique(vectors, axis=0))  # k-means wants at least as many distinct points as clusters
    return kmeans_cosine(vectors, min(n_clusters, distinct), seed=seed)


def _assign_chunk(chunk, centroids):
    from beam_curator.dedup.algorithms import assign

    ids, vectors, _ = chunk
    if not ids or centroids is None:
        return
    clusters, _ = assign(vectors, centroids)
    for cluster in np.unique(clusters):
        mask = clusters == cluster
        yield int(cluster), ([i for i, keep in zip(ids, mask) if keep], vectors[mask])


def _cluster_duplicates(item, centroids, eps: float, which_to_keep: str, seed: int):
    from beam_curator.dedup.algorithms import semdedup_cluster

    cluster, parts = item
    ids = [image_id for part_ids, _ in parts for image_id in part_ids]
    vectors = np.concatenate([part_vectors for _, part_vectors in parts])
    for removed, kept, distance in semdedup_cluster(ids, vectors, centroids[cluster], eps, which_to_keep, seed=seed):
        yield _row(removed, kept, "semantic", distance)


def _add_counts(pairs) -> tuple[int, int]:
    with_value = without = 0
    for present, missing in pairs:
        with_value, without = with_value + present, without + missing
    return with_value, without


class FoundDuplicates(NamedTuple):
    duplicates: beam.PCollection  # dict rows: id, kept_id, method, distance
    counts: beam.PCollection  # one (images with the fingerprint, images without it)


class FindDuplicates(beam.PTransform):
    """PBegin -> FoundDuplicates: the duplicates among the parquet files' images, and how many were
    looked at (rows without the method's column value are left out and counted)."""

    def __init__(self, files: Sequence[str], method: str, *, max_hamming: int = 6, eps: float = 0.01,
                 n_clusters: int = 100, which_to_keep: str = "hard", sample_size: int = 100_000, seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(max_hamming, int) or not 0 <= max_hamming <= 31:
            raise ValueError(f"max_hamming must be an integer from 0 to 31, got {max_hamming!r}")
        if not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1): cosine similarity >= 1 - eps is a duplicate; got {eps!r}")
        if not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
        if which_to_keep not in ("hard", "easy", "random"):
            raise ValueError(f"which_to_keep must be hard, easy or random, got {which_to_keep!r}")
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size must be a positive integer, got {sample_size!r}")
        self.files, self.method = list(files), method
        self.max_hamming, self.eps, self.n_clusters = max_hamming, float(eps), n_clusters
        self.which_to_keep, self.sample_size, self.seed = which_to_keep, sample_size, seed

    def expand(self, begin):
        column = _COLUMNS[self.method]
        # (image_ids, values) per record batch: ids as str, values sha256 str, phash int or n x d float32
        files = begin | "Files" >> beam.Create(self.files) | "Reshuffle" >> beam.Reshuffle()
        chunks = files | "Read" >> beam.FlatMap(_read_chunks, column)
        counts = (chunks | "Sizes" >> beam.Map(lambda chunk: (len(chunk[0]), chunk[2]))
                  | "Count" >> beam.CombineGlobally(_add_counts))
        return FoundDuplicates(self._duplicates(files, chunks, column), counts)

    def _duplicates(self, files, chunks, column: str):
        if self.method == "exact":
            return (chunks | "BySha256" >> beam.FlatMap(lambda chunk: zip(chunk[1], chunk[0]))
                    | "Group" >> beam.GroupByKey() | "Duplicates" >> beam.FlatMap(_exact_group))
        if self.method == "perceptual":
            from beam_curator.dedup.algorithms import hash_bands

            bands = hash_bands(self.max_hamming)
            return (chunks | "ByBand" >> beam.FlatMap(_band_items, bands) | "Group" >> beam.GroupByKey()
                    | "Pairs" >> beam.FlatMap(_band_pairs, self.max_hamming)
                    | "AllPairs" >> beam.combiners.ToList() | "Components" >> beam.FlatMap(_components))
        # The sample: the sample_size smallest id digests are found on the digests alone, then the files
        # are read again for those rows' embeddings, and again for the assignment. Reusing `chunks`
        # would make the runner hold every embedding until the centroids exist, and a Top combine over
        # (digest, embedding) pairs holds several copies of the sample.
        cutoff = beam.pvalue.AsSingleton(
            chunks | "Digests" >> beam.FlatMap(lambda chunk: map(id_digest, chunk[0]))
            | "SmallestDigests" >> beam.combiners.Top.Smallest(self.sample_size)
            | "Cutoff" >> beam.Map(lambda smallest: smallest[-1] if smallest else -1))
        sample = (files | "ReadSample" >> beam.FlatMap(_read_chunks, column)
                  | "SampleRows" >> beam.FlatMap(_sample_rows, cutoff) | "Sample" >> beam.combiners.ToList())
        centroids = beam.pvalue.AsSingleton(sample | "KMeans" >> beam.Map(_fit, self.n_clusters, self.seed))
        again = files | "ReadAgain" >> beam.FlatMap(_read_chunks, column)
        return (again | "Assign" >> beam.FlatMap(_assign_chunk, centroids) | "Group" >> beam.GroupByKey()
                | "Duplicates" >> beam.FlatMap(_cluster_duplicates, centroids, self.eps, self.which_to_keep, self.seed))


class WriteDuplicates(beam.PTransform):
    """dict rows -> `{output}/duplicates-{method}-{shard:05d}.parquet`, rows spread over `shards` files
    by a digest of their id and sorted by id in each (deterministic), each written atomically. Returns
    the paths written."""

    def __init__(self, output: str, method: str, shards: int = 16):
        super().__init__()
        self.output, self.method, self.shards = output.rstrip("/"), method, shards

    def expand(self, rows):
        shards = self.shards
        keyed = rows | "ByShard" >> beam.Map(lambda row: (id_digest(row["id"]) % shards, row))
        # Every shard gets a file, empty or not: the same files whatever was found, and a removal list
        # with no duplicates is still a list.
        every = rows.pipeline | "EveryShard" >> beam.Create([(shard, None) for shard in range(shards)])
        return ((keyed, every) | "Flatten" >> beam.Flatten() | "Group" >> beam.GroupByKey()
                | "Write" >> beam.MapTuple(self._write))

    def _write(self, shard: int, rows) -> str:
        import io

        import pyarrow.parquet as pq

        rows = sorted((row for row in rows if row is not None), key=lambda row: row["id"])
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=DEDUP_SCHEMA), buffer)
        return storage.write_atomically(storage.join(self.output, f"duplicates-{self.method}-{shard:05d}.parquet"),
                                        buffer.getvalue())
