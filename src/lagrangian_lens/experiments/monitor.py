"""The energy anomaly monitor's experiment: fit it on WikiText, calibrate its threshold, save it, and (``evaluate``)
measure how well it tells in-distribution text from anomalous text, beside the perplexity baseline.

Per model, every sequence goes through the model once, teacher-forced, and its trajectory at the energy site
becomes one row of features (``analysis.monitor.sequence_features``), plus its attention's specific heat with
``specific_heat`` (a second, capturing forward). The sets (``monitor_sets``): WikiText-2 paragraphs for the fit,
the threshold and the test, and six kinds of anomaly. The folder::

    DIR/run.json, DIR/results.json (rewritten after every stage of every model), DIR/figures/
    DIR/monitor/<run>/<feature set>__<method>[__<stream kind>].safetensors + .json   each monitor (its state())
    DIR/features/<run>/sets-<key>.json              the token ids of every set (keyed by the recipe)
    DIR/features/<run>/<set>-<key>.safetensors      each set's features (and traces), keyed by its content
    DIR/scores/<run>.json                           the anomaly scores behind every number (with --evaluate)

A sequence monitor scores whole sequences; a stream monitor (streaming feature sets only; kinds ``prefix``,
``window`` and ``cusum``, see ``monitor_eval``) scores one sequence token by token, its threshold set on the
held-out traces. A feature file's key is the model's identity, the set's exact token ids and every setting the
features read, so a resumed run reuses finished sets and a changed setting recomputes only what it changes.
Fitting and evaluation are in :mod:`.monitor_eval`; tables, figures and the report section in :mod:`.monitor_report`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..analysis.energy import EnergyConventions
from ..analysis.monitor import (
    FEATURE_SETS,
    FEATURES,
    METHODS,
    EnergyMonitor,
    FeatureTable,
    prefix_features,
    sequence_features,
)
from ..analysis.monitor_stream import DRIFT, ChangePointMonitor
from ..analysis.monitor_stream import STATE_FORMAT as CHANGE_POINT_FORMAT
from ..analysis.thermo import ThermoConventions, sequence_specific_heat
from ..checks import check_choice, check_device, check_range
from ..data import anomalies
from ..data.corpora import read_corpus
from ..errors import ConfigError, LensError
from ..models import DEFAULT_MODEL, load_model
from ..models.pretrained.loading import DTYPES, resolve_device
from ..models.spec import ModelSpec
from ..provenance import claim_run_folder, environment, package_versions, read_json, write_json
from ..trajectories import expand_sites, extract, readout
from ..trajectories.attention import iter_captures
from .monitor_eval import STREAM_KINDS, evaluate, fit_monitors, fit_stream_monitors, twin_comparison
from .monitor_report import monitor_figures, report_section, summary
from .monitor_sets import (
    ANOMALIES,
    CALIBRATION,
    CHARS_PER_TOKEN,
    CORPUS_OF,
    HELDOUT,
    RECIPE,
    SETS_VERSION,
    SPLICE_MARK,
    SPLICED,
    TEST,
    WIKITEXT,
    TextSet,
    build_sets,
    cached_sets,
)
from .registry import Experiment, register
from .runner import digest

__all__ = ["ANOMALIES", "SPLICE_MARK", "MonitorConfig", "TextSet", "build_sets", "compute_features", "load_monitor",
           "run_monitor", "save_monitor"]

# Raised when the features change meaning: older feature files are then rebuilt, never reused. 2: window traces
# and the specific heat.
FEATURES_VERSION = 2
HEAT = "specific_heat"
TRACES = ("prefix", "window")  # the traces of a set with prefixes: running means, and the last stream_window steps


@dataclass
class MonitorConfig:
    """Settings of the monitor experiment. The defaults are sized for the default model on 2 CPU cores: 600
    sequences of 128 tokens (120 + 60 + 60 WikiText, 60 of each of the 6 anomalies), about 77k tokens. Measured on
    2 shared CPU cores: the forward pass runs at ~175 tokens/s and the features at ~440 tokens/s, ~125 tokens/s
    together, so ~10 minutes, plus about a minute to load the model, build the sets and fit the monitors."""

    CHOICES = {"methods": METHODS, "feature_sets": tuple(FEATURE_SETS), "dtype": tuple(DTYPES)}
    # Every position is analysed (one context token), so the span has no effect; the specific heat is read at the
    # ensemble temperature only, so the C(T) sweep's grid has none either.
    FIXED = frozenset({"span", "temperatures"})

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    """Model specs: alias, hub id, local directory, .gguf path, or random:<spec>; one monitor (per set and method) each."""
    n_calibration: int = 120
    """WikiText-2 paragraphs the monitor is fitted on."""
    n_heldout: int = 60
    """Held-out WikiText-2 paragraphs its threshold is calibrated on (the target FPR on these)."""
    n_test: int = 60
    """In-distribution WikiText-2 test paragraphs (evaluate): the normal side of every AUROC, and the realised FPR."""
    n_anomalies: int = 60
    """Sequences of each anomaly type (evaluate): shuffled, random characters, repeated phrase, TinyStories, Tiny Shakespeare, spliced."""
    tokens: int = 128
    """Tokens per sequence: every sequence is cut to this many, and WikiText paragraphs shorter than this are not used."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Density models of the monitor: one monitor per method and feature set."""
    feature_sets: list[str] = field(default_factory=lambda: ["energy", "perplexity", "streaming"])
    """Feature sets (analysis.monitor.FEATURE_SETS): 'perplexity' is the baseline; a set of streaming features also
    localises splices; 'heat' needs --specific-heat, and 'all' holds the specific heat only with it."""
    target_fpr: float = 0.05
    """False-positive rate the threshold is calibrated to on the held-out paragraphs, and the FPR of the TPR reported."""
    min_prefix_tokens: int = 16
    """The token-by-token trace starts at prefixes of this many tokens (shorter prefixes are too noisy to score)."""
    stream_window: int = 8
    """Steps in each window of the window and change-point (CUSUM) stream monitors; the prefix monitor pools every step read so far."""
    cusum_drift: float = DRIFT
    """The change-point monitor's CUSUM drift, in standard deviations of its window score: it accumulates only rises above it."""
    specific_heat: bool = False
    """Also capture every layer's attention and add each sequence's specific heat ⟨C⟩ (feature sets 'heat', 'all')."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of sequences for the interval of each AUROC difference, energy against perplexity (0: none)."""
    evaluate: bool = False
    """Also build the anomaly sets and evaluate every monitor on them (without it: fit, calibrate and save only)."""
    conventions: EnergyConventions = field(default_factory=lambda: EnergyConventions(attractor_max_segments=32))
    """The energy conventions (site, ppl, ...). Every sequence is analysed alone, so attractor_max_segments caps the
    attractor test per sequence: 32 of its ~127 segments (seeded), an unbiased mean at a quarter of the read-outs."""
    thermo: ThermoConventions = field(default_factory=ThermoConventions)
    """The specific heat's conventions (ensemble temperature, sink keys, skipped queries), with --specific-heat."""
    seed: int = 0
    """Seeds the split of the paragraphs, the anomaly builders, the monitors and the bootstrap."""
    batch_size: int = 16
    """Sequences per forward pass."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (cuda when available)."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run."""
    out: str = "runs/monitor"
    """Output folder."""

    def __post_init__(self):
        if not self.models:
            raise ConfigError("models", "give at least one model")
        for m in self.models:
            try:
                ModelSpec.parse(m)
            except LensError as exc:
                raise ConfigError("models", str(exc)) from None
        for name in ("n_calibration", "n_heldout", "n_test"):
            check_range(name, getattr(self, name), low=2)
        check_range("n_anomalies", self.n_anomalies, low=2)  # a splice pastes another source paragraph
        check_range("min_prefix_tokens", self.min_prefix_tokens, low=4)  # 3 states: 2 steps for the CV, 1 triplet
        if self.tokens < 4 * self.min_prefix_tokens:
            raise ConfigError("tokens", f"{self.tokens} tokens leave no trace before a splice (placed at 35-65 % of "
                                        f"the text): give at least 4 × min_prefix_tokens = {4 * self.min_prefix_tokens}")
        check_range("target_fpr", float(self.target_fpr), low=0, high=1, low_open=True, high_open=True)
        check_range("stream_window", self.stream_window, low=2)  # 2 steps: one for the CV's spread, one triplet
        check_range("cusum_drift", float(self.cusum_drift), low=0, high=float("inf"), high_open=True)
        check_range("n_bootstrap", self.n_bootstrap, low=0)
        check_range("batch_size", self.batch_size, low=1)
        check_range("seed", self.seed, low=0)
        for name in ("methods", "feature_sets"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(name, f"give at least one, e.g. {self.CHOICES[name][0]}")
            if len(set(values)) != len(values):
                raise ConfigError(name, f"{values} repeats a value; give each once")
            for v in values:
                check_choice(name, v, self.CHOICES[name])
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_device("device", self.device)
        empty = [fs for fs in self.feature_sets if not feature_names(fs, self.specific_heat)]
        if empty:
            raise ConfigError("feature_sets", f"{empty} hold only the specific heat: add --specific-heat (it captures "
                                              "the attention), or leave them out")

    @property
    def needed_sets(self) -> tuple[str, ...]:
        """The sets whose features this run computes."""
        return (CALIBRATION, HELDOUT, *((TEST, *ANOMALIES) if self.evaluate else ()))


def feature_names(feature_set: str, specific_heat: bool) -> tuple[str, ...]:
    """The features of a named set; without ``specific_heat`` (no attention capture) the specific heat is left out."""
    return tuple(n for n in FEATURE_SETS[feature_set] if specific_heat or n != HEAT)


def streams(feature_set: str) -> bool:
    """Whether every feature of the set updates token by token (so its monitor can localise a splice)."""
    return set(FEATURE_SETS[feature_set]) <= set(FEATURE_SETS["streaming"])


def compute_features(lm, text_set: TextSet, cfg: MonitorConfig, progress: bool):
    """(the set's feature table, its traces {"prefix" | "window": one per sequence} or None): one teacher-forced
    pass per sequence, and one attention capture per sequence with ``specific_heat``."""
    (site,) = expand_sites(lm.model, cfg.conventions.site)  # canonical ('block.-1' -> 'block.29'), range checked
    conv = dataclasses.replace(cfg.conventions, site=site)
    trajectories = extract(lm.model, lm.tokenizer, text_set.ids, sites=site, n_context=1,
                           batch_size=cfg.batch_size, progress=progress, metadata={"set": text_set.name})
    read = readout(lm.model, site)
    heat = None
    if cfg.specific_heat:
        captures = tqdm(iter_captures(lm.model, trajectories, cfg.batch_size), total=len(trajectories),
                        desc="attention", disable=not progress, leave=False)
        heat = np.array([sequence_specific_heat(c, cfg.thermo) for c in captures])
    table = sequence_features(trajectories, read, conv, seed=cfg.seed, specific_heat=heat,
                              device=next(lm.model.parameters()).device)
    table = FeatureTable(table.values, table.names, labels=(text_set.name,) * len(table))
    if not text_set.prefixes:
        return table, None
    windows = {"prefix": None, "window": cfg.stream_window}
    return table, {kind: [prefix_features(t, read, conv, min_tokens=cfg.min_prefix_tokens, window=windows[kind])
                          for t in trajectories] for kind in TRACES}


def _cached_features(folder: Path, text_set: TextSet, identity: dict, cfg: MonitorConfig, model, progress: bool):
    """The set's (table, traces) from its cache file, or computed (the model loads only then) and cached."""
    key = digest({"model": identity, "ids": digest(text_set.ids), "conventions": dataclasses.asdict(cfg.conventions),
                  "traces": [cfg.min_prefix_tokens, cfg.stream_window] if text_set.prefixes else None,
                  "specific_heat": dataclasses.asdict(cfg.thermo) if cfg.specific_heat else None, "seed": cfg.seed,
                  "features": digest(FEATURES), "version": FEATURES_VERSION})
    path = folder / f"{text_set.name}-{key}.safetensors"
    if path.is_file():
        print(f"[resume] monitor: features of {text_set.name} ({folder.name}) cached, kept", file=sys.stderr)
        return _read_features(path, text_set.name)
    if progress:
        print(f"monitor: features of {text_set.name} ({len(text_set.ids)} sequences)", file=sys.stderr)
    table, traces = compute_features(model(), text_set, cfg, progress)
    arrays = {"values": np.ascontiguousarray(table.values, dtype=np.float64)}
    for kind, kept in (traces or {}).items():
        arrays |= {f"{kind}.{i}": np.ascontiguousarray(t.values, dtype=np.float64) for i, t in enumerate(kept)}
    # The package versions that computed the features: a resumed run under newer ones reuses them, and says so here.
    meta = {"names": list(table.names), "trace_names": list(traces["prefix"][0].names) if traces else [],
            "n_traces": len(traces["prefix"]) if traces else 0, "key": key, "packages": package_versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)  # whole or absent: an interrupted write never looks finished
    return table, traces


def _read_features(path: Path, name: str):
    """The (table, traces) a feature file holds, as ``_cached_features`` returns them."""
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["meta"])
    arrays = load_file(str(path))
    values = arrays["values"]
    table = FeatureTable(values, tuple(meta["names"]), labels=(name,) * values.shape[0])
    if not meta["n_traces"]:
        return table, None
    names = tuple(meta["trace_names"])
    return table, {kind: [FeatureTable(arrays[f"{kind}.{i}"], names) for i in range(meta["n_traces"])]
                   for kind in TRACES}


