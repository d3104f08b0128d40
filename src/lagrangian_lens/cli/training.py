"""The training commands: ``train``, ``sample`` and ``eval``."""
from __future__ import annotations

import dataclasses
import json

from ..training import TrainConfig, evaluate_checkpoint, load_checkpoint, sample, train
from .args import add_dataclass_arguments, dataclass_from_args


def _cmd_train(args) -> int:
    cfg = dataclass_from_args(TrainConfig, args)
    if args.config:
        defaults = TrainConfig()
        given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                 if getattr(cfg, f.name) != getattr(defaults, f.name)}
        cfg = TrainConfig.from_toml(args.config, **given)  # options on the command line win over the file
    metrics = train(cfg, resume=args.resume, force=args.force, progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_sample(args) -> int:
    model, tokenizer, _ = load_checkpoint(args.checkpoint, args.device)
    print(sample(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 top_k=args.top_k, greedy=args.greedy, seed=args.seed))
    return 0


def _cmd_eval(args) -> int:
    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.corpus, args.split, args.device), indent=2))
    return 0


def add_training_commands(sub) -> None:
    p = sub.add_parser("train", help="train an SPLM or the matched GPT", description="Train an SPLM or the matched GPT.")
    add_dataclass_arguments(p, TrainConfig)
    p.add_argument("--config", help="a TOML file of TrainConfig fields; command-line options override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="resume despite changed settings, or restart over a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a run folder of `train` (or its checkpoint folder)")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample among the top-k tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a corpus split")
    p.add_argument("--checkpoint", required=True, help="a run folder of `train` (or its checkpoint folder)")
    p.add_argument("--corpus", default=None, help="corpus name or file (default: the one it was trained on)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_cmd_eval)


__all__ = ["add_training_commands"]
