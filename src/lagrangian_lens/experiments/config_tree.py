"""Composed config dataclasses as trees of parts: build one from flat leaf values, or read its leaves.

A leaf name shared by two parts (a report's ``site`` sets both its energy and its paths part) is one value
that sets both; that is how a command-line option, a preset and a Python override all address a setting.
"""
from __future__ import annotations

import dataclasses


def build_config(cls, values: dict, instance=None):
    """``cls`` with the leaf values in ``values`` (flat, by field name) applied over its defaults, recursively.

    Validation runs in each part's ``__post_init__``, so a bad value fails here, before any work.
    """
    instance = instance if instance is not None else cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        current = getattr(instance, f.name)
        if dataclasses.is_dataclass(current):
            kwargs[f.name] = build_config(type(current), values, current)
        else:
            kwargs[f.name] = values.get(f.name, current)
    return cls(**kwargs)


def leaf_values(config) -> dict[str, object]:
    """Every leaf field of a (composed) config instance: {name: value}, in declaration order."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            values.update(leaf_values(value))
        else:
            values[f.name] = value
    return values
