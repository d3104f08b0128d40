"""Command-line options generated from typed config dataclasses.

Each field's attribute docstring (the string literal under it) is its help text, so the config class is the
single place where an option is declared, typed, defaulted and documented.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its dataclass bases: {field name: the string literal under it}."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, rename: dict[str, str] | None = None) -> None:
    """One option per field: bools become --flag/--no-flag, list[str] repeatable, X | None optional."""
    docs, hints, rename = field_docs(cls), typing.get_type_hints(cls), rename or {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {"dest": f.name, "help": f"{docs.get(f.name, '')} (default: {default})"}
        option = rename.get(f.name, _option(f.name))
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default, **kwargs)
        elif typing.get_origin(hint) is list:
            parser.add_argument(option, action="append", type=args[0], default=None, metavar="SPEC", **kwargs)
        else:
            base = next((a for a in args if a is not type(None)), hint)
            parser.add_argument(option, type=base, default=default, **kwargs)


def dataclass_from_args(cls, namespace: argparse.Namespace):
    """Build ``cls`` from parsed options; repeatable options that were not given keep their default."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(namespace, f.name)
        if value is None and f.default_factory is not dataclasses.MISSING:
            continue
        values[f.name] = value
    return cls(**values)
