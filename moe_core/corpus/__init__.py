"""Corpus tracing: route a whole corpus through a model in resumable Parquet shards, and sum them up.

documents (read the input) -> runner (trace shard by shard, one process or one per GPU) -> shards (Parquet +
manifest, written atomically) -> summary (addable counts per shard) -> analyses.corpus (frames for the app).
"""
