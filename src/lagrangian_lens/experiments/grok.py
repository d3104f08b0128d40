"""The grokking experiment: does the attention's specific heat C peak before a model generalises on a + b mod p?

For every modulus p and seed, a one-layer transformer trains full-batch on a fraction of the pairs
(``training.grok``: the config's shared ``train`` settings with the run's own p, seed and folder), logging train
and test accuracy and, on a fixed probe batch, the thermodynamics of its attention at the '=' query
(``mechanics.thermo``). The detector (``mechanics.grokking``) finds the onset of generalisation, the epoch it
completes, the C peak before then, and the lead time. Two controls per p (the first seed): the same run without
weight decay (it should not grok in the budget) and one with shuffled labels (nothing to generalise). Every run is
its own resumable folder; the experiment's folder::

    DIR/run.json, DIR/results.json, DIR/figures/*.png
    DIR/runs/p19-seed0/                  run.json, metrics.jsonl, probe.json, checkpoint/ (training.grok)
    DIR/runs/p19-seed0-no-weight-decay/, DIR/runs/p19-seed0-shuffled-labels/

Its tables and figures are in :mod:`.grok_report`.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checks import check_range
from ..data.modular import check_fraction, check_modulus
from ..errors import ConfigError
from ..mechanics.grokking import DEFAULT_WINDOW, detect_grokking, moving_average, rules
from ..mechanics.thermo import attention_thermo
from ..models.own.grok import causal_visible
from ..provenance import claim_run_folder, environment, read_json, write_json
from ..training.config import resolve_device
from ..training.grok import RESUMABLE_CHANGES, GrokTrainConfig, Probe, read_metrics, run_progress, train_grok
from .grok_report import RESULTS_VERSION, grok_figures, report_section, summary
from .registry import Experiment, register

THERMO_FIELDS = ("C", "S", "F")  # logged per head (C_l0h1) and as the mean over heads and layers (C)
GROK, NO_DECAY, SHUFFLED = "grok", "no-weight-decay", "shuffled-labels"
KINDS = (GROK, NO_DECAY, SHUFFLED)
PROBE_FILE = "probe.json"
# The version of what the probe logs: bump it when mechanics.thermo's definitions (C, S, F) or the probe's reduction
# (the '=' query, the mean over pairs, heads and layers) change. It is part of the probe identity, so a run folder
# logged under another version is retrained rather than mixing old and new rows.
THERMO_VERSION = 1


@dataclass
class GrokExperimentConfig:
    """Settings of the grokking experiment: its own fields, and the training settings every run shares (``train``).
    Every leaf is a command-line option except those in ``FIXED``."""

    moduli: list[int] = field(default_factory=lambda: [19, 31])
    """Moduli p of a + b mod p: one run per p and seed (the papers use primes 19 to 113)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds of the split and the initialisation: one run per p and seed."""
    probe_size: int = 512
    """Pairs in the fixed probe batch (train and test, seeded) whose attention thermodynamics are logged."""
    smooth_window: int = DEFAULT_WINDOW
    """Logged points in the centred moving average of C before its peak is found (odd)."""
    controls: bool = True
    """Also run the controls at every p, first seed: no weight decay, and shuffled labels."""
    threads: int = 1
    """CPU threads torch uses while the runs train (0: torch's default). These models are small: on a busy CPU,
    more threads than free cores only wait on each other."""
    # Declared before ``train``, whose ``out`` leaf shares the name: the first declaration gives the one --out
    # option its help; the part's ``out`` is held equal to it (__post_init__), as one leaf has one value.
    out: str = "runs/grok"
    """Output folder of the experiment: its run.json, results.json and figures, and every run's folder in runs/."""
    train: GrokTrainConfig = field(default_factory=lambda: GrokTrainConfig(
        fraction=0.5, epochs=4000, log_every=50, stop_after_grok=1000))
    """Training settings every run shares (--fraction, --epochs, --lr, --d-model, --device, ...). The experiment's
    defaults differ from training.grok's: a fraction of 0.5, not its 0.3 (the training default and the issue's
    protocol, which --fraction 0.3 gives), since small p need more: at 0.3, p = 19 and 31 memorised and had not
    generalised after 8000 and 6000 epochs; a budget of 4000 epochs, a row every 50 (the C curve's resolution),
    and a stop 1000 epochs after grokking. ``runs()`` sets each run's p, seed, out, checkpoint_every and, for the
    controls, weight_decay 0 or shuffle_labels."""

    # Hidden from the command line: the per-run leaves runs() sets (whatever the part holds is replaced), and AdamW's
    # betas, which keep the grokking reference setup's values. The part's ``out`` is not listed: it shares --out.
    FIXED = frozenset({"p", "seed", "shuffle_labels", "checkpoint_every", "beta1", "beta2"})

    def __post_init__(self):
        if not self.moduli:
            raise ConfigError("moduli", "give at least one modulus p, e.g. 19")
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed, e.g. 0")
        for name in ("moduli", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(name, f"{values} repeats a value; give each once")
        for p in self.moduli:
            check_modulus(p, "moduli")
            check_fraction(self.train.fraction, p)
        check_range("probe_size", self.probe_size, low=1)
        check_range("threads", self.threads, low=0)
        moving_average([0.0], self.smooth_window)  # checks the window
        if self.train.out != self.out:
            self.train = dataclasses.replace(self.train, out=self.out)
        self.runs()  # builds every run's training config, so its settings are checked before any run starts

    def runs(self) -> list[tuple[str, str, GrokTrainConfig]]:
        """(name, kind, training config) of every run, main runs first, in (p, seed) order."""
        folder = Path(self.out) / "runs"

        def run(name: str, kind: str, p: int, seed: int, **change) -> tuple[str, str, GrokTrainConfig]:
            # A checkpoint every tenth logged row: a resume redoes at most ten rows' epochs.
            return name, kind, dataclasses.replace(self.train, p=p, seed=seed, out=str(folder / name),
                                                   checkpoint_every=10 * self.train.log_every, **change)

        specs = [run(f"p{p}-seed{s}", GROK, p, s) for p in self.moduli for s in self.seeds]
        if self.controls:
            s = self.seeds[0]
            for p in self.moduli:
                specs.append(run(f"p{p}-seed{s}-{NO_DECAY}", NO_DECAY, p, s, weight_decay=0.0))
                specs.append(run(f"p{p}-seed{s}-{SHUFFLED}", SHUFFLED, p, s, shuffle_labels=True))
        return specs


def thermo_probe(inputs: torch.Tensor) -> Probe:
    """The probe logged with every row: the attention thermodynamics at the '=' query (the last row, where the
    answer is read), averaged over the probe pairs ``inputs`` (K, 3): per layer and head (``C_l0h1``) and over
    all heads and layers (``C``), for C, S and F. One forward and one vectorised ensemble for the whole batch."""

    @torch.no_grad()
    def probe(model: nn.Module) -> dict[str, float]:
        _, scores = model(inputs, return_scores=True)  # (K, L, H, T, T)
        T = scores.shape[-1]
        thermo = attention_thermo(scores[..., -1:, :], mask=causal_visible(T, scores.device)[-1:])  # (K, L, H, 1)
        row = {}
        for name in THERMO_FIELDS:
            per_head = getattr(thermo, name)[..., 0].mean(0)  # (L, H)
            row[name] = float(per_head.mean())
            row.update({f"{name}_l{l}h{h}": float(per_head[l, h]) for l in range(per_head.shape[0])
                        for h in range(per_head.shape[1])})
        return row

    return probe


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` (0: left as they are) inside the context, restored on exit."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _probe_identity(cfg: GrokExperimentConfig, tc: GrokTrainConfig) -> dict:
    """What a run's logged C, S and F depend on beyond its training config (written to probe.json)."""
    return {"probe_size": cfg.probe_size, "probe_seed": tc.seed, "query": "'=' (last position)",
            "fields": list(THERMO_FIELDS), "thermo_version": THERMO_VERSION}


def _train_run(cfg: GrokExperimentConfig, name: str, tc: GrokTrainConfig, progress: bool) -> None:
    """Train the run, resume it, or leave it when finished; retrain it when its folder holds other settings."""
    run = Path(tc.out)
    data = tc.data()
    probe = thermo_probe(data.inputs[data.probe_indices(cfg.probe_size, tc.seed)].to(resolve_device(tc.device)))
    identity = _probe_identity(cfg, tc)
    meta = run_progress(run)
    fresh = meta is None
    if meta is not None:
        old = meta["train_config"]
        changed = sorted(k for k, v in dataclasses.asdict(tc).items() if k not in RESUMABLE_CHANGES and old.get(k) != v)
        logged = read_json(run / PROBE_FILE) if (run / PROBE_FILE).is_file() else {}
        changed += [f"probe {k}" for k in sorted(identity.keys() | logged.keys()) if logged.get(k) != identity.get(k)]
        if meta["step"] > tc.epochs:
            changed.append("epochs (fewer than trained)")
        if changed:
            print(f"note: the run {name} was made with other settings ({', '.join(changed)}); retraining it",
                  file=sys.stderr)
            fresh = True
    if fresh:
        write_json(run / PROBE_FILE, identity)
    train_grok(tc, probe, resume=not fresh, force=fresh, progress=progress)


def _run_result(name: str, kind: str, tc: GrokTrainConfig, window: int) -> dict:
    rows = read_metrics(tc.out)
    epochs = [r["epoch"] for r in rows]
    heat = [r.get("C") if r.get("C") is not None else float("nan") for r in rows]
    found = detect_grokking(epochs, [r["test_acc"] for r in rows], heat, window=window)
    last = rows[-1]
    return {"run": name, "kind": kind, "p": tc.p, "seed": tc.seed, "weight_decay": tc.weight_decay,
            "shuffle_labels": tc.shuffle_labels, **found.as_dict(), "epochs_run": last["epoch"],
            "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"], "train_s": last["time_s"],
            "epochs_per_s": last["epoch"] / last["time_s"] if last["time_s"] else None}


def run_grok(cfg: GrokExperimentConfig, *, progress: bool = True) -> dict:
    """Train (or resume) every run, detect grokking in each, write ``results.json`` and the figures."""
    out = claim_run_folder(cfg.out, "grok")
    write_json(out / "run.json", {"experiment": "grok", "config": dataclasses.asdict(cfg), "seeds": cfg.seeds,
                                  "environment": environment()})
    runs = []
    with cpu_threads(cfg.threads):
        for name, kind, tc in cfg.runs():
            _train_run(cfg, name, tc, progress)
            runs.append(_run_result(name, kind, tc, cfg.smooth_window))
    main = [r for r in runs if r["kind"] == GROK]
    results = {
        "runs": runs,
        "counts": {"runs": len(main), "grokked": sum(r["grokked"] is not None for r in main),
                   "with_onset": sum(r["onset"] is not None for r in main),
                   "peak_precedes_onset": sum(bool(r["peak_precedes_onset"]) for r in main)},
        "conventions": {**rules(cfg.smooth_window), "probe": f"{cfg.probe_size} pairs (train and test, seeded by "
                        "the run's seed); thermodynamics at the '=' query, averaged over the pairs, C = model mean "
                        "over heads and layers", "thermo_version": THERMO_VERSION,
                        "controls": f"at the first seed: {NO_DECAY} (weight_decay 0), {SHUFFLED} (answers permuted "
                        "over all pairs)", "results_version": RESULTS_VERSION},
    }
    write_json(out / "results.json", results)
    grok_figures(out, results)
    return results


EXPERIMENT = register(Experiment(
    name="grok", help="grokking on a + b mod p: does the attention's specific heat C peak before generalisation?",
    config=GrokExperimentConfig, section=report_section, figures=grok_figures, run=run_grok, summary=summary,
))
