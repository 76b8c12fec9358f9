"""Real Apache Flink and Spark engines for beam_curator's pipelines: job servers, a local Flink cluster, the SDK boot."""
