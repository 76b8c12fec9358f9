"""The numpy core of dedup: pHash against imagehash's definition, band keys and close pairs against brute force,
union-find, and SemDeDup's k-means and greedy removal on planted near-duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from beam_curator.dedup import algorithms as dedup
from beam_curator.dedup.algorithms import (
    PHASH_LOW,
    PHASH_SIZE,
    assign,
    band_keys,
    close_pairs,
    connected_components,
    hamming,
    hamming_distances,
    hash_bands,
    kmeans_cosine,
    phash_from_gray32,
    phash_of_image,
    semdedup_cluster,
    to_hex,
)

MASK = (1 << 64) - 1


def smooth_image(seed: int, height: int = 600, width: int = 800) -> np.ndarray:
    """A random but smooth RGB image: a few random colours upscaled bicubically."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (rng.integers(3, 20), rng.integers(3, 20), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def random_hashes(rng: np.random.Generator, n: int) -> list[int]:
    """n random 64-bit hashes as signed int64 values, the parquet column's form."""
    return rng.integers(0, 2**64, n, dtype=np.uint64).view(np.int64).tolist()


def flip_bits(value: int, positions) -> int:
    """value with the given bits (0 = most significant) flipped, kept signed int64."""
    for position in positions:
        value ^= 1 << (63 - int(position))
    return value - (1 << 64) if value >= 1 << 63 else (value + (1 << 64) if value < -(1 << 63) else value)


# ---------------------------------------------------------------------------------------------------------------
# pHash


def test_dct_matches_the_direct_dct_ii_formula():
    x = np.random.default_rng(0).uniform(0, 255, (PHASH_SIZE, PHASH_SIZE))
    n = np.arange(PHASH_SIZE)
    expected = np.empty((PHASH_SIZE, PHASH_SIZE))
    for k in range(PHASH_SIZE):  # X[k, l] = sum_n sum_m x[n, m] 2cos(pi k (2n+1) / 2N) 2cos(pi l (2m+1) / 2N)
        rows = 2 * np.cos(np.pi * k * (2 * n + 1) / (2 * PHASH_SIZE))
        for col in range(PHASH_SIZE):
            columns = 2 * np.cos(np.pi * col * (2 * n + 1) / (2 * PHASH_SIZE))
            expected[k, col] = float(np.sum(x * rows[:, None] * columns[None, :]))
    np.testing.assert_allclose(dedup._DCT @ x @ dedup._DCT.T, expected, rtol=1e-10, atol=1e-8)


def image_with_low_block(low: np.ndarray) -> np.ndarray:
    """A 32x32 float image whose DCT has the given low 8x8 block and zeros elsewhere (inverse DCT)."""
    coefficients = np.zeros((PHASH_SIZE, PHASH_SIZE))
    coefficients[:PHASH_LOW, :PHASH_LOW] = low
    inverse = np.linalg.inv(dedup._DCT)
    return inverse @ coefficients @ inverse.T


def test_bits_are_packed_msb_first_as_signed_int64():
    pattern = np.zeros(64, dtype=bool)
    pattern[[0, 1, 2, 3, 9, 63]] = True  # top nibble f, then bit 9 (0x0040...) and the last bit
    pattern[32:58] = True  # 32 ones in all, so the median sits between the -1s and the +1s
    assert pattern.sum() == 32
    value = phash_from_gray32(image_with_low_block(np.where(pattern, 1.0, -1.0).reshape(8, 8)))
    expected_hex = "".join(
        f"{int(''.join('1' if b else '0' for b in pattern[i : i + 4]), 2):x}" for i in range(0, 64, 4)
    )
    assert to_hex(value) == expected_hex
    assert expected_hex.startswith("f0") and expected_hex.endswith("c1")
    assert value < 0 and value == int(expected_hex, 16) - 2**64  # top bit set: two's complement int64
    assert -(2**63) <= value < 2**63


def test_pack_bits_ends():
    first, last = np.zeros(64, dtype=bool), np.zeros(64, dtype=bool)
    first[0], last[63] = True, True
    assert dedup._pack_bits(first) == -(2**63) and to_hex(-(2**63)) == "8000000000000000"
    assert dedup._pack_bits(last) == 1 and to_hex(1) == "0000000000000001"
    assert dedup._pack_bits(np.ones(64, dtype=bool)) == -1 and to_hex(-1) == "f" * 16


