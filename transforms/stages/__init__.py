"""Curation stages (ImageBatch -> ImageBatch): the kit, basic filters, model stages, dedup-time stages."""
