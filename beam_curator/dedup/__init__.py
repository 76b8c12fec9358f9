"""Deduplication: the per-group algorithms (pHash, band keys, union-find, SemDeDup) and removal lists."""
