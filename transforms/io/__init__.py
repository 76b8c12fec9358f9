"""Reading and writing: partitioning, the shard readers, the writer, conversion to DataFrames, run stats."""
