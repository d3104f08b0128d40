"""The three-way separator: does each model's depth dynamics derive from one shared scalar potential?

An SPLM (conservative by construction), its matched GPT and a pretrained model, on held-out Tiny Shakespeare
passages. Every stage caches its output in the run folder under a key of exactly what it reads (the model's
content, the passages, the fit settings), so a re-run resumes and a changed setting never reuses a stale stage::

    DIR/splm, DIR/gpt                   training runs (or --splm-checkpoint / --gpt-checkpoint)
    DIR/depth/<model>-<key>.safetensors depth trajectories (states, mask, and the SPLM's ξ)
    DIR/fits/<model>-<key>.json         fit, baselines, capacity sweep, symmetry test, menu (and the SPLM's oracle)
    DIR/results.json, DIR/figures/*.png
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..analysis.potential import PotentialConfig, analyse_potential, analyse_token_axis, oracle
from ..checks import check_device, check_range
from ..data.corpora import read_corpus
from ..errors import ConfigError, DataError, LensError, TrajectoryError
from ..mechanics.depth_data import DepthData
from ..models import DEFAULT_MODEL, LoadedModel, load_model
from ..models.pretrained.loading import resolve_device
from ..models.spec import ModelSpec, file_sha256
from ..provenance import claim_run_folder, environment, read_json, write_json
from ..training import TrainConfig, load_checkpoint, train
from ..training.checkpoint import checkpoint_dir, read_meta
from ..trajectories import extract
from ..trajectories.own import own_model_trajectories
from .plotting import plt, save
from .registry import Experiment, register
from .runner import digest
from .section import FigureBlock, Section, TableBlock
from .tables import format_table

OWN = ("splm", "gpt")
# Training settings that may differ between a kept run and the request without retraining it.
REUSABLE = frozenset({"max_steps", "eval_every", "checkpoint_every", "device", "tensorboard", "out"})


@dataclass
class SeparatorConfig:
    """Settings of the separator experiment. Every field is also a command-line option."""

    model: str = DEFAULT_MODEL
    """The pretrained model compared with SPLM and GPT (an alias, hub id, directory or .gguf; from Python also a loaded model)."""
    splm_checkpoint: str | None = None
    """Use this trained SPLM run folder instead of training one."""
    gpt_checkpoint: str | None = None
    """Use this trained GPT run folder instead of training one."""
    d_model: int = 64
    """Width of the SPLM and GPT trained here."""
    n_steps: int = 6
    """SPLM integration steps trained here."""
    v_hidden: int = 512
    """Width of the SPLM's potential MLP trained here (the matched GPT's depth follows the SPLM's size)."""
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
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (cuda when available), for training and extraction."""
    out: str = "runs/separator"
    """Output folder."""

    def __post_init__(self):
        if isinstance(self.model, str):
            try:
                ModelSpec.parse(self.model)
            except LensError as exc:
                raise ConfigError("model", str(exc)) from None
        for name in ("d_model", "n_steps", "v_hidden", "max_steps", "n_sentences", "width", "max_epochs", "symmetry_k"):
            check_range(name, getattr(self, name), low=1)
        check_range("sentence_tokens", self.sentence_tokens, low=3)
        if not self.widths or min(self.widths) < 1:
            raise ConfigError("widths", f"give at least one positive width, got {self.widths}")
        check_device("device", self.device)
        for arch in OWN:
            given = getattr(self, f"{arch}_checkpoint")
            if given is not None:
                check_checkpoint_arch(given, arch)

    def potential_config(self) -> PotentialConfig:
        return PotentialConfig(width=self.width, capacity_widths=list(self.widths), max_epochs=self.max_epochs,
                               symmetry_k=self.symmetry_k, menu=self.menu, seed=self.seed)

    def train_config(self, arch: str, out: Path) -> TrainConfig:
        return TrainConfig(arch=arch, d_model=self.d_model, n_steps=self.n_steps, v_hidden=self.v_hidden,
                           max_steps=self.max_steps,
                           seed=self.seed, device=self.device, out=str(out), eval_every=self.max_steps,  # the final model only
                           checkpoint_every=200)


def check_checkpoint_arch(path: str, arch: str) -> None:
    """A given checkpoint must exist and be of the architecture its option names."""
    option = f"{arch}_checkpoint"
    try:
        meta = read_meta(Path(path).expanduser())
    except (OSError, ValueError) as exc:
        raise ConfigError(option, f"{path!r} is not a training run folder: {exc}") from None
    if meta.get("arch") != arch:
        raise ConfigError(option, f"{path!r} holds a {meta.get('arch')!r} model, not a {arch!r} model")


def held_out_passages(n: int, min_chars: int = 120) -> list[str]:
    text = read_corpus("tiny-shakespeare")
    val = text[int(len(text) * 0.9):]  # the training pipeline's default validation split
    passages = [p.strip() for p in val.split("\n\n") if len(p.strip()) >= min_chars]
    if len(passages) < n:
        raise DataError(f"only {len(passages)} held-out passages of >= {min_chars} characters; ask for fewer",
                        options=("n_sentences",))
    return passages[:n]


def _own_model(cfg: SeparatorConfig, arch: str, out: Path, progress: bool) -> Path:
    """The run folder of the SPLM or GPT: the one given, or one trained here (resumed or retrained as needed)."""
    given = getattr(cfg, f"{arch}_checkpoint")
    if given:
        return Path(given).expanduser()
    run = out / arch
    tc = cfg.train_config(arch, run)
    meta_file = run / "checkpoint" / "meta.json"
    if not meta_file.is_file():
        train(tc, force=True, progress=progress)
        return run
    meta = read_json(meta_file)
    wanted = dataclasses.asdict(tc)
    changed = sorted(k for k, v in wanted.items() if k not in REUSABLE and meta["train_config"].get(k) != v)
    if changed:
        print(f"note: the {arch} in {run} was trained with other settings ({', '.join(changed)}); retraining it",
              file=sys.stderr)
        train(tc, force=True, progress=progress)
    elif meta["step"] < cfg.max_steps:
        train(tc, resume=True, progress=progress)
    elif meta["step"] > cfg.max_steps:
        print(f"note: retraining the {arch} in {run}: it has {meta['step']} steps, {cfg.max_steps} asked",
              file=sys.stderr)
        train(tc, force=True, progress=progress)
    return run


def _checkpoint_identity(run: Path) -> dict:
    ckpt = checkpoint_dir(run)
    return {"weights_sha256": file_sha256(ckpt / "model.safetensors"), "arch": read_meta(ckpt)["arch"]}


def _depth_own(run: Path, passages: list[str], cfg: SeparatorConfig, device: str) -> DepthData:
    model, tokenizer, meta = load_checkpoint(run, device)
    block = model.config.block_size
    seqs = [tokenizer.encode(p)[:min(cfg.sentence_tokens, block - 1) + 1] for p in passages]
    trajectories = own_model_trajectories(model, seqs)
    aux = None
    if meta["arch"] == "splm":  # ξ per token, for the oracle
        with torch.no_grad():
            aux = [model.context_pool(model.embed(torch.tensor([s], device=device)))[0, :-1].cpu() for s in seqs]
    return DepthData.from_trajectories(trajectories, aux)


def _cached_depth(path: Path, make) -> DepthData:
    if path.is_file():
        t = load_file(str(path))
        return DepthData(t["states"], t["mask"], t.get("aux"))
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"states": data.states.contiguous(), "mask": data.mask}
    if data.aux is not None:
        tensors["aux"] = data.aux.contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return data


def _cached_json(path: Path, make) -> dict:
    if not path.is_file():
        write_json(path, make())
    return read_json(path)


def _pretrained_source(cfg: SeparatorConfig) -> tuple[str, dict]:
    if isinstance(cfg.model, LoadedModel):
        from ..models.pretrained.loading import param_fingerprint

        return cfg.model.description.label, {"in_memory": param_fingerprint(cfg.model.model)}
    spec = ModelSpec.parse(cfg.model)
    return spec.label, spec.identity()


def run_separator(cfg: SeparatorConfig, *, progress: bool = True) -> dict:
    out = claim_run_folder(cfg.out, "separator")
    device = resolve_device(cfg.device)
    passages = held_out_passages(cfg.n_sentences)
    runs = {arch: _own_model(cfg, arch, out, progress) for arch in OWN}
    label, pretrained_identity = _pretrained_source(cfg)
    sources = {arch: {"source": str(runs[arch]), **_checkpoint_identity(runs[arch])} for arch in OWN}
    sources["pretrained"] = {"source": label, **pretrained_identity}
    potential = dataclasses.asdict(cfg.potential_config())
    write_json(out / "run.json", {"experiment": "separator", "config": {**dataclasses.asdict(cfg), "model": label},
                                  "seed": cfg.seed, "sources": sources, "environment": environment()})
    results = {"models": {}, "oracle": None, "sources": sources}
    for name in (*OWN, "pretrained"):
        depth_key = digest({"model": sources[name], "passages": digest(passages), "tokens": cfg.sentence_tokens})
        if name == "pretrained":
            def make():
                lm = cfg.model if isinstance(cfg.model, LoadedModel) else load_model(cfg.model, device=device)
                trs = extract(lm.model, lm.tokenizer, passages, sites="all", max_tokens=cfg.sentence_tokens + 1,
                              progress=progress)
                return DepthData.from_trajectories(trs)
        else:
            def make(run=runs[name]):
                return _depth_own(run, passages, cfg, device)
        try:
            data = _cached_depth(out / "depth" / f"{name}-{depth_key}.safetensors", make)
        except TrajectoryError as exc:
            raise TrajectoryError(f"the {name} model's depth trajectories cannot be fitted: {exc} (a model matched "
                                  "to a small SPLM can have a single block; give the SPLM more parameters)",
                                  options=("d_model", "v_hidden")) from None
        fit_key = digest({"depth": depth_key, "potential": potential})
        fits = _cached_json(out / "fits" / f"{name}-{fit_key}.json", lambda: analyse_potential(data, cfg.potential_config()))
        token = _cached_json(out / "fits" / f"{name}_token_axis-{fit_key}.json",
                             lambda: analyse_token_axis(data, cfg.potential_config()))
        results["models"][name] = {**sources[name], **fits, "token_axis": token}
        if name == "splm":
            results["oracle"] = _cached_json(out / "fits" / f"splm_oracle-{depth_key}.json",
                                             lambda: _oracle(runs["splm"], data, device))
    write_json(out / "results.json", results)
    separator_figures(out, results)
    return results


def _oracle(run: Path, data: DepthData, device: str) -> dict:
    splm_model, _, meta = load_checkpoint(run, device)
    constants = splm_model.learned_constants()
    grad_fn = lambda x, aux: -splm_model.potential.force_autograd(aux, x, False)  # noqa: E731
    return {**oracle(data, grad_fn, {**constants, "mass": constants.get("mass", 1.0)}), "constants": constants,
            "ln_after_step": meta["model_config"]["ln_after_step"]}


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


def summary(results: dict) -> str:
    o = results["oracle"]
    return (format_table(summary_rows(results))
            + f"\n\noracle on SPLM: median R² {o['median']:.4f}; α {np.round(o['alpha'], 4).tolist()} (expected "
            f"{o['alpha_expected']:.4f}); β {np.round(o['beta'], 4).tolist()} (expected {o['beta_expected']:.4f})")


EXPERIMENT = register(Experiment(
    name="separator", help="shared-potential separator: SPLM vs matched GPT vs a pretrained model",
    config=SeparatorConfig, section=report_section, figures=separator_figures, run=run_separator, summary=summary,
))
