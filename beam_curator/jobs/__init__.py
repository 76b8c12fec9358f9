"""The jobs on top of the Beam layer: curate (and prune), dedup, and what running them locally needs."""