def test_symmetric_images_hash_as_with_exact_zeros():
    # scipy's FFT returns exact zeros here; the matrix product's ~1e-11 noise must not turn them into bits.
    assert to_hex(phash_from_gray32(np.full((32, 32), 77, dtype=np.uint8))) == "8000000000000000"  # only DC > 0
    column = np.random.default_rng(10).integers(0, 256, 32)
    gradient = np.repeat(column[:, None], 32, axis=1).astype(np.uint8)  # constant along rows: only l = 0 non-zero
    expected = np.zeros((8, 8), dtype=bool)
    expected[:, 0] = dedup._DCT[:8] @ column > 0  # 56 exact zeros make the median 0
    assert phash_from_gray32(gradient) == dedup._pack_bits(expected)
    assert phash_from_gray32(gradient.T) == dedup._pack_bits(expected.T)
    half = np.random.default_rng(11).integers(0, 256, (32, 16), dtype=np.uint8)
    mirror = np.concatenate([half, half[:, ::-1]], axis=1)
    low = (dedup._DCT @ mirror.astype(float) @ dedup._DCT.T)[:8, :8]
    low[:, 1::2] = 0.0  # left-right mirror: odd column frequencies are exactly zero
    assert phash_from_gray32(mirror) == dedup._pack_bits(low > np.median(low))


def test_phash_from_gray32_rejects_other_shapes():
    with pytest.raises(ValueError, match="32x32"):
        phash_from_gray32(np.zeros((8, 8)))


def test_phash_from_gray32_equals_imagehash():
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    rng = np.random.default_rng(1)
    grays = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(4)]
    grays += [np.asarray(Image.fromarray(smooth_image(seed)).convert("L").resize((32, 32))) for seed in range(4)]
    ramp = np.repeat(rng.integers(0, 256, (32, 1), dtype=np.uint8), 32, axis=1)
    grays += [
        np.full((32, 32), 200, dtype=np.uint8),
        ramp,
        ramp.T,
        np.concatenate([ramp[:, :16], ramp[:, :16]], axis=1),
    ]
    for gray in grays:
        # At 32x32 already, imagehash's own resize is a copy, so it hashes exactly these pixels.
        assert to_hex(phash_from_gray32(gray)) == str(imagehash.phash(Image.fromarray(gray)))


