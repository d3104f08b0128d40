"""The separator: does each model's depth dynamics derive from one shared scalar potential?

An SPLM (conservative by construction), its matched GPT and a pretrained model (optionally also an SPLM with
LayerNorm after every step, ``splm_ln``), on held-out Tiny Shakespeare passages. Every stage caches its output
in the run folder under a key of exactly what it reads (the model's content, the passages, the fit settings and
``FIT_VERSION``), so a re-run resumes and a changed setting never reuses a stale stage::

    DIR/splm, DIR/gpt, DIR/splm_ln       training runs (or --splm-checkpoint / --gpt-checkpoint / --splm-ln-checkpoint)
    DIR/depth/<model>-<key>.safetensors  depth trajectories (states, mask, and the SPLM's ξ)
    DIR/fits/<model>-<key>.json          fit, baselines, capacity sweep, symmetry tests, position 0, menu
    DIR/fits/<model>_token_axis-<key>.json, <model>_oracle-<key>.json, <model>_final_norm-<key>.json
    DIR/results.json, DIR/figures/*.png

Its tables and figures are in :mod:`.separator_report`.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..analysis.potential import (
    CONVENTIONS,
    SYMMETRY_MODES,
    PotentialConfig,
    analyse_potential,
    analyse_token_axis,
    norm_gain,
    oracle,
)
from ..checks import check_choice, check_device, check_range
from ..data.corpora import read_corpus
from ..data.papers import SEPARATOR_MODELS, published
from ..errors import ConfigError, DataError, LensError, TrajectoryError, UnsupportedArchitectureError
from ..mechanics.depth_data import CENTERINGS, DepthData
from ..mechanics.potential_solver import SolverSettings
from ..models import DEFAULT_MODEL, LoadedModel, load_model
from ..models.pretrained.architectures import final_norm
from ..models.pretrained.loading import resolve_device
from ..models.spec import ModelSpec, file_sha256
from ..provenance import claim_run_folder, environment, read_json, write_json
from ..training import TrainConfig, load_checkpoint, train
from ..training.checkpoint import checkpoint_dir, read_meta
from ..trajectories import extract
from ..trajectories.own import own_model_trajectories
from .registry import Experiment, register
from .runner import digest
from .separator_report import FIT_VERSION, report_section, separator_figures, summary

# The models trained here (or given as checkpoints): name -> (architecture, LayerNorm after every SPLM step).
OWN_MODELS = {"splm": ("splm", False), "splm_ln": ("splm", True), "gpt": ("gpt", False)}
# Training settings that may differ between a kept run and the request without retraining it.
REUSABLE = frozenset({"max_steps", "eval_every", "checkpoint_every", "device", "tensorboard", "out"})
def paper_oracle_r2(name: str) -> float | None:
    """The paper's oracle R² for the own model ``name``, where it reports one."""
    rows = [r for r in published("separator") if r.metric == "oracle_r2_centered" and r.model == SEPARATOR_MODELS.get(name)]
    return float(rows[0].value) if rows else None


@dataclass
class SeparatorConfig:
    """Settings of the separator experiment. Every field is also a command-line option."""

    CHOICES: typing.ClassVar[dict] = {"centering": CENTERINGS, "symmetry": SYMMETRY_MODES}

    model: str = DEFAULT_MODEL
    """The pretrained model compared with SPLM and GPT (an alias, hub id, directory or .gguf; from Python also a loaded model)."""
    splm_checkpoint: str | None = None
    """Use this trained SPLM run folder instead of training one."""
    gpt_checkpoint: str | None = None
    """Use this trained GPT run folder instead of training one."""
    splm_ln_after_step: bool = False
    """Also train an SPLM with LayerNorm after every step (the model 'splm_ln'), and run the oracle on it too."""
    splm_ln_checkpoint: str | None = None
    """Use this trained SPLM run folder (trained with ln_after_step) as 'splm_ln' instead of training one."""
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
    centering: str = "sequence"
    """Centring of the states: sequence (one mean per sequence, pooled over its layers), sequence-layer (one mean per
    sequence and layer, as the paper's author extracts them), global or none."""
    widths: list[int] = field(default_factory=lambda: [8, 32, 128])
    """Capacity sweep: V_ψ widths (the parameter band is printed)."""
    width: int = 128
    """V_ψ width of the headline fit."""
    max_epochs: int = 300
    """Epochs per fit (early stopping)."""
    symmetry_k: int = 16
    """PCA dimension of the Jacobian-symmetry tests."""
    symmetry: str = "pooled"
    """Jacobian-symmetry test: pooled (one linear force for all layers), per-layer (the velocity map shared, one
    M_ℓ per layer) or both."""
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
        for name, choices in self.CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        check_device("device", self.device)
        if self.splm_ln_checkpoint is not None and not self.splm_ln_after_step:
            raise ConfigError("splm_ln_checkpoint", "is given but splm_ln_after_step is off, so no 'splm_ln' model "
                                                    "is run; turn splm_ln_after_step on, or drop the checkpoint")
        for name in OWN_MODELS:
            given = getattr(self, f"{name}_checkpoint")
            if given is not None:
                check_checkpoint(given, name)

    @property
    def own_models(self) -> tuple[str, ...]:
        """The own models this run compares, in the tables' order."""
        return ("splm", "splm_ln", "gpt") if self.splm_ln_after_step else ("splm", "gpt")

    def potential_config(self) -> PotentialConfig:
        return PotentialConfig(centering=self.centering, width=self.width, capacity_widths=list(self.widths),
                               max_epochs=self.max_epochs, symmetry_k=self.symmetry_k, symmetry=self.symmetry,
                               menu=self.menu, seed=self.seed)

    def train_config(self, name: str, out: Path) -> TrainConfig:
        """The training run of own model ``name`` (a key of ``OWN_MODELS``)."""
        arch, ln_after_step = OWN_MODELS[name]
        return TrainConfig(arch=arch, d_model=self.d_model, n_steps=self.n_steps, v_hidden=self.v_hidden,
                           ln_after_step=ln_after_step, max_steps=self.max_steps, seed=self.seed, device=self.device,
                           out=str(out), eval_every=self.max_steps,  # the final model only
                           checkpoint_every=200)