def save_monitor(monitor: EnergyMonitor | ChangePointMonitor, stem: Path) -> list[Path]:
    """``<stem>.safetensors`` (the arrays of ``monitor.state()``) and ``<stem>.json`` (its metadata); no pickle."""
    arrays, meta = monitor.state()
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = stem.parent / f"{stem.name}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tensors))
    write_json(stem.parent / f"{stem.name}.json", meta)
    return [tensors, stem.parent / f"{stem.name}.json"]


def load_monitor(stem: str | Path) -> EnergyMonitor | ChangePointMonitor:
    """The monitor saved by :func:`save_monitor` under ``stem`` (a path without suffix, or either file's path): an
    ``EnergyMonitor``, or a ``ChangePointMonitor`` where its metadata says so."""
    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem
    meta = read_json(stem.parent / f"{stem.name}.json")
    kind = ChangePointMonitor if meta.get("format") == CHANGE_POINT_FORMAT else EnergyMonitor
    return kind.from_state(load_file(str(stem.parent / f"{stem.name}.safetensors")), meta)


def conventions(cfg: MonitorConfig) -> dict:
    """Every setting the results depend on, for results.json and the report's conventions table."""
    return {"tokens": cfg.tokens, "n_calibration": cfg.n_calibration, "n_heldout": cfg.n_heldout,
            "n_test": cfg.n_test, "n_anomalies": cfg.n_anomalies, "target_fpr": cfg.target_fpr,
            "min_prefix_tokens": cfg.min_prefix_tokens, "stream_window": cfg.stream_window,
            "cusum_drift": cfg.cusum_drift, "specific_heat": cfg.specific_heat, "n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed,
            "dtype": cfg.dtype, "context_tokens": 1, "corpus": WIKITEXT, "splice_cut": anomalies.SPLICE_CUT,
            "splice_from": anomalies.SPLICE_FROM, "phrase_words": anomalies.PHRASE_WORDS,
            "random_chars_per_token": CHARS_PER_TOKEN, **dataclasses.asdict(cfg.conventions),
            **({f"thermo_{k}": v for k, v in dataclasses.asdict(cfg.thermo).items() if k != "temperatures"}
               if cfg.specific_heat else {})}


