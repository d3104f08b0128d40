"""The energy anomaly monitor's experiment: fit it on WikiText, calibrate its threshold, save it, and (``evaluate``)
measure how well it tells in-distribution text from anomalous text, beside the perplexity baseline.

Per model, every sequence goes through the model once, teacher-forced, and its trajectory at the energy site
becomes one row of features (``analysis.monitor.sequence_features``). The WikiText-2 test openings holding at
least ``tokens`` tokens, in a seeded order, are split into the fit set (``n_calibration``), the threshold set
(``n_heldout``), the in-distribution test set (``n_test``) and the sources of the anomalies (``n_anomalies``,
``data.anomalies``). The folder::

    DIR/run.json, DIR/results.json (rewritten after every stage of every model), DIR/figures/
    DIR/monitor/<run>/<feature set>__<method>[__stream].safetensors + .json   each monitor (EnergyMonitor.state())
    DIR/features/<run>/sets-<key>.json              the token ids of every set (keyed by the recipe)
    DIR/features/<run>/<set>-<key>.safetensors      each set's features (and prefix traces), keyed by its content
    DIR/scores/<run>.json                           the anomaly scores behind every number (with --evaluate)

A sequence monitor scores whole sequences; a ``__stream`` monitor (streaming feature sets only) scores the
prefixes of one sequence token by token, its threshold set on the held-out traces. A feature file's key is the
model's identity, the set's exact token ids and every setting the features read, so a resumed run reuses finished
sets and a changed setting recomputes only what it changes. Fitting and evaluation are in :mod:`.monitor_eval`;
tables, figures and the report section in :mod:`.monitor_report`.
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
from ..checks import check_choice, check_device, check_range
from ..data import anomalies
from ..data.anomalies import (
    first_tokens_text,
    other_domain,
    random_characters,
    repeated_phrase,
    shuffled_tokens,
    splice,
    token_at,
)
from ..data.corpora import read_corpus
from ..data.prompts import wikitext_openings
from ..errors import ConfigError, DataError, LensError
from ..models import DEFAULT_MODEL, load_model
from ..models.pretrained.loading import DTYPES, resolve_device
from ..models.spec import ModelSpec
from ..provenance import claim_run_folder, environment, read_json, write_json
from ..trajectories import expand_sites, extract, readout
from .monitor_eval import evaluate, fit_monitors, fit_stream_monitors
from .monitor_report import monitor_figures, report_section, summary
from .registry import Experiment, register
from .runner import digest

CALIBRATION, HELDOUT, TEST = "calibration", "heldout", "test"
SPLICED = "spliced"
ANOMALIES = ("shuffled", "random_characters", "repeated_phrase", "tinystories", "tiny_shakespeare", SPLICED)
CORPUS_OF = {"tinystories": "tinystories", "tiny_shakespeare": "tiny-shakespeare"}
WIKITEXT = "wikitext-2-test"
SPLICE_MARK = "⟦splice⟧"  # where the pasted text starts, in the spliced example the report shows
CHARS_PER_TOKEN = 6  # random characters drawn per token asked: random text takes about 1-2 characters per token
# Raised when a set's recipe or its features change meaning: older caches are then rebuilt, never reused.
SETS_VERSION, FEATURES_VERSION = 1, 1
RECIPE = ("tokens", "n_calibration", "n_heldout", "n_test", "n_anomalies", "seed", "splice_cut", "splice_from",
          "phrase_words", "random_chars_per_token")  # the conventions the sets' token ids depend on


@dataclass
class MonitorConfig:
    """Settings of the monitor experiment. The defaults are sized for the default model on 2 CPU cores: 600
    sequences of 128 tokens (120 + 60 + 60 WikiText, 60 of each of the 6 anomalies), about 77k tokens. Measured on
    2 shared CPU cores: the forward pass runs at ~175 tokens/s and the features at ~440 tokens/s, ~125 tokens/s
    together, so ~10 minutes, plus about a minute to load the model, build the sets and fit the monitors."""

    CHOICES = {"methods": METHODS, "feature_sets": tuple(FEATURE_SETS), "dtype": tuple(DTYPES)}
    FIXED = frozenset({"span"})  # every position is analysed (one context token), so the span has no effect

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
    localises splices. Specific heat needs the attention capture, which this experiment does not run: 'all' leaves it out."""
    target_fpr: float = 0.05
    """False-positive rate the threshold is calibrated to on the held-out paragraphs, and the FPR of the TPR reported."""
    min_prefix_tokens: int = 16
    """The token-by-token trace starts at prefixes of this many tokens (shorter prefixes are too noisy to score)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of sequences for the interval of each AUROC difference, energy against perplexity (0: none)."""
    evaluate: bool = False
    """Also build the anomaly sets and evaluate every monitor on them (without it: fit, calibrate and save only)."""
    conventions: EnergyConventions = field(default_factory=lambda: EnergyConventions(attractor_max_segments=32))
    """The energy conventions (site, ppl, ...). Every sequence is analysed alone, so attractor_max_segments caps the
    attractor test per sequence: 32 of its ~127 segments (seeded), an unbiased mean at a quarter of the read-outs."""
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

    @property
    def needed_sets(self) -> tuple[str, ...]:
        """The sets whose features this run computes."""
        return (CALIBRATION, HELDOUT, *((TEST, *ANOMALIES) if self.evaluate else ()))


