"""Pipeline keys -> command-line arguments: the YAML side of :mod:`cubepipe.pipeline.cli.runner.pipeline`.

A step's keys are its click command's long option names without the dashes; each value
is turned into the text the command line would carry and checked with the option's own
``type.convert``, so a pipeline accepts exactly what ``cubepipe OP`` accepts. Every
error is one line that starts with ``where`` (the file, the step and its op).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import click
import yaml

from cubepipe.storage.errors import InputError
from cubepipe.storage.layout import parse_chunks

__all__ = [
    "MAX_PIPELINE_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "as_text",
    "check_chunks",
    "check_expanded_size",
    "convert_globals",
    "convert_value",
    "did_you_mean",
    "global_options",
    "key_table",
    "kind",
    "norm_key",
    "option_args",
    "parse_args",
    "same_path",
    "check_yaml_shape",
    "yaml_reason",
]


def global_options(group: click.Group) -> dict[str, click.Option]:
    """YAML key -> option for the group's global options that take a value."""
    out: dict[str, click.Option] = {}
    for p in group.params:
        if isinstance(p, click.Option) and not p.is_flag and not p.hidden:
            for opt in p.opts:
                if opt.startswith("--"):
                    out[norm_key(opt[2:])] = p
    return out


def convert_globals(
    top: Mapping[str, Any], globals_: Mapping[str, click.Option], group: click.Group, source: str
) -> dict[str, Any]:
    """Click parameter name -> converted value for the global options the file sets."""
    ctx = click.Context(group, info_name="cubepipe")
    options: dict[str, Any] = {}
    for key, param in globals_.items():
        if top.get(key) is None:
            continue
        where = f"{source}: top-level key {key!r}"
        text = as_text(top[key], where)
        try:
            options[str(param.name)] = param.type.convert(text, param, ctx)
        except click.BadParameter as exc:
            raise InputError(f"{where}: {exc.message}") from None
    return options


def check_chunks(text: str, where: str) -> str:
    """``text`` if it is a valid ``--chunks`` value (``y=256,x=256``), else InputError."""
    try:
        parse_chunks(text)
    except InputError as exc:
        raise InputError(f"{where}: key 'chunks': {exc}") from None
    return text


def key_table(cmd: click.Command) -> dict[str, click.Parameter]:
    """YAML key -> click parameter: ``in`` (first argument), ``out`` (``--output``), and
    every other option by its long name(s) without dashes."""
    table: dict[str, click.Parameter] = {}
    arguments = [a for a in cmd.params if isinstance(a, click.Argument)]
    for i, a in enumerate(arguments):
        table["in" if i == 0 else norm_key(a.name)] = a
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        if p.name == "output":
            table["out"] = p
            continue
        for opt in p.opts:
            if opt.startswith("--"):
                table[norm_key(opt[2:])] = p
    return table


def parse_args(group: click.Group, op: str, args: Sequence[str], where: str) -> dict[str, Any]:
    """The parameters (name -> value, defaults included) command ``op`` of ``group`` parses
    ``args`` to. Only the parser runs (options' types and callbacks), not the command."""
    cmd = group.commands[op]
    try:
        with click.Context(group, info_name="cubepipe") as root:
            with cmd.make_context(op, list(args), parent=root) as sub:
                return dict(sub.params)
    except click.ClickException as exc:
        raise InputError(f"{where}: {exc.format_message()}") from None


def option_args(
    value: Any, param: click.Parameter, ctx: click.Context, where: str, name: str
) -> list[str]:
    """The command-line arguments for one option key (``--flag``, ``--key VALUE`` ...)."""
    assert isinstance(param, click.Option)
    longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
    if param.is_flag and not param.count:
        if not isinstance(value, bool):
            raise InputError(f"{where}: key {name!r}: expected true or false, got {value!r}")
        if value:
            return [longs[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    if param.multiple and isinstance(value, list):
        out: list[str] = []
        for item in value:
            out += [longs[0], convert_value(item, param, ctx, where, name)]
        return out
    return [longs[0], convert_value(value, param, ctx, where, name)]


def convert_value(
    value: Any, param: click.Parameter, ctx: click.Context, where: str, name: str
) -> str:
    """``value`` as the command-line text, checked with the parameter's own type."""
    text = as_text(value, f"{where}: key {name!r}", scalar=param.nargs == -1)
    try:
        param.type.convert(text, param, ctx)
    except click.BadParameter as exc:
        raise InputError(f"{where}: key {name!r}: {exc.message}") from None
    if name == "chunks":
        check_chunks(text, where)
    return text


def as_text(value: Any, where: str, *, scalar: bool = False) -> str:
    """A YAML value as command-line text: lists join with commas, mappings as ``k=v``."""
    if isinstance(value, bool):
        raise InputError(f"{where}: expected a value, got the boolean {str(value).lower()}")
    if isinstance(value, Mapping) and not scalar:
        return ",".join(
            f"{as_text(k, where, scalar=True)}={as_text(v, where, scalar=True)}"
            for k, v in value.items()
        )
    if isinstance(value, list | tuple) and not scalar:
        return ",".join(as_text(v, where, scalar=True) for v in value)
    if isinstance(value, Mapping | list | tuple | set):
        raise InputError(f"{where}: expected a single value, got a {kind(value)}")
    return str(value)


#: Largest pipeline file read (bytes); a pipeline is a few dozen lines.
MAX_PIPELINE_BYTES = 4 * 2**20
#: Deepest nesting of mappings/lists accepted (a pipeline needs 4).
MAX_YAML_DEPTH = 32
#: Most values a pipeline may hold once YAML aliases are expanded ("billion laughs").
MAX_YAML_NODES = 100_000


def check_yaml_shape(text: str, source: str) -> None:
    """Refuse YAML nested deeper than :data:`MAX_YAML_DEPTH`, from the parser's events
    (no recursion: a document nested 3000 deep would exhaust Python's stack in the
    loader)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                raise InputError(
                    f"{source}: the YAML nests mappings/lists more than {MAX_YAML_DEPTH} deep "
                    f"(at line {mark.line + 1}, column {mark.column + 1}); a pipeline is a "
                    "mapping with a 'steps:' list of one-key mappings"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def check_expanded_size(doc: Any, source: str) -> None:
    """Refuse a document with more than :data:`MAX_YAML_NODES` values once aliases are
    followed (``&a [*b, *b, ...]`` chains grow exponentially), walked without recursion."""
    stack, seen = [doc], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise InputError(
                f"{source}: the YAML expands to more than {MAX_YAML_NODES} values (through "
                "its &anchors and *aliases); a pipeline is a short list of steps"
            )
        if isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple | set):
            stack.extend(node)


def yaml_reason(exc: yaml.YAMLError) -> str:
    """What the YAML parser objected to, and where (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def norm_key(key: Any) -> str:
    """``mask-nan`` and ``mask_nan`` are the same key."""
    return str(key).strip().replace("-", "_")


def same_path(path: str) -> str:
    """A path in the form two spellings of the same file compare equal in."""
    return os.path.normpath(os.path.abspath(path))


def kind(value: Any) -> str:
    """The YAML name of a value's type, for messages."""
    names = {dict: "mapping", list: "list", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def did_you_mean(word: Any, choices: Sequence[str] | Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(norm_key(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
