"""Command-line options generated from typed config dataclasses.

Each field's attribute docstring (the string literal under it) is its help text, so the config class is the
single place where an option is declared, typed, defaulted and documented. A field whose type is itself a
config dataclass contributes its own fields (composed configs flatten into one option list; names are unique
across the tree). Options carry no argparse default: an option the user did not give is absent, so
``given_options`` knows exactly what was typed, and a value equal to the default still counts as given.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing

from ..experiments.config_tree import build_config
from ..experiments.presets import from_preset


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its dataclass bases: {field name: the string literal under it}."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    """The string literal under each field, or else the comment at the end of its line."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    body = ast.parse(source).body[0].body
    docs = {}
    for node, nxt in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
        else:
            # The whole statement is tokenized (a field may span lines); its last line's comment is the doc.
            statement = "\n".join(lines[node.lineno - 1:node.end_lineno]).strip() + "\n"
            comments = [t.string for t in tokenize.generate_tokens(io.StringIO(statement).readline)
                        if t.type == tokenize.COMMENT and t.start[0] == node.end_lineno - node.lineno + 1]
            if comments:
                docs[node.target.id] = comments[-1].lstrip("#").strip()
    return docs


def option_name(field: str, rename: dict[str, str] | None = None) -> str:
    """The flag of a config field: ``new_tokens`` -> ``--new-tokens`` (or its entry in ``rename``)."""
    return (rename or {}).get(field, "--" + field.replace("_", "-"))


def _default(f: dataclasses.Field, instance=None):
    if instance is not None:
        return getattr(instance, f.name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _choices(hint) -> tuple | None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return args
    return None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, rename: dict[str, str] | None = None,
                            instance=None, skip: frozenset[str] = frozenset(), _seen: set | None = None) -> None:
    """One option per leaf field: bools become --flag/--no-flag, list[X] and tuple[X, ...] repeatable, X | None optional.

    ``instance`` supplies the defaults shown in the help (a composed config's own defaults for its parts). A
    leaf name that two parts share (a report's ``site``) is one option that sets both.
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    instance = instance if instance is not None else cls()
    seen = _seen if _seen is not None else set()
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.name in seen:
            continue
        hint, default = hints[f.name], _default(f, instance)
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(default):
            add_dataclass_arguments(parser, type(default), rename=rename, instance=default, skip=skip, _seen=seen)
            continue
        seen.add(f.name)
        choices = getattr(cls, "CHOICES", {}).get(f.name)
        help_text = docs.get(f.name, "")
        if choices:
            help_text += f" One of: {', '.join(map(str, choices))}."
        kwargs = {"dest": f.name, "default": None, "help": f"{help_text} (default: {default})"}
        option = option_name(f.name, rename)
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) in (list, tuple):  # tuple[X, ...] too: the config turns the list into its tuple
            parser.add_argument(option, action="append", type=args[0], metavar=option.lstrip("-").replace("-", "_").upper(), **kwargs)
        else:
            base = next((a for a in args if a is not type(None)), hint)
            base = str if base is typing.Any or not callable(base) else base
            parser.add_argument(option, type=base, metavar=f.name.upper(), **kwargs)


def given_options(cls, namespace: argparse.Namespace, instance=None) -> dict:
    """The leaf fields of ``cls`` (and its parts) that were given on the command line: {name: value}."""
    given, instance = {}, instance if instance is not None else cls()
    for f in dataclasses.fields(cls):
        default = getattr(instance, f.name, None)
        if dataclasses.is_dataclass(default):
            given.update(given_options(type(default), namespace, default))
        elif getattr(namespace, f.name, None) is not None:
            given[f.name] = getattr(namespace, f.name)
    return given


def dataclass_from_args(cls, namespace: argparse.Namespace):
    """Build ``cls`` from parsed options: the given ones over a preset's values (``--preset``), over the
    config's own defaults."""
    given = given_options(cls, namespace)
    if given.get("preset") is not None:
        return from_preset(cls, given.pop("preset"), **given)
    return build_config(cls, given)