def test_phash_of_image_pipeline_and_robustness():
    from PIL import Image

    pixels = smooth_image(3)
    step = min(pixels.shape[:2]) // 128  # every step-th pixel, "L", BOX to 32x32: the documented definition
    gray = Image.fromarray(np.ascontiguousarray(pixels[::step, ::step])).convert("L").resize(
        (32, 32), Image.Resampling.BOX)
    value = phash_of_image(pixels)
    assert value == phash_from_gray32(np.asarray(gray))
    brighter = np.clip(pixels.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    assert hamming(value, phash_of_image(brighter)) <= 4
    assert hamming(value, phash_of_image(smooth_image(4))) > 10
    small = smooth_image(5, 40, 50)  # below 128 px: every pixel, BOX straight to 32x32
    assert phash_of_image(small) == phash_from_gray32(
        np.asarray(Image.fromarray(small).convert("L").resize((32, 32), Image.Resampling.BOX))
    )
    with pytest.raises(ValueError, match="uint8"):
        phash_of_image(pixels.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Hamming distance, bands, close pairs, components


def test_hamming_scalar_and_vectorised_agree():
    rng = np.random.default_rng(2)
    a, b = random_hashes(rng, 300), random_hashes(rng, 300)
    expected = np.array([hamming(x, y) for x, y in zip(a, b)])
    signed = hamming_distances(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
    unsigned = np.array(a, dtype=np.int64).view(np.uint64), np.array(b, dtype=np.int64).view(np.uint64)
    np.testing.assert_array_equal(signed, expected)
    np.testing.assert_array_equal(hamming_distances(*unsigned), expected)
    np.testing.assert_array_equal(dedup._popcount_table(unsigned[0] ^ unsigned[1]), expected)
    assert hamming(-1, 0) == 64 and hamming(-1, MASK) == 0 and hamming(5, 6) == 2
    grid = hamming_distances(unsigned[0][:5, None], unsigned[1][None, :7])  # broadcasting, as close_pairs uses it
    assert grid.shape == (5, 7) and grid[2, 3] == hamming(a[2], b[3])


def test_hash_bands_cover_the_64_bits():
    for max_hamming in range(64):
        bands = hash_bands(max_hamming)
        assert len(bands) == max_hamming + 1
        assert bands[0][0] == 0 and sum(width for _, width in bands) == 64
        assert all(start + width == following for (start, width), (following, _) in itertools.pairwise(bands))
        assert max(w for _, w in bands) - min(w for _, w in bands) <= 1
    for bad in (-1, 64):
        with pytest.raises(ValueError, match="max_hamming"):
            hash_bands(bad)


def test_band_keys_read_the_bits():
    bands = hash_bands(3)  # four 16-bit bands
    assert band_keys(int("0123456789abcdef", 16), bands) == [(0, 0x0123), (1, 0x4567), (2, 0x89AB), (3, 0xCDEF)]
    assert band_keys(-1, bands) == [(i, 0xFFFF) for i in range(4)]


def test_pigeonhole_pairs_at_distance_k_share_a_band():
    rng = np.random.default_rng(3)
    for k in range(64):
        bands = hash_bands(k)
        for value in random_hashes(rng, 30):
            other = flip_bits(value, rng.choice(64, size=k, replace=False))
            assert hamming(value, other) == k
            assert set(band_keys(value, bands)) & set(band_keys(other, bands))
        # The worst case: one flipped bit in each of k bands leaves exactly the last band shared.
        value = random_hashes(rng, 1)[0]
        other = flip_bits(value, [start for start, _ in bands[:k]])
        shared = set(band_keys(value, bands)) & set(band_keys(other, bands))
        assert [index for index, _ in shared] == [k]


def brute_force_pairs(ids, hashes, max_hamming):
    pairs = set()
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            distance = hamming(hashes[i], hashes[j])
            if distance <= max_hamming and ids[i] != ids[j]:
                pairs.add((min(ids[i], ids[j]), max(ids[i], ids[j]), distance))
    return pairs


def components(pairs, ids):
    found = connected_components(pairs)
    return {id_: found.get(id_, id_) for id_ in ids}


def test_close_pairs_all_distinct_equals_brute_force():
    rng = np.random.default_rng(4)
    hashes = random_hashes(rng, 150)
    hashes += [flip_bits(h, rng.choice(64, size=rng.integers(1, 6), replace=False)) for h in hashes[:100]]
    ids = [f"img-{i:04d}" for i in rng.permutation(len(hashes))]
    expected = sorted(brute_force_pairs(ids, hashes, 4))
    assert any(d == 4 for *_, d in expected) and not any(d == 5 for *_, d in expected)
    assert close_pairs(ids, hashes, 4, block=16) == expected
    assert close_pairs(ids, hashes, 4) == expected


def test_close_pairs_collapses_identical_hashes_with_the_same_components():
    rng = np.random.default_rng(5)
    base = random_hashes(rng, 200)
    hashes = base + [base[0]] * 120 + [base[1]] * 5  # one big crowd of identical hashes
    hashes += [flip_bits(h, rng.choice(64, size=rng.integers(0, 7), replace=False)) for h in base[:80]]
    ids = [f"id{i:05d}" for i in rng.permutation(len(hashes))]
    truth = brute_force_pairs(ids, hashes, 5)
    found = close_pairs(ids, hashes, 5, block=32)
    assert found == sorted(found) and found == close_pairs(ids, hashes, 5, block=1000)
    assert set(found) <= truth  # every edge is a true close pair with its true distance ...
    assert len(found) < len(truth) / 10  # ... but the crowd of 121 costs 120 edges, not 7,260
    assert components(found, ids) == components(truth, ids)  # ... and the duplicate sets are the same
    crowd = sorted(id_ for id_, h in zip(ids, hashes) if h == base[0])
    assert all((crowd[0], other, 0) in found for other in crowd[1:])


def test_close_pairs_validation_and_empty():
    assert close_pairs([], [], 3) == []
    assert close_pairs(["a", "a"], [7, 7], 3) == []  # an id listed twice is not its own duplicate
    with pytest.raises(ValueError):
        close_pairs(["a"], [1, 2], 3)
    with pytest.raises(ValueError, match="max_hamming"):
        close_pairs(["a"], [1], 64)


def test_connected_components_chains():
    assert connected_components([("b", "c"), ("a", "b"), ("d", "e")]) == {
        "a": "a",
        "b": "a",
        "c": "a",
        "d": "d",
        "e": "d",
    }
    assert connected_components([("x", "y", 3)]) == {"x": "x", "y": "x"}  # close_pairs' triples work as they are
    long_chain = [(f"n{i:05d}", f"n{i + 1:05d}") for i in reversed(range(20_000))]  # no recursion limit
    assert set(connected_components(long_chain).values()) == {"n00000"}


# ---------------------------------------------------------------------------------------------------------------
# Semantic dedup


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    """2,000 random unit 64-d vectors, then 200 copies of the first 200 at cosine ~0.9995 to their source."""
    rng = np.random.default_rng(6)
    base = normalised(rng.standard_normal((2000, 64)))
    noise = rng.standard_normal((200, 64))
    noise -= (noise * base[:200]).sum(axis=1, keepdims=True) * base[:200]  # orthogonal to the source
    copies = normalised(base[:200] + 0.03 * noise / np.linalg.norm(noise, axis=1, keepdims=True))
    embeddings = np.concatenate([base, copies])
    ids = [f"src{i:04d}" for i in range(2000)] + [f"dup{i:04d}" for i in range(200)]
    assert (np.sum(copies * base[:200], axis=1) >= 0.999).all()
    return ids, embeddings


def run_semdedup(ids, embeddings, eps, which_to_keep="hard", seed=0):
    centroids = kmeans_cosine(embeddings[::4], 8, seed=seed)  # fitted on a sample, as the pipeline does
    labels, _ = assign(embeddings, centroids)
    removed = []
    for cluster in range(len(centroids)):
        members = np.flatnonzero(labels == cluster)
        removed += semdedup_cluster(
            [ids[i] for i in members], embeddings[members], centroids[cluster], eps, which_to_keep
        )
    return sorted(removed)


def test_semdedup_removes_planted_copies_and_every_removal_is_justified(planted):
    ids, embeddings = planted
    eps = 0.01
    removed = run_semdedup(ids, embeddings, eps)
    row = {id_: i for i, id_ in enumerate(ids)}
    gone = {r for r, _, _ in removed}
    caught = sum(1 for i in range(200) if f"dup{i:04d}" in gone or f"src{i:04d}" in gone)
    assert caught >= 190  # at least 95% of the planted pairs lose one member
    assert len(gone) == len(removed) <= 200  # random 64-d vectors are never within eps of each other
    for removed_id, kept_id, distance in removed:
        assert kept_id not in gone
        similarity = float(embeddings[row[removed_id]] @ embeddings[row[kept_id]])
        assert similarity >= 1 - eps - 1e-6
        assert abs((1 - similarity) - distance) < 1e-5


def test_semdedup_does_not_depend_on_input_order(planted):
    ids, embeddings = planted
    centroid = normalised(embeddings[:600].mean(axis=0, keepdims=True))[0]
    order = np.random.default_rng(7).permutation(600)
    for which in ("hard", "easy", "random"):
        first = semdedup_cluster(
            ids[:400] + ids[2000:2200],
            np.concatenate([embeddings[:400], embeddings[2000:]]),
            centroid,
            0.01,
            which,
            seed=3,
        )
        shuffled_ids = [(ids[:400] + ids[2000:2200])[i] for i in order]
        shuffled = np.concatenate([embeddings[:400], embeddings[2000:]])[order]
        assert semdedup_cluster(shuffled_ids, shuffled, centroid, 0.01, which, seed=3) == first
        assert len(first) == 200


def brute_force_greedy(ids, x, centroid, eps, which):
    """SemDeDup with the whole similarity matrix at once: the reference for the blocked version."""
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    sorted_ids, x = [ids[i] for i in by_id], x[by_id].astype(np.float64)
    order = dedup._rank(x, sorted_ids, centroid, which, 0)
    sims = x[order] @ x[order].T
    kept, removed = [], []
    for i in range(len(order)):
        if kept and sims[i, kept].max() >= 1 - eps:
            best = kept[int(np.argmax(sims[i, kept]))]
            removed.append((sorted_ids[order[i]], sorted_ids[order[best]], 1 - sims[i, best]))
        else:
            kept.append(i)
    return sorted(removed)


@pytest.mark.parametrize("which", ["hard", "easy", "random"])
def test_blocked_greedy_equals_brute_force(which):
    rng = np.random.default_rng(8)
    sources = normalised(rng.standard_normal((12, 16)))
    # Tight groups around a few sources, so items have several kept candidates and chains across blocks.
    x = normalised(np.repeat(sources, 10, axis=0) + 0.04 * rng.standard_normal((120, 16)))
    ids = [f"i{i:03d}" for i in rng.permutation(120)]
    centroid = normalised(x.mean(axis=0, keepdims=True))[0]
    expected = brute_force_greedy(ids, x, centroid, 0.03, which)
    assert 80 < len(expected) < 100 and len({k for _, k, _ in expected}) > 12  # several keepers per group
    for block in (7, 10_000):
        found = semdedup_cluster(ids, x, centroid, 0.03, which, block=block)
        assert [(r, k) for r, k, _ in found] == [(r, k) for r, k, _ in expected]
        np.testing.assert_allclose([d for *_, d in found], [d for *_, d in expected], atol=1e-9)


def test_hard_and_easy_keep_opposite_ends():
    centroid = np.array([1.0, 0.0], dtype=np.float32)
    x = normalised(np.array([[1.0, 0.30], [1.0, 0.32]]))  # cosine 0.9998 to each other; "far" is farther out
    ids = ["near", "far"]
    assert semdedup_cluster(ids, x, centroid, 0.01, "hard")[0][:2] == ("near", "far")
    assert semdedup_cluster(ids, x, centroid, 0.01, "easy")[0][:2] == ("far", "near")
    assert semdedup_cluster(ids, x, centroid, 0.0, "hard") == []  # eps 0: only exact copies go


def test_chains_keep_their_far_end():
    angles = np.array([0.0, 0.1, 0.2])  # a ~ b and b ~ c at cosine 0.995, a ~ c only at 0.980
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    removed = semdedup_cluster(["a", "b", "c"], x, x[0], 0.01, "easy")  # ranked a, b, c
    assert [(r, k) for r, k, _ in removed] == [("b", "a")]  # c stays: b, its only neighbour, is gone


def test_semdedup_validation():
    x = normalised(np.ones((2, 4)))
    for eps in (-0.1, 1.0):
        with pytest.raises(ValueError, match="eps"):
            semdedup_cluster(["a", "b"], x, x[0], eps)
    with pytest.raises(ValueError, match="which_to_keep"):
        semdedup_cluster(["a", "b"], x, x[0], 0.1, "oldest")
    with pytest.raises(ValueError, match="embedding row per id"):
        semdedup_cluster(["a"], x, x[0], 0.1)
    assert semdedup_cluster([], np.zeros((0, 4), np.float32), x[0], 0.1) == []


def test_kmeans_is_deterministic_and_normalised():
    rng = np.random.default_rng(9)
    centres = normalised(rng.standard_normal((5, 32)))
    sample = normalised(np.repeat(centres, 60, axis=0) + 0.05 * rng.standard_normal((300, 32)))
    centroids = kmeans_cosine(sample, 5, seed=1)
    assert centroids.shape == (5, 32) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(kmeans_cosine(sample, 5, seed=1), centroids)
    labels, similarity = assign(sample, centroids)
    assert labels.dtype == np.int32 and similarity.dtype == np.float32
    assert sorted(np.bincount(labels, minlength=5).tolist()) == [60] * 5  # the five planted groups found
    np.testing.assert_array_equal(assign(sample, centroids, block=7)[0], labels)
    reference = np.zeros((5, 32))
    np.add.at(reference, labels, sample.astype(np.float64))
    np.testing.assert_allclose(dedup._member_sums(sample, labels, 5, block=64), reference, atol=1e-9)
    np.testing.assert_allclose(similarity, (sample @ centroids.T).max(axis=1), atol=1e-6)


def test_kmeans_needs_enough_distinct_points():
    sample = np.repeat(normalised(np.eye(3, 8)), 10, axis=0)  # 30 rows, 3 distinct
    assert kmeans_cosine(sample, 3).shape == (3, 8)
    with pytest.raises(ValueError, match="distinct"):
        kmeans_cosine(sample, 4)
    with pytest.raises(ValueError, match="distinct"):
        kmeans_cosine(2.0 * sample, 4)  # scaled copies are the same direction
