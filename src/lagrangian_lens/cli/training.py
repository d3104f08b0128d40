"""The training commands: ``train``, ``sample`` and ``eval``.

Errors from below arrive as ``LensError`` and are printed by the top-level ``main``; the one thing handled here
is Ctrl-C during ``train``, answered with the command line that continues the run.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..errors import LensError
from ..training import TrainConfig, evaluate_checkpoint, load_checkpoint, sample, train
from ..training.checkpoint import CHECKPOINT, read_meta
from ..training.inference import check_sampling
from .args import add_dataclass_arguments, build_config, given_options, option_name

PROG = "lagrangian-lens"
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def _cmd_train(args) -> int:
    given = given_options(TrainConfig, args)  # typed on the command line, so they win over the file
    cfg = TrainConfig.from_toml(args.config, **given) if args.config else build_config(TrainConfig, given)
    before = _checkpoint_state(Path(cfg.out))
    try:
        metrics = train(cfg, resume=args.resume, force=args.force, progress=not args.quiet)
    except KeyboardInterrupt:
        print(_interrupted(args, Path(cfg.out), before), file=sys.stderr)
        return INTERRUPTED
    print(json.dumps(metrics, indent=2))
    return 0


def _checkpoint_state(out: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, step) of the checkpoint in ``out``, to tell whether a run wrote a new one; None if none."""
    try:
        stat = (out / CHECKPOINT / "meta.json").stat()
        return stat.st_ino, stat.st_mtime_ns, read_meta(out)["step"]
    except (OSError, LensError):
        return None


def _interrupted(args, out: Path, before) -> str:
    """One line: what Ctrl-C left in ``out`` and the command that continues from there."""
    now = _checkpoint_state(out)
    if now is None or (now == before and not args.resume):  # nothing of this run on disk yet
        return (f"interrupted before the first checkpoint; nothing to resume in {out}. Start again with: "
                f"{_command_line(args, resume=False, force=args.force)}")
    # A checkpoint written by this run has its settings, so resuming it needs no force.
    force = args.force and now == before
    return (f"interrupted: the checkpoint of step {now[2]} is kept in {out / CHECKPOINT}. Continue with: "
            f"{_command_line(args, resume=True, force=force)}")


def _command_line(args, *, resume: bool, force: bool) -> str:
    """The ``train`` command as typed (only the options given), with ``--resume`` and ``--force`` as asked."""
    words = [PROG, "train"] + (["--config", args.config] if args.config else [])
    for name, value in given_options(TrainConfig, args).items():
        flag = option_name(name)
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag.removeprefix('--')}")
        else:
            words += [flag, str(value)]
    words += [flag for flag, on in (("--resume", resume), ("--force", force), ("--quiet", args.quiet)) if on]
    return shlex.join(words)


def _cmd_sample(args) -> int:
    check_sampling(args.temperature, args.top_k, args.new_tokens)  # before the checkpoint loads
    model, tokenizer, _ = load_checkpoint(args.checkpoint, args.device)
    top_k, vocab = args.top_k, model.config.vocab_size
    if top_k > vocab:
        print(f"note: --top-k {top_k} exceeds the vocabulary of {vocab} tokens; sampling among all {vocab}",
              file=sys.stderr)
        top_k = vocab
    print(sample(model, tokenizer, args.prompt, new_tokens=args.new_tokens, temperature=args.temperature,
                 top_k=top_k, greedy=args.greedy, seed=args.seed))
    return 0


def _cmd_eval(args) -> int:
    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.corpus, args.split, args.device), indent=2))
    return 0


def add_training_commands(sub) -> None:
    p = sub.add_parser("train", help="train an SPLM or the matched GPT", description="Train an SPLM or the matched GPT.")
    add_dataclass_arguments(p, TrainConfig)
    p.add_argument("--config", help="a TOML file of TrainConfig fields; options given on the command line override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="resume despite changed settings, or restart over a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a run folder of `train` (or its checkpoint folder)")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--new-tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the top-k tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto: the GPU when there is one)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a corpus split")
    p.add_argument("--checkpoint", required=True, help="a run folder of `train` (or its checkpoint folder)")
    p.add_argument("--corpus", default=None, help="corpus name or file (default: the one it was trained on)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto: the GPU when there is one)")
    p.set_defaults(func=_cmd_eval)


__all__ = ["add_training_commands"]
