"""The ``lagrangian-lens`` command: ``models``, ``energy``, ``stp``, ``sphere``, ``report``, ``train``, ``sample``, ``eval``.

``main(argv)`` runs in-process (tests call it directly) and returns the exit status.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..errors import LensError
from ..experiments import energy, separator, sphere, stp
from ..experiments.energy import EnergyConfig, run_energy
from ..experiments.separator import SeparatorConfig, run_separator
from ..experiments.sphere import SphereConfig, run_sphere
from ..experiments.stp import StpConfig, run_stp
from ..experiments.tables import format_table, summary_rows
from ..models.pretrained.registry import ALIASES
from ..report import ReportConfig, make_report
from .args import add_dataclass_arguments, dataclass_from_args
from .training import add_training_commands

RENAME = {"models": "--model"}


def _cmd_models(args) -> int:
    rows = [["alias", "available offline", "random twin offline", "description"]]
    for alias in ALIASES.values():
        where = alias.availability()
        rows.append([alias.name, {"packaged": "yes (installed wheel)", "hub-cache": "yes (hub cache)"}.get(where, "no"),
                     "yes" if alias.config is not None or where != "online-only" else "no", alias.description])
    print(format_table(rows))
    print("\nAlso: any hub id or local model directory, a path to a .gguf file, and random:<spec>.")
    return 0


def _experiment_command(cls, run, headline):
    def command(args) -> int:
        cfg = dataclass_from_args(cls, args)
        entries = run(cfg, progress=not args.quiet)
        print(format_table(summary_rows(entries, headline)))
        print(f"\nresults: {cfg.out}/results.json")
        return 0
    return command


def _cmd_separator(args) -> int:
    cfg = dataclass_from_args(SeparatorConfig, args)
    results = run_separator(cfg, progress=not args.quiet)
    print(format_table(separator.summary_rows(results)))
    o = results["oracle"]
    print(f"\noracle on SPLM: median R² {o['median']:.4f}; α {np.round(o['alpha'], 4).tolist()} "
          f"(expected {o['alpha_expected']:.4f}); β {np.round(o['beta'], 4).tolist()} (expected {o['beta_expected']:.4f})")
    print(f"\nresults: {cfg.out}/results.json")
    return 0


def _cmd_report(args) -> int:
    cfg = dataclass_from_args(ReportConfig, args)
    path, summary = make_report(cfg, progress=not args.quiet)
    print(summary)
    print(f"\nreport: {path}")
    return 0


COMMANDS = {  # name: (config class, command, help)
    "energy": (EnergyConfig, _experiment_command(EnergyConfig, run_energy, energy.HEADLINE),
               "point-perplexity energy of models (and random twins)"),
    "stp": (StpConfig, _experiment_command(StpConfig, run_stp, stp.HEADLINE),
            "STP kinematics: acceleration identity, deceleration, permutation null"),
    "sphere": (SphereConfig, _experiment_command(SphereConfig, run_sphere, sphere.HEADLINE),
               "hypersphere geodesic diagnostics against a permutation null"),
    "separator": (SeparatorConfig, _cmd_separator,
                  "shared-potential separator: SPLM vs matched GPT vs a pretrained model"),
    "report": (ReportConfig, _cmd_report, "the main job: every analysis, one self-contained report.html"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagrangian-lens", description="Mechanics of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases and whether each is available offline").set_defaults(
        func=_cmd_models)
    add_training_commands(sub)
    for name, (cls, func, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        add_dataclass_arguments(p, cls, rename=RENAME)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print(f"\ninterrupted: finished runs are kept in {out}; run the same command again to resume.",
              file=sys.stderr)
        return 130
    except (LensError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