def feature_names(feature_set: str) -> tuple[str, ...]:
    """The features of a named set, without the specific heat (no attention capture here)."""
    return tuple(n for n in FEATURE_SETS[feature_set] if n != "specific_heat")


def streams(feature_set: str) -> bool:
    """Whether every feature of the set updates token by token (so its monitor can localise a splice)."""
    return set(feature_names(feature_set)) <= set(FEATURE_SETS["streaming"])


@dataclass
class TextSet:
    """One set of sequences the monitor scores: the token ids the model reads, and where each splice is."""

    name: str
    ids: list[list[int]]  # (N,) token ids per sequence, each at most the run's ``tokens`` long
    splice_tokens: list[int] | None = None  # (N,) spliced sets: index of the first token of the pasted text
    prefixes: bool = False  # also compute the streaming features of every prefix (the token-by-token trace)

    def __post_init__(self):
        if not self.ids:
            raise DataError(f"the {self.name} set is empty; ask for at least 2 sequences")
        short = [i for i, x in enumerate(self.ids) if len(x) < 3]
        if short:
            raise DataError(f"the {self.name} set's sequences {short[:10]} hold fewer than 3 tokens: no energy step")
        if self.splice_tokens is not None and len(self.splice_tokens) != len(self.ids):
            raise DataError(f"the {self.name} set has {len(self.ids)} sequences but {len(self.splice_tokens)} splices")

    def record(self) -> dict:
        return {"ids": self.ids, "splice_tokens": self.splice_tokens, "prefixes": self.prefixes}


def build_sets(cfg: MonitorConfig, tokenizer) -> tuple[dict[str, TextSet], dict[str, str]]:
    """Every set of the run ({name: TextSet}) and the text of each set's first sequence (for the report)."""
    n = cfg.tokens
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])  # noqa: E731
    encode = lambda text: tokenizer(text, add_special_tokens=True)["input_ids"][:n]  # noqa: E731
    pool = [p for p in wikitext_openings(read_corpus(WIKITEXT)) if n_tokens(p) >= n]
    sizes = (cfg.n_calibration, cfg.n_heldout, cfg.n_test, cfg.n_anomalies)
    if len(pool) < sum(sizes):
        raise DataError(f"{WIKITEXT} has {len(pool)} paragraphs of at least {n} tokens, {sum(sizes)} needed "
                        f"(calibration, held-out, test and anomaly sources {sizes}); ask for fewer or shorter",
                        options=("n_calibration", "n_heldout", "n_test", "n_anomalies", "tokens"))
    order = np.random.default_rng(cfg.seed).permutation(len(pool))  # articles and sections mixed in every part
    ends = np.cumsum(sizes)
    parts = [[pool[i] for i in order[a:b]] for a, b in zip((0, *ends[:-1]), ends)]
    sets = {name: TextSet(name, [encode(p) for p in part], prefixes=name != CALIBRATION)
            for name, part in zip((CALIBRATION, HELDOUT, TEST), parts)}
    sources, seeds = parts[3], [(cfg.seed, i) for i in range(cfg.n_anomalies)]
    sets["shuffled"] = TextSet("shuffled", [shuffled_tokens(p, tokenizer, s, max_tokens=n)
                                            for p, s in zip(sources, seeds)])
    sets["random_characters"] = TextSet("random_characters",
                                        [encode(random_characters(CHARS_PER_TOKEN * n, s)) for s in seeds])
    sets["repeated_phrase"] = TextSet("repeated_phrase", [encode(repeated_phrase(p, s)) for p, s in zip(sources, seeds)])
    for name, corpus in CORPUS_OF.items():
        passages = other_domain(corpus, cfg.n_anomalies, cfg.seed, accept=lambda p: n_tokens(p) >= n)
        sets[name] = TextSet(name, [encode(p) for p in passages])
    spliced, where = [], []
    for i, (a, s) in enumerate(zip(sources, seeds)):
        # a is cut inside the window of its first n tokens; b, another source, fills the rest of the window.
        text, offset = splice(first_tokens_text(tokenizer, a, n), sources[(i + 1) % len(sources)], s)
        spliced.append(encode(text))
        where.append(token_at(tokenizer, text, offset))
    sets[SPLICED] = TextSet(SPLICED, spliced, splice_tokens=where, prefixes=True)
    examples = {name: tokenizer.decode(s.ids[0]) for name, s in sets.items()}
    head, k = spliced[0], where[0]
    examples[SPLICED] = f"{tokenizer.decode(head[:k])} {SPLICE_MARK} {tokenizer.decode(head[k:])}"
    return sets, examples


