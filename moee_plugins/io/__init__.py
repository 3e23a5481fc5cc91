"""File I/O, apart from the framework-free core: corpus readers (:mod:`.corpus`), resumable sharded output with
per-shard checksums (:mod:`.shards`) and fingerprints of model files and statistics (:mod:`.fingerprint`). The
CLI (``moee_plugins.commands``) and the Ray file job (:mod:`moee_plugins.jobs.ray_files`) build on this package;
it imports only the core, and the core imports nothing from here.
"""

from .corpus import FORMATS, CorpusError, Record, count_records, iter_corpus, iter_records, read_corpus
from .shards import (
    MANIFEST,
    ShardedOutput,
    ShardError,
    file_fingerprint,
    ids_path_for,
    output_format,
    read_vectors,
    shard_dir_for,
)

__all__ = [
    "FORMATS", "MANIFEST", "CorpusError", "Record", "ShardError", "ShardedOutput", "count_records",
    "file_fingerprint", "ids_path_for", "iter_corpus", "iter_records", "output_format", "read_corpus",
    "read_vectors", "shard_dir_for",
]