def check_checkpoint(path: str, name: str) -> None:
    """A given checkpoint must exist and hold the model its option names (architecture, and ln_after_step for an
    SPLM: 'splm_ln' must have it)."""
    option, (arch, ln_after_step) = f"{name}_checkpoint", OWN_MODELS[name]
    try:
        meta = read_meta(Path(path).expanduser())
    except (OSError, ValueError) as exc:
        raise ConfigError(option, f"{path!r} is not a training run folder: {exc}") from None
    if meta.get("arch") != arch:
        raise ConfigError(option, f"{path!r} holds a {meta.get('arch')!r} model, not a {arch!r} model")
    model_config = meta.get("model_config", {})
    if arch == "splm" and (model_config.get("pair_force") or "A" in model_config.get("layers", "")):
        # The oracle compares the observed steps with -∇V_θ alone; PARF's pair force and attention blocks move h too.
        raise ConfigError(option, f"{path!r} holds an SPLM with pair_force={model_config.get('pair_force')!r} and "
                                  f"layers={model_config.get('layers')!r}; the oracle reads the potential's force only: "
                                  "give a run without --pair-force or A layers (any --xi is fine)")
    if ln_after_step and not model_config.get("ln_after_step"):
        raise ConfigError(option, f"{path!r} holds an SPLM trained without ln_after_step; give a run trained with "
                                  "--ln-after-step, or leave the option out to train one here")


def held_out_passages(n: int, min_chars: int = 120) -> list[str]:
    text = read_corpus("tiny-shakespeare")
    val = text[int(len(text) * 0.9):]  # the training pipeline's default validation split
    passages = [p.strip() for p in val.split("\n\n") if len(p.strip()) >= min_chars]
    if len(passages) < n:
        raise DataError(f"only {len(passages)} held-out passages of >= {min_chars} characters; ask for fewer",
                        options=("n_sentences",))
    return passages[:n]


