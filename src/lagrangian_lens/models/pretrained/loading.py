"""``load_model(spec)``: one entry point for hub ids, local directories, GGUF files, aliases and random twins.

Every load returns the model, its tokenizer and a :class:`ModelDescription` that records where the weights
came from and their hashes, so a run folder says exactly which model produced it.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import ModelSpecError
from .gguf import load_gguf, sha256_file
from .random_init import INIT_SCHEMES, build_random
from .registry import ALIASES, DEFAULT_MODEL, known_specs_help

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RANDOM_PREFIX = "random:"


@dataclass
class ModelDescription:
    """Provenance of a loaded model; ``to_dict()`` goes into every results file."""

    spec: str  # what the user asked for
    source: str  # the resolved file, directory or hub id
    weights: str  # "pretrained" or "random"
    model_type: str  # config.model_type, the key of the architecture table
    n_params: int  # parameter count (tied tensors once)
    dtype: str  # parameter dtype
    device: str  # device of the first parameter ("meta"/"multi" never occur: we report the first)
    tokenizer_source: str  # where the tokenizer came from
    weights_sha256: dict[str, str] = field(default_factory=dict)  # file name -> digest of the weight files
    init: str | None = None  # random twins: the initialisation scheme
    seed: int | None = None  # random twins: the seed
    param_fingerprint: str | None = None  # random twins: sha256 over all parameter bytes
    notes: list[str] = field(default_factory=list)  # anything a reader of the results must know
    config: dict = field(default_factory=dict, repr=False)  # the full HF config

    @property
    def label(self) -> str:
        return f"{self.spec} [{self.weights}]"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object  # a transformers tokenizer with a pad token set
    description: ModelDescription


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    init: str = "hf",
    seed: int = 0,
) -> LoadedModel:
    """Load ``spec``: an alias, a hub id, a local directory, a ``.gguf`` path, or ``random:<any of those>``.

    ``init`` and ``seed`` only matter for random twins (see :mod:`.random_init`). Remote code never runs
    unless ``trust_remote_code`` is set. ``device_map="auto"`` spreads a large model over the devices.
    """
    torch_dtype = resolve_dtype(dtype)
    if spec.startswith(RANDOM_PREFIX):
        loaded = _load_random(spec[len(RANDOM_PREFIX):], init=init, seed=seed, dtype=torch_dtype,
                              trust_remote_code=trust_remote_code)
        loaded.description.spec = spec
    else:
        loaded = _load_pretrained(spec, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code)
    if device_map is None:
        loaded.model.to(resolve_device(device))
    loaded.model.eval()
    _finish_tokenizer(loaded.tokenizer)
    loaded.description.device = str(next(loaded.model.parameters()).device)
    return loaded


def _load_pretrained(spec: str, *, dtype, device_map, trust_remote_code) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    alias = ALIASES.get(spec)
    if alias is not None and (gguf := alias.packaged_gguf()) is not None:
        return _from_gguf(spec, gguf, dtype=dtype, device_map=device_map)
    if spec.endswith(".gguf"):
        return _from_gguf(spec, Path(spec).expanduser(), dtype=dtype, device_map=device_map)
    source = alias.hub_id if alias is not None else spec
    if alias is None and not Path(source).expanduser().is_dir() and source.count("/") != 1:
        raise ModelSpecError(f"unknown model spec {spec!r}: not an alias, a directory, a .gguf file or a hub id.\n"
                             + known_specs_help())
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = f"\nTo make {spec!r} available: {alias.install}" if alias is not None else ""
        raise ModelSpecError(f"could not load model {spec!r} from {source!r}: {exc}{hint}\n" + known_specs_help()) from exc
    return LoadedModel(model, tokenizer, _describe(spec, str(source), model, "pretrained", str(source),
                                                   weights_sha256=_weight_file_hashes(source)))


def _from_gguf(spec: str, path: Path, *, dtype, device_map) -> LoadedModel:
    digest = sha256_file(path) if path.is_file() else ""
    model, tokenizer, from_cache = load_gguf(path, sha256=digest, dtype=dtype, device_map=device_map)
    desc = _describe(spec, str(path), model, "pretrained", str(path), weights_sha256={path.name: digest})
    desc.notes.append("weights de-quantised from GGUF" + (" (safetensors cache)" if from_cache else ""))
    return LoadedModel(model, tokenizer, desc)


def _load_random(inner: str, *, init: str, seed: int, dtype, trust_remote_code) -> LoadedModel:
    from transformers import AutoConfig

    if init not in INIT_SCHEMES:
        raise ModelSpecError(f"unknown init {init!r} for {RANDOM_PREFIX}{inner}; choose one of {INIT_SCHEMES}")
    alias = ALIASES.get(inner)
    pretrained = None
    # Without a registry config (a GGUF file, an alias with none) the config comes from the pretrained model.
    if init == "shuffled" or inner.endswith(".gguf") or (alias is not None and alias.config is None):
        pretrained = _load_pretrained(inner, dtype=dtype, device_map=None, trust_remote_code=trust_remote_code)
        config, tokenizer, tok_source = pretrained.model.config, pretrained.tokenizer, inner
    elif alias is not None:
        config = AutoConfig.for_model(**alias.config)
        tokenizer, tok_source = tokenizer_for(inner, alias.hub_id)
    else:
        try:
            config = AutoConfig.from_pretrained(inner, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"no config for random twin of {inner!r}: {exc}\n" + known_specs_help()) from exc
        tokenizer, tok_source = tokenizer_for(inner, inner)
    model = build_random(config, init=init, seed=seed, dtype=dtype,
                         pretrained=pretrained.model if pretrained else None)
    check_vocab(tokenizer, model.config.vocab_size, f"{RANDOM_PREFIX}{inner}")
    desc = _describe(inner, inner, model, "random", tok_source)
    desc.init, desc.seed, desc.param_fingerprint = init, seed, param_fingerprint(model)
    if tok_source != inner:
        desc.notes.append(f"no tokenizer of its own offline: uses the tokenizer of {tok_source}")
    return LoadedModel(model, tokenizer, desc)


def check_vocab(tokenizer, vocab_size: int, what: str) -> None:
    """A tokenizer whose ids reach past the embedding table would index out of range mid-run."""
    if len(tokenizer) > vocab_size:
        raise ModelSpecError(
            f"{what} has vocab_size {vocab_size}, smaller than its tokenizer's {len(tokenizer)} tokens, so token "
            f"ids >= {vocab_size} would index past the embedding table. Fix: use a config with "
            f"vocab_size >= {len(tokenizer)}, or a model whose own tokenizer fits."
        )


def tokenizer_for(spec: str, source: str | None):
    from transformers import AutoTokenizer

    if spec == DEFAULT_MODEL:
        return default_tokenizer(), DEFAULT_MODEL
    if source is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        # A directory with a config but no vocabulary files can still yield an empty tokenizer object.
        if tokenizer is not None and len(tokenizer) > 1 and tokenizer("a b")["input_ids"]:
            return tokenizer, spec
    return default_tokenizer(), DEFAULT_MODEL


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The default model's tokenizer (from its cached copy when present, else parsed from the GGUF)."""
    from transformers import AutoTokenizer

    from .gguf import cached_copy_dir

    gguf = ALIASES[DEFAULT_MODEL].packaged_gguf()
    if gguf is None:
        raise ModelSpecError(f"the default model {DEFAULT_MODEL!r} is not installed.\n" + known_specs_help())
    cached = cached_copy_dir(sha256_file(gguf))
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _finish_tokenizer(tokenizer) -> None:
    # Batching needs a pad token; the pad id never reaches a real position because masks cover it.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def _describe(spec, source, model, weights, tok_source, weights_sha256=None) -> ModelDescription:
    p = next(model.parameters())
    return ModelDescription(
        spec=spec, source=source, weights=weights, model_type=model.config.model_type,
        n_params=sum(t.numel() for t in model.parameters()), dtype=str(p.dtype).removeprefix("torch."),
        device=str(p.device), tokenizer_source=tok_source, weights_sha256=weights_sha256 or {},
        config=model.config.to_dict(),
    )


def _weight_file_hashes(source: str) -> dict[str, str]:
    """Digests of the weight files of a local directory or a hub snapshot already on disk."""
    directory = Path(source).expanduser()
    if not directory.is_dir():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json")
        if not isinstance(found, str):
            return {}
        directory = Path(found).parent
    files = sorted([*directory.glob("*.safetensors"), *directory.glob("*.bin")])
    return {f.name: sha256_file(f) for f in files}


@torch.no_grad()
def param_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's bytes in name order: two equal fingerprints mean equal weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
