"""Named protocols: the settings with which a paper made its tables, as one option (``--preset table1``).

A preset is a set of leaf config values (the same flat names as the command-line options). It sits between
the config's defaults and what the user gives: ``from_preset(EnergyConfig, "table1", new_tokens=50)`` takes
the preset's values over the defaults and the explicit ones over the preset. The config records the preset's
name (``RunConfig.preset``), and ``preset_record`` states its values and every setting where the run departs
from it, so a results folder says exactly which protocol it followed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from .config_tree import build_config, leaf_values


@dataclass(frozen=True)
class Preset:
    """One paper protocol."""

    name: str  # the value of --preset
    commands: tuple[str, ...]  # the subcommands it applies to (their configs: COMMAND_CONFIGS)
    values: Mapping[str, object]  # leaf config field -> value
    source: str  # the paper and the section/table whose protocol it follows
    notes: tuple[str, ...] = field(default=())  # where the protocol is ambiguous, and what this preset chose


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="table1",
        commands=("energy", "report"),
        values={"prompts": "wikitext-2-test", "n_prompts": 100, "context_tokens": 50, "new_tokens": 100,
                "trajectory": "generated", "decoding": "greedy", "ppl": "realized", "site": "final",
                "span": "continuation", "energy_scale": "log"},
        source="Tomaz et al., Momentum–Point-Perplexity Mechanics in LLMs (arXiv:2508.08492), Tables 1, 2 and 4",
        notes=("100 WikiText-2 test articles, their first 50 tokens as the prompt, 100 greedy new tokens, the state "
               "at the input of the unembedding.",
               "The paper's 'average of averages' CV has two readings; both are always reported "
               "(avg_trajectory_cv, cv_of_trajectory_means), as are K/V as a ratio of means and a mean of ratios.",
               "Table 4's normalisation of ⟨|ΔE|⟩ is unstated; every normalisation offered is reported under its "
               "own name (mean_abs_delta_h on H, mean_abs_delta_e_norm on E / mean E).")),
    Preset(
        name="stp-paper",
        commands=("stp",),
        values={"prompts": "wikitext-2-test", "n_prompts": 50, "trajectory": "teacher-forced", "max_tokens": 32,
                "axis": "token", "site": "final", "skip_positions": 1, "n_permutations": 100},
        source="the STP-kinematics paper's GPT-2 / Pythia-160M analysis (50 trajectories of last-layer states, "
               "teacher-forced sentences, 100 permutations)",
        notes=("The paper's 50-sentence five-domain corpus is not shipped; 50 WikiText-2 test openings, cut to 32 "
               "tokens (about the paper's 1314 triplets over 50 trajectories), stand in for it.",
               "'Last-layer hidden states' is read as the input of the unembedding (site final), as in HF's "
               "hidden_states[-1]; the first position (an attention sink) is dropped.")),
    Preset(
        name="table3",
        commands=("steer",),
        values={"prompts": "wikitext-2-test", "n_prompts": 80, "texts": 50, "context_tokens": 50, "positions": 10,
                "site": "final", "eta": 0.5, "top_k": 10},
        source="Tomaz et al., Momentum–Point-Perplexity Mechanics in LLMs (arXiv:2508.08492), Sec. E.3.1 and Table 3",
        notes=("50 WikiText-2 test articles, their first 50 tokens as context; at each of the next 10 positions the "
               "state at the input of the unembedding is steered toward the true next token; top-10 lists rated.",
               "Some WikiText-2 openings are shorter than the tokens the protocol reads (context, positions, the "
               "judges' continuation, the energy check); the first 50 of 80 openings long enough are used, and the "
               "results list the skipped ones (texts_too_short).",
               "The paper's rater (GPT-4.1) is replaced by offline judges (embedding, lm); openai:<model> reaches "
               "an OpenAI-compatible endpoint for users who have one.",
               "A text's score is the mean over its positions, and the paired tests run over texts (N = 50 in "
               "the paper).")),
)}


# The config class of each command a preset can name (by class name: this module sits below the experiments).
COMMAND_CONFIGS = {"energy": "EnergyConfig", "stp": "StpConfig", "sphere": "SphereConfig", "report": "ReportConfig",
                   "steer": "SteerConfig"}


def check_preset(name: str, cls) -> Preset:
    """The preset ``name``, which must exist and be a protocol of the command whose config is ``cls``."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if cls.__name__ not in {COMMAND_CONFIGS[c] for c in preset.commands}:
        raise ConfigError("preset", f"the preset {name!r} is a protocol of the command(s) "
                                    f"{', '.join(preset.commands)}, not of this one ({cls.__name__})")
    return preset


def from_preset(cls, name: str, **overrides):
    """``cls`` built with the preset's values over its defaults and ``overrides`` over those."""
    preset = check_preset(name, cls)
    fields = set(leaf_values(cls()))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(unknown[0], f"{cls.__name__} has no setting {unknown[0]!r}")
    return build_config(cls, {**{k: v for k, v in preset.values.items() if k in fields}, **overrides, "preset": name})


def preset_record(config) -> dict | None:
    """What run.json says of the preset: its name, source, values, notes, and where the run departs from it."""
    values = leaf_values(config)
    name = values.get("preset")
    if name is None:
        return None
    preset = PRESETS[name]
    own = {k: v for k, v in preset.values.items() if k in values}
    departures = {k: {"preset": v, "run": values[k]} for k, v in own.items() if values[k] != v}
    return {"name": name, "source": preset.source, "values": own, "departures": departures,
            "notes": list(preset.notes)}
