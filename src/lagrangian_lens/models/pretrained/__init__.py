"""Pretrained causal LMs: loading (hub, directory, GGUF, alias, random twin), the alias registry, GGUF handling,
random initialisation and the architecture table."""
