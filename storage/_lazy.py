"""PEP 562 lazy attributes for cubepipe's packages (``cubepipe.storage``,
``cubepipe.pipeline``): a public name is imported from its module on first access, so
``cubepipe --version`` imports no array library (docs/DESIGN.md, "Start-up")."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_attribute"]


def lazy_attribute(
    package: str, table: Mapping[str, str], namespace: dict[str, Any], name: str
) -> Any:
    """The value of ``package.name``: from the module ``table[name]`` (absolute, or
    relative to ``package`` when it starts with a dot; kept in ``namespace``, the
    package's globals, so later lookups do not come here), else the submodule
    ``package.name``, else AttributeError."""
    module = table.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")  # a submodule, as before
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
