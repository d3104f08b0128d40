"""Corpora by name, found in this order: an explicit path, ``$LAGRANGIAN_LENS_DATA``, the download cache,
and finally a download from the canonical source (when online), checked against its sha256.

When none works the error says exactly where to put which file.
"""
from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

DATA_ENV = "LAGRANGIAN_LENS_DATA"


@dataclass(frozen=True)
class Corpus:
    name: str
    filenames: tuple[str, ...]  # local file names accepted, best first
    url: str  # canonical source
    member: str | None = None  # file inside the archive at ``url``, if it is a zip
    sha256: str | None = None  # digest of the downloaded (extracted) file
    description: str = ""


CORPORA: dict[str, Corpus] = {
    "tiny-shakespeare": Corpus(
        "tiny-shakespeare", ("tinyshakespeare.txt", "input.txt"),
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        description="Tiny Shakespeare (char-rnn), 1.1 MB",
    ),
    "tinystories": Corpus(
        "tinystories", ("tinystories_train_first2316.txt", "TinyStories-valid.txt", "tinystories_valid_first_paragraphs.txt"),
        "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt",
        description="TinyStories stories separated by <|endoftext|> (a train sample, or the validation file)",
    ),
    "wikitext-2": Corpus(
        "wikitext-2", ("wikitext-2-raw-train.txt", "wiki.train.raw"),
        "https://wikitext.smerity.com/wikitext-2-raw-v1.zip", member="wikitext-2-raw/wiki.train.raw",
        description="WikiText-2 raw, train split (wiki.train.raw), 10.9 MB: for training",
    ),
    "wikitext-2-test": Corpus(
        "wikitext-2-test", ("wikitext-2-raw-test.txt", "wiki.test.raw"),
        "https://wikitext.smerity.com/wikitext-2-raw-v1.zip", member="wikitext-2-raw/wiki.test.raw",
        sha256="173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
        description="WikiText-2 raw, test split (wiki.test.raw), 1.3 MB",
    ),
}


def download_dir() -> Path:
    from ..models.pretrained.gguf import cache_root

    return cache_root() / "data"


def corpus_path(name: str, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The local file of corpus ``name``, downloading it into the cache when allowed and needed."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"corpus file {str(p)!r} does not exist")
        return p
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)} (or give a file path)")
    corpus = CORPORA[name]
    dirs = [Path(d).expanduser() for d in os.environ.get(DATA_ENV, "").split(os.pathsep) if d] + [download_dir()]
    for d in dirs:
        for fn in corpus.filenames:
            if (d / fn).is_file():
                return d / fn
    if download:
        try:
            return _download(corpus)
        except OSError as exc:
            reason = f"the download from {corpus.url} failed ({exc})"
    else:
        reason = "downloads are off"
    raise DataError(
        f"corpus {name!r} not found and {reason}. Fix: save {corpus.url}"
        + (f" (member {corpus.member})" if corpus.member else "")
        + f" as {corpus.filenames[0]!r} in a directory named by ${DATA_ENV} (searched: "
        + ", ".join(map(str, dirs)) + "), or pass its path explicitly."
    )


def _download(corpus: Corpus) -> Path:
    with urllib.request.urlopen(corpus.url, timeout=60) as response:
        payload = response.read()
    if corpus.member is not None:
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            payload = zf.read(corpus.member)
    digest = hashlib.sha256(payload).hexdigest()
    if corpus.sha256 is not None and digest != corpus.sha256:
        raise DataError(f"downloaded {corpus.name} has sha256 {digest}, expected {corpus.sha256}; not saved")
    target = download_dir() / corpus.filenames[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, target)
    return target


def read_corpus(name: str, path: str | os.PathLike | None = None) -> str:
    return corpus_path(name, path).read_text(encoding="utf-8")