def _cached_sets(folder: Path, recipe: dict, cfg: MonitorConfig, model) -> tuple[dict[str, TextSet], dict, dict]:
    """(sets, examples, model description when the model was loaded for them), built once per recipe."""
    path = folder / f"sets-{digest(recipe)}.json"
    if path.is_file():
        saved = read_json(path)
        return ({k: TextSet(k, v["ids"], v["splice_tokens"], v["prefixes"]) for k, v in saved["sets"].items()},
                saved["examples"], saved["model_description"])
    lm = model()
    sets, examples = build_sets(cfg, lm.tokenizer)
    description = lm.description.to_dict()
    write_json(path, {"recipe": recipe, "sets": {k: s.record() for k, s in sets.items()}, "examples": examples,
                      "model_description": description})
    return sets, examples, description


def compute_features(lm, text_set: TextSet, cfg: MonitorConfig, progress: bool):
    """(the set's feature table, each sequence's prefix table or None): one teacher-forced pass per sequence."""
    (site,) = expand_sites(lm.model, cfg.conventions.site)  # canonical ('block.-1' -> 'block.29'), range checked
    conv = dataclasses.replace(cfg.conventions, site=site)
    trajectories = extract(lm.model, lm.tokenizer, text_set.ids, sites=site, n_context=1,
                           batch_size=cfg.batch_size, progress=progress, metadata={"set": text_set.name})
    read = readout(lm.model, site)
    table = sequence_features(trajectories, read, conv, seed=cfg.seed, device=next(lm.model.parameters()).device)
    table = FeatureTable(table.values, table.names, labels=(text_set.name,) * len(table))
    prefixes = ([prefix_features(t, read, conv, min_tokens=cfg.min_prefix_tokens) for t in trajectories]
                if text_set.prefixes else None)
    return table, prefixes


def _cached_features(folder: Path, text_set: TextSet, identity: dict, cfg: MonitorConfig, model, progress: bool):
    """The set's (table, prefixes) from its cache file, or computed (the model loads only then) and cached."""
    key = digest({"model": identity, "ids": digest(text_set.ids), "conventions": dataclasses.asdict(cfg.conventions),
                  "prefix_tokens": cfg.min_prefix_tokens if text_set.prefixes else None, "seed": cfg.seed,
                  "features": digest(FEATURES), "version": FEATURES_VERSION})
    path = folder / f"{text_set.name}-{key}.safetensors"
    if path.is_file():
        print(f"[resume] monitor: features of {text_set.name} ({folder.name}) cached, kept", file=sys.stderr)
        return _read_features(path, text_set.name)
    if progress:
        print(f"monitor: features of {text_set.name} ({len(text_set.ids)} sequences)", file=sys.stderr)
    table, prefixes = compute_features(model(), text_set, cfg, progress)
    arrays = {"values": np.ascontiguousarray(table.values, dtype=np.float64)}
    for i, p in enumerate(prefixes or []):
        arrays[f"prefix.{i}"] = np.ascontiguousarray(p.values, dtype=np.float64)
    meta = {"names": list(table.names), "prefix_names": list(prefixes[0].names) if prefixes else [],
            "n_prefixes": len(prefixes or []), "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)  # whole or absent: an interrupted write never looks finished
    return table, prefixes


def _read_features(path: Path, name: str):
    """The (table, prefixes) a feature file holds, as ``_cached_features`` returns them."""
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["meta"])
    arrays = load_file(str(path))
    values = arrays["values"]
    table = FeatureTable(values, tuple(meta["names"]), labels=(name,) * values.shape[0])
    prefixes = [FeatureTable(arrays[f"prefix.{i}"], tuple(meta["prefix_names"])) for i in range(meta["n_prefixes"])]
    return table, prefixes or None


def save_monitor(monitor: EnergyMonitor, stem: Path) -> list[Path]:
    """``<stem>.safetensors`` (the arrays of ``monitor.state()``) and ``<stem>.json`` (its metadata); no pickle."""
    arrays, meta = monitor.state()
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = stem.parent / f"{stem.name}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tensors))
    write_json(stem.parent / f"{stem.name}.json", meta)
    return [tensors, stem.parent / f"{stem.name}.json"]


