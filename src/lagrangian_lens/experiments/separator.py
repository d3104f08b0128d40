"""The three-way separator: does each model's depth dynamics derive from one shared scalar potential?

An SPLM (conservative by construction), its matched GPT and a pretrained model, on held-out Tiny Shakespeare
passages. Every stage caches its output in the run folder, so a re-run resumes::

    DIR/splm, DIR/gpt             training runs (or --splm-checkpoint / --gpt-checkpoint)
    DIR/depth/<model>.safetensors depth trajectories (states, mask, and the SPLM's ξ)
    DIR/fits/<model>.json         fit, baselines, capacity sweep, symmetry test, menu (and the SPLM's oracle)
    DIR/results.json, DIR/figures/*.png
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..analysis.potential import PotentialConfig, analyse_potential, analyse_token_axis, oracle
from ..data.corpora import read_corpus
from ..mechanics.depth_data import DepthData
from ..models import DEFAULT_MODEL, load_model
from ..provenance import environment, read_json, write_json
from ..training import TrainConfig, load_checkpoint, train
from ..trajectories import extract
from ..trajectories.own import own_model_trajectories
from .plotting import plt, save
from .section import FigureBlock, Section, TableBlock


@dataclass
class SeparatorConfig:
    """Settings of the separator experiment. Every field is also a command-line option."""

    pretrained: str = DEFAULT_MODEL
    """The pretrained model compared with SPLM and GPT (an alias, hub id or directory)."""
    splm_checkpoint: str | None = None
    """Use this trained SPLM run folder instead of training one."""
    gpt_checkpoint: str | None = None
    """Use this trained GPT run folder instead of training one."""
    d_model: int = 64
    """Width of the SPLM and GPT trained here."""
    n_steps: int = 6
    """SPLM integration steps trained here."""
    max_steps: int = 600
    """Training steps of each model trained here."""
    n_sentences: int = 40
    """Held-out Tiny Shakespeare passages (from the validation split)."""
    sentence_tokens: int = 64
    """Tokens per passage."""
    widths: list[int] = field(default_factory=lambda: [8, 32, 128])
    """Capacity sweep: V_ψ widths (the parameter band is printed)."""
    width: int = 128
    """V_ψ width of the headline fit."""
    max_epochs: int = 300
    """Epochs per fit (early stopping)."""
    symmetry_k: int = 16
    """PCA dimension of the Jacobian-symmetry test."""
    menu: bool = True
    """Run the functional-form menu."""
    seed: int = 0
    """Seeds training, splits and fits."""
    device: str = "cpu"
    """Device for training and extraction."""
    out: str = "runs/separator"
    """Output folder."""

    def potential_config(self) -> PotentialConfig:
        return PotentialConfig(width=self.width, capacity_widths=list(self.widths), max_epochs=self.max_epochs,
                               symmetry_k=self.symmetry_k, menu=self.menu, seed=self.seed)


def held_out_passages(n: int, min_chars: int = 120) -> list[str]:
    text = read_corpus("tiny-shakespeare")
    val = text[int(len(text) * 0.9):]  # the training pipeline's default validation split
    passages = [p.strip() for p in val.split("\n\n") if len(p.strip()) >= min_chars]
    if len(passages) < n:
        raise ValueError(f"only {len(passages)} held-out passages of >= {min_chars} characters; ask for fewer")
    return passages[:n]


def _own_model(cfg: SeparatorConfig, arch: str, out: Path) -> Path:
    given = cfg.splm_checkpoint if arch == "splm" else cfg.gpt_checkpoint
    if given:
        return Path(given)
    run = out / arch
    tc = TrainConfig(arch=arch, d_model=cfg.d_model, n_steps=cfg.n_steps, max_steps=cfg.max_steps, seed=cfg.seed,
                     device=cfg.device, out=str(run), eval_every=max(1, cfg.max_steps // 4), checkpoint_every=200)
    meta = run / "checkpoint" / "meta.json"
    if not meta.is_file():
        train(tc, force=True)
    elif read_json(meta)["step"] < cfg.max_steps:
        train(tc, resume=True)
    return run


def _depth_own(run: Path, passages: list[str], cfg: SeparatorConfig) -> tuple[DepthData, object]:
    model, tokenizer, meta = load_checkpoint(run, cfg.device)
    block = model.config.block_size
    seqs = [tokenizer.encode(p)[:min(cfg.sentence_tokens, block - 1) + 1] for p in passages]
    trajectories = own_model_trajectories(model, seqs)
    aux = None
    if meta["arch"] == "splm":  # ξ per token, for the oracle
        with torch.no_grad():
            aux = [model.context_pool(model.embed(torch.tensor([s], device=cfg.device)))[0, :-1].cpu() for s in seqs]
    return DepthData.from_trajectories(trajectories, aux), model


def _cached_depth(path: Path, make) -> DepthData:
    if path.is_file():
        t = load_file(str(path))
        return DepthData(t["states"], t["mask"], t.get("aux"))
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"states": data.states.contiguous(), "mask": data.mask}
    if data.aux is not None:
        tensors["aux"] = data.aux.contiguous()
    save_file(tensors, str(path))
    return data


def run_separator(cfg: SeparatorConfig, *, progress: bool = True) -> dict:
    out = Path(cfg.out)
    write_json(out / "run.json", {"experiment": "separator", "config": dataclasses.asdict(cfg),
                                  "environment": environment()})
    passages = held_out_passages(cfg.n_sentences)
    runs = {"splm": _own_model(cfg, "splm", out), "gpt": _own_model(cfg, "gpt", out)}
    results = {"models": {}, "oracle": None}
    splm_model = None
    for name in ("splm", "gpt", "pretrained"):
        if name == "pretrained":
            def make():
                lm = load_model(cfg.pretrained, device=cfg.device)
                trs = extract(lm.model, lm.tokenizer, passages, sites="all", max_tokens=cfg.sentence_tokens + 1)
                return DepthData.from_trajectories(trs)
        else:
            def make(run=runs[name]):
                return _depth_own(run, passages, cfg)[0]
        data = _cached_depth(out / "depth" / f"{name}.safetensors", make)
        cache = out / "fits" / f"{name}.json"
        if not cache.is_file():
            write_json(cache, analyse_potential(data, cfg.potential_config()))
        token_cache = out / "fits" / f"{name}_token_axis.json"
        if not token_cache.is_file():
            write_json(token_cache, analyse_token_axis(data, cfg.potential_config()))
        results["models"][name] = {"source": cfg.pretrained if name == "pretrained" else str(runs[name]),
                                   **read_json(cache), "token_axis": read_json(token_cache)}
        if name == "splm":
            oracle_cache = out / "fits" / "splm_oracle.json"
            if not oracle_cache.is_file():
                splm_model, _, meta = load_checkpoint(runs["splm"], cfg.device)
                constants = splm_model.learned_constants()
                grad_fn = lambda x, aux: -splm_model.potential.force_autograd(aux, x, False)  # noqa: E731
                write_json(oracle_cache, {**oracle(data, grad_fn, {**constants, "mass": constants.get("mass", 1.0)}),
                                          "constants": constants, "ln_after_step": meta["model_config"]["ln_after_step"]})
            results["oracle"] = read_json(oracle_cache)
    write_json(out / "results.json", results)
    separator_figures(out, results)
    return results


def summary_rows(results: dict) -> list[list[str]]:
    rows = [["model", "median R² (V_ψ)", "velocity-only", "linear reference", "shape", "symmetry gap",
             "capacity sweep (params: median R²)", "token axis R² (V_ψ / velocity)"]]
    for name, r in results["models"].items():
        sweep = ", ".join(f"{s['n_params']}: {s['median']:.4f}" for s in r["capacity_sweep"])
        rows.append([name, f"{r['fit']['median']:.4f}", f"{r['velocity_only']['median']:.4f}",
                     f"{r['linear_reference']['median']:.4f}", r["fit"]["shape"], f"{r['symmetry']['gap']:.4f}", sweep,
                     f"{r['token_axis']['fit']['median']:.4f} / {r['token_axis']['velocity_only']['median']:.4f}"])
    return rows


def separator_figures(out: Path, results: dict) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colours = {"splm": "#2a9d8f", "gpt": "#e76f51", "pretrained": "#264653"}
    for name, r in results["models"].items():
        n = len(r["fit"]["per_layer"])
        layers = (np.arange(n) + 0.5) / n  # fit layers at the centres of their depth bins
        ax.plot(layers, r["fit"]["per_layer"], "-o", ms=3, color=colours[name], label=f"{name}: shared V_ψ")
        ax.plot(layers, r["velocity_only"]["per_layer"], "--x", ms=4, color=colours[name], alpha=0.6,
                label=f"{name}: velocity only")
    ax.set_xlabel("relative depth")
    ax.set_ylabel("test R² per layer")
    ax.legend(fontsize=7)
    paths = [save(fig, out / "figures" / "r2_profiles.png")]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, r in results["models"].items():
        sweep = r["capacity_sweep"]
        ax.plot([s["n_params"] for s in sweep], [s["median"] for s in sweep], "-o", color=colours[name], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("V_ψ parameters")
    ax.set_ylabel("median test R²")
    ax.legend(fontsize=8)
    paths.append(save(fig, out / "figures" / "capacity_sweep.png"))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(results["models"])
    ax.bar(names, [results["models"][n]["symmetry"]["gap"] for n in names], color=[colours[n] for n in names])
    ax.set_ylabel("R²(free) − R²(symmetric M)")
    paths.append(save(fig, out / "figures" / "symmetry_gaps.png"))
    return paths


def report_section(out: Path, results: dict) -> Section:
    o = results["oracle"]
    oracle_rows = [["quantity", "fitted (per layer)", "expected from the SPLM"],
                   ["α", ", ".join(f"{a:.4f}" for a in o["alpha"]), f"{o['alpha_expected']:.4f}"],
                   ["β", ", ".join(f"{b:.4f}" for b in o["beta"]), f"{o['beta_expected']:.4f}"],
                   ["R² per layer", ", ".join(f"{r:.4f}" for r in o["per_layer"]), "1.0000"]]
    return Section(
        "Shared-potential separator",
        ["Δx_l ≈ α_l v_l − β_l ∇V_ψ(x_l) with one V_ψ for all layers, scored on held-out passages; R² is against "
         "the static null (no motion). The oracle plugs the SPLM's own V_θ into the same fit."],
        [TableBlock("Models", summary_rows(results)), TableBlock("Oracle (SPLM)", oracle_rows)],
        [FigureBlock(out / "figures" / "r2_profiles.png", "Per-layer test R² of the shared fit and the velocity-only baseline."),
         FigureBlock(out / "figures" / "capacity_sweep.png", "Median R² against V_ψ size."),
         FigureBlock(out / "figures" / "symmetry_gaps.png", "Jacobian-symmetry gaps in PCA-16 coordinates.")],
    )
