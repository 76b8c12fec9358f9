"""What a curated output directory is, and how it is written: names and globs (layout), tar packing, the
commit of each partition, manifests, resume, leftovers of crashed runs, and the run's counts."""
