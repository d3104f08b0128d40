"""``ModelSpec``: what a user names as a model, parsed once, with its run-folder name and its content identity.

A spec string is an alias, a hub id, a local directory or a ``.gguf`` path, optionally behind ``random:`` for a
random-weight twin. Everything downstream (runners, resume keys, results) takes the parsed value. The
identity of a model is its *content*: the sha256 of its weight files (or of its registry config, for a random
twin), never the path it was found at, so two folders that happen to share a last component never share a
run, and a changed file never reuses a stale result.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSpecError

RANDOM_PREFIX = "random:"
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``base`` (alias, hub id, directory or .gguf path) and whether it is a random twin."""

    base: str  # what loads the architecture (and, for pretrained, the weights)
    random: bool = False  # a random-weight twin of ``base``

    def __post_init__(self):
        if not self.base or not self.base.strip():
            raise ModelSpecError("empty model spec: give an alias, a hub id, a directory or a .gguf path")
        if self.base.startswith(RANDOM_PREFIX):
            raise ModelSpecError(f"nested {RANDOM_PREFIX!r} in model spec {self.label!r}")

    @classmethod
    def parse(cls, text: str | ModelSpec) -> ModelSpec:
        if isinstance(text, ModelSpec):
            return text
        if not isinstance(text, str):
            raise ModelSpecError(f"a model spec is a string such as 'smollm2-135m-instruct'; got {type(text).__name__}")
        if text.startswith(RANDOM_PREFIX):
            return cls(text[len(RANDOM_PREFIX):], True)
        return cls(text, False)

    @property
    def label(self) -> str:
        """The spec as the user writes it."""
        return (RANDOM_PREFIX if self.random else "") + self.base

    @property
    def weights(self) -> str:
        return "random" if self.random else "pretrained"

    @property
    def is_path(self) -> bool:
        return Path(self.base).expanduser().exists()

    @property
    def run_name(self) -> str:
        """A folder name unique to this model: a readable stem, plus a short hash of the location for paths.

        Two directories both called ``model`` get different names; the same spec always gets the same one.
        """
        base = self.base.rstrip("/")
        stem = _slug(Path(base).name if self.is_path else base)
        if self.is_path:
            where = str(Path(base).expanduser().resolve())
            stem += "-" + hashlib.sha256(where.encode()).hexdigest()[:8]
        return f"{stem}__{self.weights}"

    def with_random(self, random: bool = True) -> ModelSpec:
        return ModelSpec(self.base, random)

    def identity(self) -> dict:
        """What the model *is*, by content: weight-file digests for paths, the alias's packaged GGUF digest or its
        registry config, the hub id otherwise. Part of every resume key."""
        from .pretrained.registry import ALIASES

        out: dict = {"spec": self.label, "weights": self.weights}
        path = Path(self.base).expanduser()
        alias = ALIASES.get(self.base)
        if path.is_file():
            out["files"] = {path.name: file_sha256(path)}
        elif path.is_dir():
            globs = ("config.json",) if self.random else (*WEIGHT_GLOBS, "config.json")  # a twin reads the config only
            files = sorted(p for g in globs for p in path.glob(g))
            out["files"] = {p.name: file_sha256(p) for p in files}
            out["spec"] = self.weights + ":" + path.name  # the location is not the identity: the content is
        elif alias is not None and self.random and alias.config is not None:
            out["config"] = hashlib.sha256(json.dumps(alias.config, sort_keys=True).encode()).hexdigest()
            # Its tokenizer is the hub-cached one when present, else the default model's: it shapes the tokens.
            out["tokenizer"] = "hub-cache" if alias.hub_cached() else "default"
        elif alias is not None and (gguf := alias.packaged_gguf()) is not None:
            out["files"] = {gguf.name: file_sha256(gguf)}
        else:  # a hub id: the cached snapshot's commit names the exact weights
            out["snapshot"] = _hub_snapshot(alias.hub_id if alias is not None else self.base)
        return out


def _hub_snapshot(hub_id: str | None) -> str | None:
    """The commit of the locally cached snapshot of ``hub_id`` (None when nothing is cached)."""
    if not hub_id or hub_id.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return Path(found).parent.name if isinstance(found, str) else None
