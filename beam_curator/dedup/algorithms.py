"""Duplicate finding in pure numpy: the per-group algorithms that the Beam dedup pipeline runs on its workers.

Every function here works on one group of data that fits in one worker's memory; spreading the work over
groups (band keys, k-means clusters) and joining the results is the pipeline's business, not this module's.

Perceptual hash (pHash)
    `phash_from_gray32` is exactly imagehash's `phash` (hash_size=8, highfreq_factor=4) from an image already
    resized to 32x32 grayscale: the unnormalised 2-D DCT-II (as scipy.fftpack computes it), its low 8x8 block,
    bits = block > median, packed MSB-first. The value is returned as a signed int64 (two's complement)
    because the parquet column is int64; `to_hex` gives imagehash's 16-digit string back.
    `phash_of_image` gets there from an RGB array cheaply: Pillow's "L" conversion, an integer box reduction
    to about 4x the target, then LANCZOS to 32x32 (about 0.75 ms for an 800x600 image on one core, most of it
    in Pillow's RGB import and "L" conversion). imagehash resizes the full image with LANCZOS in one step, so a
    few bits can differ from imagehash's own hash of the same file (measured on 100 noisy 800x600 images:
    the same hash for 86, 2 bits apart for 14); comparisons are by Hamming distance anyway.
    The DCT here is a matrix product, scipy's an FFT; they agree to ~1e-11, which matters only when coefficients
    tie the median. scipy returns exact zeros where the image has a symmetry (solid colours, gradients, mirror
    images: common in real data), so values within a tiny tolerance of the median count as equal to it, and such
    images hash as in imagehash too. Limit: ties that scipy itself computes inexactly (images symmetric about
    the diagonal) are noise in both, so such images can hash differently from imagehash.

Perceptual pairs through band keys
    Split the 64 bits into max_hamming + 1 contiguous bands: two hashes within max_hamming bits differ in at
    most max_hamming bands, so by pigeonhole they agree exactly on at least one. The pipeline groups by
    (band index, band value) and calls `close_pairs` on each group, which compares the group's distinct hashes
    block by block; `connected_components` then joins the pairs into duplicate sets. A pair that shares several
    bands is found in each of those groups: the caller drops the repeats. Limit: a group is as big as the
    number of images with that band value, so very common hashes (blank images) make one big group; close_pairs
    collapses identical hashes first so such a group costs one comparison row, not n^2 pairs.

Semantic dedup (SemDeDup, as NeMo Curator does it)
    On L2-normalised embeddings: spherical k-means (`kmeans_cosine`) over a sample gives centroids; every
    embedding is `assign`ed to its nearest centroid; within each cluster `semdedup_cluster` ranks the items
    (hard: farthest from the centroid first, easy: closest first, random) and walks them greedily, removing an
    item whose cosine similarity to an already kept item is >= 1 - eps. Every removed id comes with a kept id
    at similarity >= 1 - eps, so the result can be audited pair by pair. One deliberate difference from NeMo:
    NeMo removes an item similar to ANY earlier item, removed or not, so in a chain a ~ b ~ c (a not ~ c) it
    drops both b and c with nothing kept near c; here c stays. Limits: duplicates that land in different
    clusters are never compared (rare for near-copies, whose cosine to each other is close to 1), and a cluster
    costs O(n x kept x d) multiply-adds (about 3 s for 20,000 distinct 512-d items), so clusters should stay
    in the tens of thousands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "KEEP_POLICIES",
    "PHASH_LOW",
    "PHASH_SIZE",
    "assign",
    "band_keys",
    "close_pairs",
    "connected_components",
    "default_clusters",
    "hamming",
    "hamming_distances",
    "hash_bands",
    "keep_rank",
    "kmeans_cosine",
    "phash_from_gray32",
    "phash_of_image",
    "semdedup_cluster",
    "to_hex",
]

PHASH_SIZE = 32  # side of the image the DCT runs on (imagehash: hash_size * highfreq_factor)
PHASH_LOW = 8  # side of the low-frequency block that becomes the 64 bits
_BITS = PHASH_LOW * PHASH_LOW
_MASK = (1 << 64) - 1
_WHICH_TO_KEEP = ("hard", "easy", "random", "largest", "smallest-id")
# Which copy of a duplicate group stays (dedup --keep). largest: most pixels, then larger file, then
# smaller id; smallest-id: the smallest id. Semantic dedup also has NeMo Curator's hard, easy, random.
KEEP_POLICIES = ("largest", "smallest-id")


IMAGES_PER_CLUSTER = 10_000  # the default cluster count's target (semantic dedup)
SAMPLE_PER_CLUSTER = 50  # k-means wants this many sample points per centroid at least


def default_clusters(images: int, sample_size: int) -> int:
    """The default number of k-means clusters for `images` embeddings fitted on a sample of at most
    sample_size: one per IMAGES_PER_CLUSTER images (rounded up, so small data is one cluster and every
    pair is compared), at most one per SAMPLE_PER_CLUSTER sample points, and at least 1."""
    wanted = -(-max(images, 1) // IMAGES_PER_CLUSTER)
    return max(1, min(wanted, min(images, sample_size) // SAMPLE_PER_CLUSTER))


def keep_rank(policy: str, image_id: str, pixels: int | None, file_size: int | None) -> tuple:
    """The sort key under which the copy a group keeps comes first (see KEEP_POLICIES)."""
    if policy == "smallest-id":
        return (image_id,)
    if policy == "largest":
        return (-(pixels or 0), -(file_size or 0), image_id)
    raise ValueError(f"keep policy must be one of {KEEP_POLICIES}, got {policy!r}")


def _dct_matrix(n: int) -> np.ndarray:
    """D with D @ x == scipy.fftpack.dct(x, type=2, norm=None, axis=0): D[k, m] = 2 cos(pi k (2m + 1) / 2n)."""
    k = np.arange(n, dtype=np.float64)[:, None]
    m = np.arange(n, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * k * (2.0 * m + 1.0) / (2.0 * n))


_DCT = _dct_matrix(PHASH_SIZE)
# Rounding noise of D @ x @ D.T is ~1e-16 x the largest coefficient (4 N^2 max|x|, about 1e6 for uint8 pixels);
# this is 1000x that, and still far below any real gap between coefficients (1e-7 for uint8 pixels).
_TIE_TOLERANCE = 1e-13 * 4 * PHASH_SIZE * PHASH_SIZE


# ---------------------------------------------------------------------------------------------------------------
# Perceptual hash


def _pack_bits(bits: np.ndarray) -> int:
    """64 booleans, first one the most significant, as a signed int64 value (two's complement)."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    if flat.size != _BITS:
        raise ValueError(f"need {_BITS} bits, got {flat.size}")
    return int.from_bytes(np.packbits(flat).tobytes(), "big", signed=True)


def phash_from_gray32(gray: np.ndarray) -> int:
    """imagehash's phash of a 32x32 grayscale image (uint8 or float), as a signed int64 value."""
    x = np.asarray(gray, dtype=np.float64)
    if x.shape != (PHASH_SIZE, PHASH_SIZE):
        raise ValueError(f"need a {PHASH_SIZE}x{PHASH_SIZE} grayscale array, got shape {x.shape}")
    low = (_DCT @ x @ _DCT.T)[:PHASH_LOW, :PHASH_LOW]
    # scipy's FFT gives exact zeros and exact ties where the image is symmetric (solid colours, gradients, mirror
    # images), the matrix product ~1e-11 of noise: so a value that close to the median counts as equal to it.
    tolerance = _TIE_TOLERANCE * max(float(np.abs(x).max()), 1.0)
    return _pack_bits(low > np.median(low) + tolerance)  # strictly greater, as imagehash


def phash_of_image(pixels: np.ndarray) -> int:
    """phash of an HxWx3 uint8 RGB (or HxW grayscale) array: every f-th pixel of every f-th row (f =
    the shortest side // 128, so at least 128 pixels remain across), Pillow's "L", a BOX (area) resize
    to 32x32, then phash_from_gray32.

    The sampling keeps the cost independent of the image size: about 0.35 ms for a 0.5 MP photo on one
    core, against 0.85 ms for a box reduction of the whole image then LANCZOS (measured on the
    benchmark's photos). On those photos it differs from that slower hash by 1.5 bits on average; a
    copy resized to half differs from its original by 1.1 bits on average (at most 4), a JPEG q60
    copy by 0.5 (at most 2)."""
    from PIL import Image  # imported here so the hashing-free parts of the module never need Pillow

    array = np.asarray(pixels)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"need an HxWx3 (or HxW) uint8 array, got {array.dtype} {array.shape}")
    step = max(1, min(array.shape[:2]) // (4 * PHASH_SIZE))
    sampled = np.ascontiguousarray(array[::step, ::step])
    image = Image.fromarray(sampled)
    if image.mode != "L":
        image = image.convert("L")  # ITU-R 601-2 luma, rounded as imagehash's
    image = image.resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.BOX)
    return phash_from_gray32(np.asarray(image))


