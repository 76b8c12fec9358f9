"""Bytes <-> samples <-> pixels, without Beam: WebDataset tars, image structure checks, DALI decoding, JPEG
encoding, thumbnails, the parquet schema, and the rules that turn a tar's sample into an ImageObject."""