def load_monitor(stem: str | Path) -> EnergyMonitor:
    """The monitor saved by :func:`save_monitor` under ``stem`` (a path without suffix, or either file's path)."""
    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem
    return EnergyMonitor.from_state(load_file(str(stem.parent / f"{stem.name}.safetensors")),
                                    read_json(stem.parent / f"{stem.name}.json"))


def conventions(cfg: MonitorConfig) -> dict:
    """Every setting the results depend on, for results.json and the report's conventions table."""
    return {"tokens": cfg.tokens, "n_calibration": cfg.n_calibration, "n_heldout": cfg.n_heldout,
            "n_test": cfg.n_test, "n_anomalies": cfg.n_anomalies, "target_fpr": cfg.target_fpr,
            "min_prefix_tokens": cfg.min_prefix_tokens, "n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed,
            "dtype": cfg.dtype, "context_tokens": 1, "corpus": WIKITEXT, "splice_cut": anomalies.SPLICE_CUT,
            "splice_from": anomalies.SPLICE_FROM, "phrase_words": anomalies.PHRASE_WORDS,
            "random_chars_per_token": CHARS_PER_TOKEN, **dataclasses.asdict(cfg.conventions)}


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
    sets, examples, entry["model_description"] = _cached_sets(folder, recipe, cfg, model)
    entry["examples"] = {k: v for k, v in examples.items() if k in cfg.needed_sets}
    tables, prefixes = {}, {}
    for name in cfg.needed_sets:
        tables[name], prefixes[name] = _cached_features(folder, sets[name], identity, cfg, model, progress)
        entry.setdefault("sets", {})[name] = {"n": len(sets[name].ids),
                                              "tokens_mean": float(np.mean([len(x) for x in sets[name].ids]))}
        entry["stage"] = f"features: {name}"
        flush()
    names = {fs: feature_names(fs) for fs in cfg.feature_sets}
    fitting = dict(methods=cfg.methods, fit=tables[CALIBRATION], target_fpr=cfg.target_fpr, seed=cfg.seed)
    monitors = fit_monitors(names, heldout=tables[HELDOUT], **fitting)
    stream_monitors = fit_stream_monitors({fs: n for fs, n in names.items() if streams(fs)},
                                          heldout_prefixes=prefixes[HELDOUT], **fitting)
    entry["monitors"] = []
    for kind, fitted in (("sequence", monitors), ("stream", stream_monitors)):
        for (fs, m), monitor in fitted.items():
            stem = out / "monitor" / spec.run_name / f"{fs}__{m}{'' if kind == 'sequence' else '__stream'}"
            save_monitor(monitor, stem)
            entry["monitors"].append({"feature_set": fs, "method": m, "kind": kind, "features": list(feature_names(fs)),
                                      "threshold": float(monitor.threshold_), "file": str(stem.relative_to(out))})
    entry["stage"] = "monitors"
    flush()
    if cfg.evaluate:
        entry["evaluation"], scores = evaluate(
            monitors, stream_monitors, tables, prefixes, sets[SPLICED].splice_tokens, anomalies=ANOMALIES, test=TEST,
            spliced=SPLICED, target_fpr=cfg.target_fpr, min_prefix_tokens=cfg.min_prefix_tokens,
            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        write_json(out / "scores" / f"{spec.run_name}.json", scores)
        entry["stage"] = "evaluated"
        flush()


def run_monitor(cfg: MonitorConfig, *, progress: bool = True) -> dict:
    """Fit, calibrate and save the monitors of every model (and evaluate them); returns results.json's content."""
    out = claim_run_folder(cfg.out, "monitor")
    write_json(out / "run.json", {"experiment": "monitor", "config": dataclasses.asdict(cfg), "seed": cfg.seed,
                                  "environment": environment()})
    results = {"experiment": "monitor", "complete": False, "evaluate": cfg.evaluate, "conventions": conventions(cfg),
               "features": dict(FEATURES), "feature_sets": {fs: list(feature_names(fs)) for fs in cfg.feature_sets},
               "methods": list(cfg.methods), "anomalies": list(ANOMALIES) if cfg.evaluate else [], "models": {}}
    for text in cfg.models:
        _run_model(cfg, text, out, results, progress)
    results["complete"] = True
    write_json(out / "results.json", results)
    monitor_figures(out, results)
    return results


EXPERIMENT = register(Experiment(
    name="monitor", help="energy anomaly monitor: fit and calibrate on WikiText; --evaluate scores six kinds of anomaly",
    config=MonitorConfig, section=report_section, figures=monitor_figures, run=run_monitor, summary=summary,
))
