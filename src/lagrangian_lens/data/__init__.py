"""Data: corpora found locally or downloaded, and prompt sets (shipped, from a file, or cut from a corpus)."""
from .corpora import CORPORA, corpus_path, read_corpus
from .prompts import load_prompts

__all__ = ["CORPORA", "corpus_path", "load_prompts", "read_corpus"]