def to_hex(value: int) -> str:
    """16 hex digits of the unsigned 64-bit value: what str(imagehash.phash(img)) prints."""
    return f"{value & _MASK:016x}"


# ---------------------------------------------------------------------------------------------------------------
# Perceptual pairs


def _check_max_hamming(max_hamming: int) -> None:
    if not 0 <= max_hamming <= 63:
        raise ValueError(f"max_hamming must be in 0..63, got {max_hamming}")


def hash_bands(max_hamming: int) -> list[tuple[int, int]]:
    """max_hamming + 1 contiguous bands (start_bit, width) covering the 64 bits, bit 0 the most significant."""
    _check_max_hamming(max_hamming)
    count = max_hamming + 1
    width, extra = divmod(_BITS, count)
    bands, start = [], 0
    for index in range(count):
        size = width + (1 if index < extra else 0)  # the first `extra` bands take one bit more
        bands.append((start, size))
        start += size
    return bands


def band_keys(phash: int, bands: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(band index, band value) for each band of the hash, read as an unsigned 64-bit number."""
    value = phash & _MASK
    return [
        (index, (value >> (_BITS - start - width)) & ((1 << width) - 1)) for index, (start, width) in enumerate(bands)
    ]


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned)."""
    return ((a ^ b) & _MASK).bit_count()


_POPCOUNT8 = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _as_u64(values: np.ndarray) -> np.ndarray:
    """The same 64 bits as uint64: int64 hashes (the parquet column) are reinterpreted, not converted."""
    array = np.asarray(values)
    if array.dtype == np.int64:
        return array.view(np.uint64)
    return array.astype(np.uint64, copy=False)


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """Bits set per uint64 through a byte lookup table (the fallback for numpy without bitwise_count)."""
    as_bytes = np.ascontiguousarray(x)[..., None].view(np.uint8)
    return _POPCOUNT8[as_bytes].sum(axis=-1, dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one hardware popcount per element
        return np.bitwise_count(x).astype(np.uint8, copy=False)
    return _popcount_table(x)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise (broadcast) Hamming distances between uint64 (or int64) hash arrays, as uint8."""
    return _popcount(np.bitwise_xor(_as_u64(a), _as_u64(b)))


def close_pairs(
    ids: Sequence[str], hashes: Sequence[int], max_hamming: int, block: int = 4096
) -> list[tuple[str, str, int]]:
    """Pairs (id_a, id_b, distance), id_a < id_b, distance <= max_hamming, enough to connect the group's duplicates.

    Identical hashes are collapsed first: each other id of a hash is paired with that hash's smallest id at
    distance 0, and the distinct hashes are then compared through those smallest ids, block x block at a time
    (peak memory about 9 * block**2 bytes: 150 MiB at the default). So the result is a set of edges with the
    same connected components as all close pairs, not every close pair. Sorted."""
    _check_max_hamming(max_hamming)
    if len(ids) != len(hashes):
        raise ValueError(f"{len(ids)} ids but {len(hashes)} hashes")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    members: dict[int, set[str]] = {}
    for id_, value in zip(ids, hashes):
        members.setdefault(value & _MASK, set()).add(id_)
    pairs: list[tuple[str, str, int]] = []
    representatives: list[str] = []
    for group in members.values():
        first, *others = sorted(group)
        representatives.append(first)
        pairs.extend((first, other, 0) for other in others)
    values = np.fromiter(members.keys(), dtype=np.uint64, count=len(members))
    for row in range(0, len(values), block):
        left = values[row : row + block]
        for column in range(row, len(values), block):  # upper triangle of blocks only: each pair once
            distances = hamming_distances(left[:, None], values[None, column : column + block])
            near_rows, near_columns = np.nonzero(distances <= max_hamming)
            for i, j in zip(near_rows.tolist(), near_columns.tolist()):
                a, b = representatives[row + i], representatives[column + j]
                if row + i < column + j and a != b:  # a != b: the same id given with two different hashes
                    pairs.append((min(a, b), max(a, b), int(distances[i, j])))
    pairs.sort()
    return pairs


def connected_components(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """id -> smallest id of its component, for every id in a pair (union-find; fields after the two ids ignored).

    Memory: every id that is in a pair (duplicates only), about 210 bytes each at the peak for 22-character ids
    (measured: the id string, a dict entry, three list slots and an int), so 10 million duplicate ids take about
    2 GB; the index dict becomes the result, so the answer costs no second dict."""
    index: dict[str, int] = {}
    names: list[str] = []
    parent: list[int] = []
    size: list[int] = []

    def node(name: str) -> int:
        found = index.get(name)
        if found is None:
            found = index[name] = len(names)
            names.append(name)
            parent.append(found)
            size.append(1)
        return found

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression: later finds are one step
            parent[i], i = root, parent[i]
        return root

    for pair in pairs:
        a, b = find(node(pair[0])), find(node(pair[1]))
        if a != b:
            if size[a] < size[b]:  # union by size keeps trees shallow
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
    smallest: dict[int, str] = {}
    for i, name in enumerate(names):
        root = find(i)
        if root not in smallest or name < smallest[root]:
            smallest[root] = name
    result: dict[str, str] = index  # type: ignore[assignment]  # reused in place: no second dict of every id
    for i, name in enumerate(names):
        result[name] = smallest[find(i)]
    return result


# ---------------------------------------------------------------------------------------------------------------
# Semantic dedup


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def assign(embeddings: np.ndarray, centroids: np.ndarray, *, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid index int32, cosine similarity to it float32) per row of normalised embeddings.

    Rows go `block` at a time, so memory is O(block x n_clusters) beyond the inputs."""
    x = np.asarray(embeddings, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int32)
    similarity = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ c.T
        best = sims.argmax(axis=1)
        labels[start : start + block] = best
        similarity[start : start + block] = sims[np.arange(len(best)), best]
    return labels, similarity


def _kmeans_plus_plus(x: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with cosine distance: each next centroid drawn with probability ~ distance**2."""
    centroids = np.empty((n_clusters, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(len(x)))
    centroids[0] = x[first]
    distance = np.clip(1.0 - x @ x[first], 0.0, None).astype(np.float64)
    for index in range(1, n_clusters):
        cumulative = np.cumsum(distance**2)
        if cumulative[-1] <= 0.0:
            raise ValueError(f"the sample has fewer than {n_clusters} distinct directions; lower n_clusters")
        chosen = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(x) - 1)
        centroids[index] = x[chosen]
        distance = np.minimum(distance, np.clip(1.0 - x @ x[chosen], 0.0, None))
    return centroids


def _member_sums(x: np.ndarray, labels: np.ndarray, n_clusters: int, block: int = 4096) -> np.ndarray:
    """Sum of each cluster's rows in float64 (big clusters lose no precision), block by block.

    A one-hot matrix product: np.add.at does the same ~50x slower (0.7 s for 20,000 x 512 rows)."""
    sums = np.zeros((n_clusters, x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), block):
        part = labels[start : start + block]
        one_hot = np.zeros((n_clusters, len(part)), dtype=np.float64)
        one_hot[part, np.arange(len(part))] = 1.0
        sums += one_hot @ x[start : start + block].astype(np.float64)
    return sums


def kmeans_cosine(sample: np.ndarray, n_clusters: int, *, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Spherical k-means (cosine) over a sample: (n_clusters, d) float32 unit centroids, deterministic per seed.

    k-means++ seeding, assignment by largest dot product, centroid = normalised mean of its members (an empty
    cluster keeps its previous centroid); stops early when no assignment changes."""
    x = _normalise(sample)
    if x.ndim != 2:
        raise ValueError(f"need a 2-D sample, got shape {x.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be positive, got {n_clusters}")
    distinct = len(np.unique(x, axis=0)) if len(x) else 0
    if distinct < n_clusters:
        raise ValueError(f"the sample has {distinct} distinct points, fewer than n_clusters={n_clusters}")
    centroids = _kmeans_plus_plus(x, n_clusters, np.random.default_rng(seed))
    labels = None
    for _ in range(iterations):
        new_labels, _ = assign(x, centroids)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sums = _member_sums(x, labels, n_clusters)
        norms = np.linalg.norm(sums, axis=1)
        moved = norms > 0  # an empty cluster (or members that cancel out) keeps its centroid
        centroids[moved] = (sums[moved] / norms[moved, None]).astype(np.float32)
    return centroids


def _stable_seed(seed: int, sorted_ids: Sequence[str]) -> int:
    """seed + a hash of the ids that does not change between processes (Python's hash() does)."""
    digest = hashlib.blake2b("\0".join(sorted_ids).encode(), digest_size=8).digest()
    return seed + int.from_bytes(digest, "big")


def _rank(x: np.ndarray, sorted_ids: Sequence[str], centroid: np.ndarray, which_to_keep: str, seed: int,
          sizes: np.ndarray | None = None) -> np.ndarray:
    """Order in which items are offered for keeping; x and sorted_ids are in id order, so ties go by id."""
    if which_to_keep == "smallest-id":
        return np.arange(len(x))
    if which_to_keep == "largest":  # most pixels, then larger file, then smaller id
        sizes = np.zeros((len(x), 2), dtype=np.int64) if sizes is None else sizes
        return np.lexsort((np.arange(len(x)), -sizes[:, 1], -sizes[:, 0]))
    if which_to_keep == "random":
        return np.random.default_rng(_stable_seed(seed, sorted_ids)).permutation(len(x))
    c = np.asarray(centroid, dtype=np.float64).reshape(-1)
    cosine = x.astype(np.float64) @ (c / max(float(np.linalg.norm(c)), 1e-12))
    # hard: the least typical items first (NeMo's default); easy: the most typical first.
    return np.argsort(cosine if which_to_keep == "hard" else -cosine, kind="stable")


def _greedy(x: np.ndarray, threshold: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk rows in order; a row is removed when some earlier kept row has similarity >= threshold.

    Returns (keeper index or -1 when kept, similarity to the keeper). Only block x block similarities exist at
    any time: each block meets the kept rows so far chunk by chunk, then is resolved row by row inside."""
    n = len(x)
    keeper = np.full(n, -1, dtype=np.int64)
    keeper_similarity = np.zeros(n, dtype=np.float64)
    kept_rows = np.empty_like(x)  # kept rows packed in rank order, so chunks are contiguous slices
    kept_index = np.empty(n, dtype=np.int64)
    kept = 0
    for start in range(0, n, block):
        rows = x[start : start + block]
        best = np.full(len(rows), -np.inf)
        best_index = np.full(len(rows), -1, dtype=np.int64)
        for chunk in range(0, kept, block):
            sims = rows @ kept_rows[chunk : min(chunk + block, kept)].T
            column = sims.argmax(axis=1)  # first maximum: the earliest ranked among ties
            value = sims[np.arange(len(rows)), column]
            better = value > best  # strictly: an earlier chunk wins a tie
            best[better] = value[better]
            best_index[better] = kept_index[chunk + column[better]]
        inner = rows @ rows.T
        kept_here = np.zeros(len(rows), dtype=bool)
        for i in range(len(rows)):
            if kept_here[:i].any():
                candidates = np.where(kept_here[:i], inner[i, :i], -np.inf)
                column = int(candidates.argmax())
                if candidates[column] > best[i]:  # strictly: kept rows of earlier blocks rank earlier
                    best[i], best_index[i] = candidates[column], start + column
            if best[i] >= threshold:
                keeper[start + i], keeper_similarity[start + i] = best_index[i], best[i]
            else:
                kept_here[i] = True
        new = np.flatnonzero(kept_here)
        kept_rows[kept : kept + len(new)] = rows[new]
        kept_index[kept : kept + len(new)] = start + new
        kept += len(new)
    return keeper, keeper_similarity


def semdedup_cluster(
    ids: Sequence[str],
    embeddings: np.ndarray,
    centroid: np.ndarray,
    eps: float,
    which_to_keep: str = "hard",
    *,
    seed: int = 0,
    block: int = 1024,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[str, str, float]]:
    """(removed_id, kept_id, 1 - cosine) for each item SemDeDup removes from one cluster, sorted by removed_id.

    Items are ranked (which_to_keep: "largest", with sizes = (pixels, file size) per id, or "smallest-id",
    as KEEP_POLICIES; NeMo Curator's "hard", "easy" or "random") and walked greedily: one is removed when its
    cosine similarity to an earlier kept item is >= 1 - eps; its kept_id is the most similar kept item (ties:
    the earliest ranked). The result does not depend on the input order: items are sorted by id first.
    Memory: two float64 copies of the embeddings (the ranked rows and the kept ones) plus 2 x block**2 floats."""
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    if which_to_keep not in _WHICH_TO_KEEP:
        raise ValueError(f"which_to_keep must be one of {_WHICH_TO_KEEP}, got {which_to_keep!r}")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(ids):
        raise ValueError(f"need one embedding row per id: {len(ids)} ids, embeddings of shape {array.shape}")
    if not len(ids):
        return []
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    sorted_ids = [ids[i] for i in by_id]
    x = array[by_id]  # the same rows in the same order whatever the input order: identical floats below
    size_rows = None if sizes is None else np.asarray([sizes[i] for i in by_id], dtype=np.int64).reshape(-1, 2)
    order = _rank(x, sorted_ids, centroid, which_to_keep, seed, size_rows)
    # Similarities in float64: the last-bit differences between block shapes are then far below any real margin.
    keeper, similarity = _greedy(x[order].astype(np.float64), 1.0 - eps, block)
    removed = [
        (sorted_ids[order[i]], sorted_ids[order[k]], float(1.0 - similarity[i]))
        for i, k in enumerate(keeper.tolist())
        if k >= 0
    ]
    removed.sort()
    return removed
