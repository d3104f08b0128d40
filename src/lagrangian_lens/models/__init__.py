"""Models: pretrained causal LMs wrapped as they are (``pretrained/``) and the toolkit's own (``own/``).

``pretrained/`` loads any causal LM (hub id, directory, GGUF, alias, random twin) and holds the one
architecture table; ``own/`` holds the SPLM family, the matched GPT and the causal-violation probe.
"""
from .pretrained.architectures import ARCHITECTURES, ArchSpec, arch_for, supported_model_types
from .pretrained.loading import LoadedModel, ModelDescription, default_tokenizer, load_model
from .pretrained.registry import ALIASES, DEFAULT_MODEL

__all__ = ["ALIASES", "ARCHITECTURES", "ArchSpec", "DEFAULT_MODEL", "LoadedModel", "ModelDescription",
           "arch_for", "default_tokenizer", "load_model", "supported_model_types"]