def _own_model(cfg: SeparatorConfig, name: str, out: Path, progress: bool) -> Path:
    """The run folder of own model ``name``: the one given, or one trained here (resumed or retrained as needed)."""
    given = getattr(cfg, f"{name}_checkpoint")
    if given:
        return Path(given).expanduser()
    run = out / name
    tc = cfg.train_config(name, run)
    meta_file = run / "checkpoint" / "meta.json"
    if not meta_file.is_file():
        train(tc, force=True, progress=progress)
        return run
    meta = read_json(meta_file)
    wanted = dataclasses.asdict(tc)
    changed = sorted(k for k, v in wanted.items() if k not in REUSABLE and meta["train_config"].get(k) != v)
    if changed:
        print(f"note: the {name} in {run} was trained with other settings ({', '.join(changed)}); retraining it",
              file=sys.stderr)
        train(tc, force=True, progress=progress)
    elif meta["step"] < cfg.max_steps:
        train(tc, resume=True, progress=progress)
    elif meta["step"] > cfg.max_steps:
        print(f"note: retraining the {name} in {run}: it has {meta['step']} steps, {cfg.max_steps} asked",
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


def _own_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm before an own model's read-out: the GPT's ln_f; an SPLM's affine-free LayerNorm when it normalises
    after every step; None for a plain SPLM (its read-out sees h_L itself)."""
    if getattr(model, "ln_f", None) is not None:
        return model.ln_f
    if getattr(model.config, "ln_after_step", False):
        return nn.LayerNorm(model.config.d_model, elementwise_affine=False)
    return None


def _pretrained_final_norm(model: nn.Module) -> nn.Module | None:
    try:
        return final_norm(model)
    except UnsupportedArchitectureError:  # no known final norm: reported as unavailable
        return None


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
    runs = {name: _own_model(cfg, name, out, progress) for name in cfg.own_models}
    label, pretrained_identity = _pretrained_source(cfg)
    sources = {name: {"source": str(run), **_checkpoint_identity(run)} for name, run in runs.items()}
    sources["pretrained"] = {"source": label, **pretrained_identity}
    potential = dataclasses.asdict(cfg.potential_config())
    write_json(out / "run.json", {"experiment": "separator", "config": {**dataclasses.asdict(cfg), "model": label},
                                  "seed": cfg.seed, "sources": sources, "environment": environment()})
    results = {"models": {}, "oracle": {}, "sources": sources,
               "conventions": {**potential, **CONVENTIONS, "fit_version": FIT_VERSION}}
    pretrained = functools.cache(  # loaded at most once, and only when a stage is not cached
        lambda: cfg.model if isinstance(cfg.model, LoadedModel) else load_model(cfg.model, device=device))
    for name in (*runs, "pretrained"):
        depth_key = digest({"model": sources[name], "passages": digest(passages), "tokens": cfg.sentence_tokens})
        if name == "pretrained":
            def make():
                lm = pretrained()
                trs = extract(lm.model, lm.tokenizer, passages, sites="all", max_tokens=cfg.sentence_tokens + 1,
                              progress=progress)
                return DepthData.from_trajectories(trs)

            def norm():
                return _pretrained_final_norm(pretrained().model)
        else:
            def make(run=runs[name]):
                return _depth_own(run, passages, cfg, device)

            def norm(run=runs[name]):
                return _own_final_norm(load_checkpoint(run, "cpu")[0])
        try:
            data = _cached_depth(out / "depth" / f"{name}-{depth_key}.safetensors", make)
        except TrajectoryError as exc:
            raise TrajectoryError(f"the {name} model's depth trajectories cannot be fitted: {exc} (a model matched "
                                  "to a small SPLM can have a single block; give the SPLM more parameters)",
                                  options=("d_model", "v_hidden")) from None
        # The solver's defaults are what every fit here runs with: a change of them must refit, not reuse.
        fit_key = digest({"depth": depth_key, "potential": potential, "version": FIT_VERSION,
                          "solver": dataclasses.asdict(SolverSettings())})
        fits = _cached_json(out / "fits" / f"{name}-{fit_key}.json", lambda: analyse_potential(data, cfg.potential_config()))
        token = _cached_json(out / "fits" / f"{name}_token_axis-{fit_key}.json",
                             lambda: analyse_token_axis(data, cfg.potential_config()))
        gain = _cached_json(out / "fits" / f"{name}_final_norm-{digest([sources[name], FIT_VERSION])}.json",
                            lambda: {"final_norm_gain": norm_gain(norm(), data.states.shape[-1])})
        results["models"][name] = {**sources[name], **fits, "token_axis": token, **gain}
        if name in OWN_MODELS and OWN_MODELS[name][0] == "splm":
            results["oracle"][name] = _cached_json(
                out / "fits" / f"{name}_oracle-{digest([depth_key, FIT_VERSION])}.json",
                lambda: _oracle(runs[name], data, device, paper_oracle_r2(name)))
    write_json(out / "results.json", results)
    separator_figures(out, results)
    return results


def _oracle(run: Path, data: DepthData, device: str, paper_r2: float | None) -> dict:
    splm_model, _, meta = load_checkpoint(run, device)
    constants = splm_model.learned_constants()
    grad_fn = lambda x, aux: -splm_model.potential.force_autograd(aux, x, False)  # noqa: E731
    return {**oracle(data, grad_fn, {**constants, "mass": constants.get("mass", 1.0)}), "constants": constants,
            "ln_after_step": meta["model_config"]["ln_after_step"], "paper_r2": paper_r2}


EXPERIMENT = register(Experiment(
    name="separator", help="shared-potential separator: SPLM vs matched GPT vs a pretrained model",
    config=SeparatorConfig, section=report_section, figures=separator_figures, run=run_separator, summary=summary,
))
