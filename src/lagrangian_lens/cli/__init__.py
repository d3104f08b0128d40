"""The ``lagrangian-lens`` command: ``models``, ``doctor``, one subcommand per registered experiment, ``report``, and
the training commands ``train``, ``sample``, ``eval``.

``main(argv)`` runs in-process (tests call it directly) and returns the exit status. It is the one place that
speaks in flags: it turns a ``LensError``'s setting names into option names, and catches nothing else, so a
real bug keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import __version__
from ..doctor import DoctorConfig, diagnose
from ..errors import ConfigError, LensError
from ..experiments.config_tree import leaf_values
from ..experiments.registry import Experiment, experiments
from ..experiments.tables import format_table
from ..models.pretrained.registry import ALIASES
from ..report import ReportConfig, make_report
from .args import add_dataclass_arguments, dataclass_from_args, option_name
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


def _cmd_doctor(args) -> int:
    cfg = dataclass_from_args(DoctorConfig, args)
    report = diagnose(cfg.load(), progress=not args.quiet)
    print(json.dumps(report.as_json(), indent=1) if cfg.json else report.table())
    return 0 if report.ok else 1


def _experiment_command(exp: Experiment):
    def command(args) -> int:
        cfg = dataclass_from_args(exp.config, args)
        results = exp.execute(cfg, progress=not args.quiet)
        print(exp.summarise(results))
        print(f"\nresults: {leaf_values(cfg)['out']}/results.json")  # the default folder too, not only a given --out
        return 0
    return command


def _cmd_report(args) -> int:
    cfg = dataclass_from_args(ReportConfig, args)
    path, summary = make_report(cfg, progress=not args.quiet)
    print(summary)
    print(f"\nreport: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagrangian-lens", description="Mechanics of language models.")
    parser.add_argument("--version", action="version", version=f"lagrangian-lens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list model aliases and whether each is available offline").set_defaults(
        func=_cmd_models)
    commands = [(e.name, e.config, e.help, _experiment_command(e)) for e in experiments().values()]
    commands.append(("report", ReportConfig, "the main job: every analysis, one self-contained report.html",
                     _cmd_report))
    commands.insert(0, ("doctor", DoctorConfig, "check every reading of a model (default: a tiny model per "
                        "architecture-table row) against the model's own outputs; exit 1 if any is wrong or refused",
                        _cmd_doctor))
    for name, config, text, func in commands:
        p = sub.add_parser(name, help=text, description=text)
        add_dataclass_arguments(p, config, rename=RENAME, skip=getattr(config, "FIXED", frozenset()))
        p.add_argument("--quiet", action="store_true", help="no progress bars (resume notices still print)")
        p.set_defaults(func=func)
    add_training_commands(sub)
    return parser


def explain(exc: LensError) -> str:
    """The error as one line, with the setting names it involves shown as the flags that set them."""
    message = str(exc)
    if isinstance(exc, ConfigError):
        return f"{option_name(exc.field, RENAME)}: {message.removeprefix(exc.field + ': ')}"
    flags = [option_name(o, RENAME) for o in exc.options]
    return message + (f" (options: {', '.join(flags)})" if flags else "")


def _quiet() -> None:
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the GGUF de-quantisation bar among them
    disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        _quiet()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {getattr(args, 'out', None) or 'the output folder'}; "
              "run the same command again to resume.", file=sys.stderr)
        return 130
    except LensError as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