def _run_model(cfg: MonitorConfig, text: str, out: Path, results: dict, progress: bool) -> None:
    """Sets, features, monitors and (evaluate) the evaluation of one model; results.json after each stage."""
    spec = ModelSpec.parse(text)
    identity = {"spec": spec.identity(), "dtype": cfg.dtype, "seed": cfg.seed}
    model = functools.cache(lambda: load_model(spec.label, dtype=cfg.dtype, device=resolve_device(cfg.device),
                                               trust_remote_code=cfg.trust_remote_code, seed=cfg.seed))
    entry = results["models"].setdefault(spec.run_name, {})
    entry.update({"run": spec.run_name, "model": spec.label, "model_identity": identity, "stage": "sets"})
    flush = lambda: write_json(out / "results.json", results)  # noqa: E731
    folder = out / "features" / spec.run_name
    recipe = {"model": identity, "config": {k: v for k, v in conventions(cfg).items() if k in RECIPE},
              "corpora": {c: digest(read_corpus(c)) for c in (WIKITEXT, *CORPUS_OF.values())}, "version": SETS_VERSION}
    sets, examples, entry["model_description"] = cached_sets(folder, recipe, cfg, model)
    entry["examples"] = {k: v for k, v in examples.items() if k in cfg.needed_sets}
    tables, traces = {}, {}
    for name in cfg.needed_sets:
        tables[name], traces[name] = _cached_features(folder, sets[name], identity, cfg, model, progress)
        entry.setdefault("sets", {})[name] = {"n": len(sets[name].ids),
                                              "tokens_mean": float(np.mean([len(x) for x in sets[name].ids]))}
        entry["stage"] = f"features: {name}"
        flush()
    names = {fs: feature_names(fs, cfg.specific_heat) for fs in cfg.feature_sets}
    fitting = dict(methods=cfg.methods, fit=tables[CALIBRATION], target_fpr=cfg.target_fpr, seed=cfg.seed)
    monitors = fit_monitors(names, heldout=tables[HELDOUT], **fitting)
    stream_monitors = fit_stream_monitors({fs: n for fs, n in names.items() if streams(fs)},
                                          fit_traces=traces[CALIBRATION], heldout_traces=traces[HELDOUT],
                                          drift=cfg.cusum_drift, **fitting)
    entry["monitors"] = []
    fitted = [(("sequence", fs, m), monitor) for (fs, m), monitor in monitors.items()] + list(stream_monitors.items())
    for (kind, fs, m), monitor in fitted:
        stem = out / "monitor" / spec.run_name / f"{fs}__{m}{'' if kind == 'sequence' else '__' + kind}"
        save_monitor(monitor, stem)
        entry["monitors"].append({"feature_set": fs, "method": m, "kind": kind, "features": list(names[fs]),
                                  "threshold": float(monitor.threshold_), "file": str(stem.relative_to(out))})
    entry["stage"] = "monitors"
    flush()
    if cfg.evaluate:
        entry["evaluation"], scores = evaluate(
            monitors, stream_monitors, tables, traces, sets[SPLICED].splice_tokens, anomalies=ANOMALIES, test=TEST,
            spliced=SPLICED, target_fpr=cfg.target_fpr, min_prefix_tokens=cfg.min_prefix_tokens,
            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        write_json(out / "scores" / f"{spec.run_name}.json", scores)
        entry["stage"] = "evaluated"
        flush()


def _twins(cfg: MonitorConfig, out: Path) -> list[dict]:
    """Every evaluated model whose random-weight twin was evaluated too, against it (``twin_comparison``)."""
    specs = {spec.run_name: spec for spec in map(ModelSpec.parse, cfg.models)}
    pairs = [(spec.with_random(False).run_name, run) for run, spec in specs.items() if spec.random]
    return [{"trained": base, "twin": twin,
             "comparison": twin_comparison(read_json(out / "scores" / f"{base}.json"),
                                           read_json(out / "scores" / f"{twin}.json"), anomalies=ANOMALIES,
                                           test=TEST, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)}
            for base, twin in pairs if base in specs]


def run_monitor(cfg: MonitorConfig, *, progress: bool = True) -> dict:
    """Fit, calibrate and save the monitors of every model (and evaluate them); returns results.json's content."""
    out = claim_run_folder(cfg.out, "monitor")
    write_json(out / "run.json", {"experiment": "monitor", "config": dataclasses.asdict(cfg), "seed": cfg.seed,
                                  "environment": environment()})
    results = {"experiment": "monitor", "complete": False, "evaluate": cfg.evaluate, "conventions": conventions(cfg),
               "features": dict(FEATURES),
               "feature_sets": {fs: list(feature_names(fs, cfg.specific_heat)) for fs in cfg.feature_sets},
               "stream_kinds": list(STREAM_KINDS),
               "methods": list(cfg.methods), "anomalies": list(ANOMALIES) if cfg.evaluate else [], "models": {}}
    for text in cfg.models:
        _run_model(cfg, text, out, results, progress)
    results["twins"] = _twins(cfg, out) if cfg.evaluate else []
    results["complete"] = True
    write_json(out / "results.json", results)
    monitor_figures(out, results)
    return results


EXPERIMENT = register(Experiment(
    name="monitor", help="energy anomaly monitor: fit and calibrate on WikiText; --evaluate scores six kinds of anomaly",
    config=MonitorConfig, section=report_section, figures=monitor_figures, run=run_monitor, summary=summary,
))
