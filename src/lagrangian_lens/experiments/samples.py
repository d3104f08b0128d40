"""What the model wrote: example continuations for the report and ``samples.txt``, and per-step token text.

The numbers of a run mean little without the text behind them: a random twin's continuation reads as noise,
a pretrained model's as language (or as a loop, which the repeated-token fraction then explains).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..trajectories import Trajectory

N_SAMPLES = 3
SAMPLES_FILE = "samples.txt"


def decode(tokenizer, ids: Iterable[int]) -> str:
    """Token ids as text, special tokens kept (they are part of what the model saw or wrote)."""
    return tokenizer.decode([int(i) for i in ids])


def samples_of(trajectories: list[Trajectory], tokenizer, n: int = N_SAMPLES) -> list[dict]:
    """The context and the continuation of the first ``n`` trajectories, as text."""
    return [{"trajectory": i, "mode": tr.mode, "context": decode(tokenizer, tr.token_ids[:tr.n_context]),
             "continuation": decode(tokenizer, tr.token_ids[tr.n_context:])}
            for i, tr in enumerate(trajectories[:n])]


def token_texts(tokenizer, ids: Iterable[int]) -> dict[int, str]:
    """Each distinct token id decoded on its own (one decode per distinct id, however often it occurs)."""
    return {i: decode(tokenizer, [i]) for i in dict.fromkeys(int(i) for i in ids) if i >= 0}


def format_samples(samples: list[dict]) -> str:
    """The samples as plain text: per trajectory its context, then what followed it."""
    blocks = []
    for s in samples:
        source = "generated" if s["mode"] == "generated" else "the text's own continuation (teacher-forced)"
        blocks.append(f"=== trajectory {s['trajectory']} ===\n--- context ---\n{s['context']}\n"
                      f"--- continuation: {source} ---\n{s['continuation']}\n")
    return "\n".join(blocks)


def write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text(format_samples(samples), encoding="utf-8")
    return path


def read_samples(run_dir: Path) -> str | None:
    """A run's ``samples.txt``, or None when the run predates it."""
    path = Path(run_dir) / SAMPLES_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None
