"""Models: loading any causal LM (hub, directory, GGUF, alias, random twin) and the architecture table."""
from .architectures import ARCHITECTURES, ArchSpec, arch_for, supported_model_types
from .loading import LoadedModel, ModelDescription, default_tokenizer, load_model
from .registry import ALIASES, DEFAULT_MODEL

__all__ = ["ALIASES", "ARCHITECTURES", "ArchSpec", "DEFAULT_MODEL", "LoadedModel", "ModelDescription",
           "arch_for", "default_tokenizer", "load_model", "supported_model_types"]
