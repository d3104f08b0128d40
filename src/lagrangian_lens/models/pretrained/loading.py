"""``load_model(spec)``: one entry point for hub ids, local directories, GGUF files, aliases, random twins and
models already in memory.

Every load returns the model, its tokenizer and a :class:`ModelDescription` that records where the weights
came from and their hashes, so a run folder says exactly which model produced it. A model passed in memory has
no files to hash, so its description carries a fingerprint of its parameters instead.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError, ModelSpecError
from ..spec import RANDOM_PREFIX, ModelSpec  # RANDOM_PREFIX stays importable from here too
from .gguf import load_gguf, sha256_file
from .random_init import INIT_SCHEMES, build_random
from .registry import ALIASES, DEFAULT_MODEL, known_specs_help

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IN_MEMORY = "in-memory"  # ModelDescription.source of a model passed as an object


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
        raise ConfigError("dtype", f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    spec: str | ModelSpec | nn.Module | LoadedModel = DEFAULT_MODEL,
    *,
    tokenizer=None,
    weights: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    init: str = "hf",
    seed: int = 0,
) -> LoadedModel:
    """Load ``spec``: an alias, a hub id, a local directory, a ``.gguf`` path, or ``random:<any of those>`` (as a
    string or a :class:`~lagrangian_lens.models.spec.ModelSpec`); or wrap a model already in memory.

    In memory: ``load_model(model, tokenizer=tok)`` takes a transformers causal LM and its tokenizer and describes
    them (source ``"in-memory"``, ``weights`` as given, default ``"pretrained"``, a parameter fingerprint); the
    model is set to eval mode, and cast or moved only when ``dtype`` / ``device`` are given. A
    :class:`LoadedModel` is returned as it is.

    From a spec, ``dtype`` defaults to float32 and ``device`` to "cpu". ``init`` and ``seed`` only matter for
    random twins (see :mod:`.random_init`). Remote code never runs unless ``trust_remote_code`` is set.
    ``device_map="auto"`` spreads a large model over the devices.
    """
    if isinstance(spec, LoadedModel):
        if tokenizer is not None or weights is not None:
            raise ModelSpecError("load_model got a LoadedModel, which already has its tokenizer and description, "
                                 "together with tokenizer= or weights=. Fix: pass the LoadedModel alone, or pass "
                                 "its .model with the tokenizer and weights you want.")
        return spec
    if isinstance(spec, nn.Module):
        if device_map is not None:
            raise ModelSpecError("device_map= places a model while it loads from files; a model in memory is "
                                 "already placed. Fix: leave device_map out, or pass device= to move it.")
        loaded = _from_memory(spec, tokenizer, weights or "pretrained",
                              dtype=None if dtype is None else resolve_dtype(dtype))
        if device is not None:
            loaded.model.to(resolve_device(device))
    else:
        parsed = ModelSpec.parse(spec)
        if tokenizer is not None or weights is not None:
            raise ModelSpecError(f"tokenizer= and weights= describe a model passed in memory; the spec "
                                 f"{parsed.label!r} brings its own tokenizer, and its weights follow from it "
                                 f"({RANDOM_PREFIX}<spec> for a random twin). Fix: leave them out.")
        torch_dtype = resolve_dtype(dtype or "float32")
        if parsed.random:
            loaded = _load_random(parsed.base, init=init, seed=seed, dtype=torch_dtype,
                                  trust_remote_code=trust_remote_code)
        else:
            loaded = _load_pretrained(parsed.base, dtype=torch_dtype, device_map=device_map,
                                      trust_remote_code=trust_remote_code)
        loaded.description.spec = parsed.label
        if device_map is None:
            loaded.model.to(resolve_device(device or "cpu"))
    loaded.model.eval()
    _finish_tokenizer(loaded.tokenizer)
    loaded.description.device = str(next(loaded.model.parameters()).device)
    return loaded


def _from_memory(model: nn.Module, tokenizer, weights: str, *, dtype: torch.dtype | None) -> LoadedModel:
    """Describe a transformers causal LM the caller built or loaded: no files, so a parameter fingerprint."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ModelSpecError(
            f"load_model got a {type(model).__name__}, which is not a transformers model (PreTrainedModel). "
            "Expected: a spec string, a ModelSpec, a LoadedModel, or a transformers causal LM such as "
            "AutoModelForCausalLM.from_pretrained(...). The toolkit's own SPLM and GPT are used directly, "
            "without load_model.")
    label = model.config.name_or_path or type(model).__name__  # a model built from a config has no name
    if tokenizer is None:
        raise ModelSpecError(
            f"the in-memory model {label!r} came without its tokenizer, which extraction needs to turn text into "
            "ids. Fix: pass it, as load_model(model, tokenizer=AutoTokenizer.from_pretrained(...)).")
    if not isinstance(weights, str) or not weights:
        raise ModelSpecError(f"weights= labels where the weights came from, e.g. 'pretrained' or 'random'; "
                             f"got {weights!r}")
    check_vocab(tokenizer, model.config.vocab_size, f"the in-memory model {label!r}")
    if dtype is not None:
        model.to(dtype)
    tok_source = getattr(tokenizer, "name_or_path", "") or IN_MEMORY  # a transformers tokenizer records its origin
    desc = _describe(label, IN_MEMORY, model, weights, tok_source)
    desc.param_fingerprint = param_fingerprint(model)
    desc.notes.append("passed in memory: no weight files to hash; param_fingerprint identifies the weights")
    return LoadedModel(model, tokenizer, desc)


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
        tokenizer, tok_source = tokenizer_for(inner, alias.hub_id)  # from the hub cache only: no network
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
    """(tokenizer, where it came from) for ``spec``, falling back to the default model's tokenizer.

    A registry alias never reaches the network for its tokenizer: its hub id is read from the local hub cache
    when the tokenizer is there, else the default tokenizer is used. (Offline, a hub lookup retries for tens of
    seconds before failing, and a random twin of an alias needs nothing but its registry config.) Any other
    ``source`` (a directory, a hub id) loads as transformers loads it.
    """
    from transformers import AutoTokenizer

    if spec == DEFAULT_MODEL:
        return default_tokenizer(), DEFAULT_MODEL
    alias = ALIASES.get(spec)
    cache_only = alias is not None
    if alias is not None:
        source = alias.hub_id if hub_tokenizer_cached(alias.hub_id) else None
    if source is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=cache_only)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        # A directory with a config but no vocabulary files can still yield an empty tokenizer object.
        if tokenizer is not None and len(tokenizer) > 1 and tokenizer("a b")["input_ids"]:
            return tokenizer, spec
    return default_tokenizer(), DEFAULT_MODEL


def hub_tokenizer_cached(hub_id: str | None) -> bool:
    """Whether the local hub cache holds ``hub_id``'s tokenizer (a file lookup only, never the network)."""
    if hub_id is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "tokenizer_config.json"), str)


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
