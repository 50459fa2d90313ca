"""YAML read strictly: PyYAML's safe loader, refusing what YAML 1.1 reads otherwise than a person would (a key twice,
base-60 and leading-zero numbers, underscores), for config files and ``--set`` values alike."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from bearrec.checks import short

_INT, _FLOAT, _MERGE = ("tag:yaml.org,2002:" + t for t in ("int", "float", "merge"))


# A config is a page of text; a stream such as /dev/zero would otherwise be read until memory runs out.
MAX_CONFIG_BYTES = 16 << 20


class StrictYAMLError(yaml.YAMLError, ValueError):
    """YAML that :class:`StrictLoader` refuses; ``line`` is 1-based."""

    def __init__(self, line: int, problem: str):
        super().__init__(problem)
        self.line = line


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what YAML 1.1 reads otherwise than a reader would (a :class:`StrictYAMLError`
    naming the row and the key): a key twice in one mapping (PyYAML keeps the last), and the numbers whose YAML 1.1
    value is not the YAML 1.2 one: base 60 (``1:00`` is 60), a leading zero (``010`` is octal 8) and underscores
    (``1_0`` is 10). Quoted, they are text. ``0x1f`` and ``0b11`` keep their values; ``0o10`` is text, as in YAML 1.1.
    A scalar that does not fit its explicit tag (``!!int x``) is a YAML error instead of a crash.
    """

    def construct_document(self, node):
        self._check(node)
        return super().construct_document(node)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{short(node.value)} is not a valid {node.tag.rsplit(':', 1)[-1]}", node.start_mark) from None

    def _check(self, root: yaml.Node) -> None:
        """Refuse the first duplicate key or YAML 1.1-only number under ``root``, in document order."""
        stack, seen = [(root, "")], set()
        while stack:
            node, where = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT):
                self._check_number(node, where)
            elif isinstance(node, yaml.SequenceNode):
                stack += reversed([(item, f"{where}[{i}]") for i, item in enumerate(node.value)])
            elif isinstance(node, yaml.MappingNode):
                first: dict = {}
                children = []
                for key, value in node.value:
                    name = where
                    if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                        name = f"{where}.{key.value}" if where else key.value
                        earlier = first.setdefault((key.tag, key.value), key)
                        if earlier is not key:
                            raise StrictYAMLError(key.start_mark.line + 1,
                                                  f"duplicate key {name!r} (first at row {earlier.start_mark.line + 1})")
                    children += [(key, where), (value, name)]
                stack += reversed(children)

    def _check_number(self, node: yaml.ScalarNode, where: str) -> None:
        """Refuse a number whose YAML 1.1 value is not YAML 1.2's, naming ``where`` and what to write instead."""
        text = node.value
        if ":" in text:
            reason, instead = "base 60 in YAML 1.1", ""
        elif "_" in text:
            reason, instead = "YAML 1.1 drops underscores", ""
        elif node.tag == _INT and re.fullmatch(r"[-+]?0[0-9]+", text):
            reason, instead = "octal in YAML 1.1", f", or {int(text)} without the leading zero"
        else:
            return
        try:
            value = (self.construct_yaml_int if node.tag == _INT else self.construct_yaml_float)(node)
        except ValueError:
            return  # not a number at all: construct_object says so
        if instead and int(text) == value:  # 00, +07: decimal and octal agree
            instead = ""
        raise StrictYAMLError(node.start_mark.line + 1, f"{where + ': ' if where else ''}{text} is read as {value!r} "
                                                        f"({reason}): write {value!r}{instead}, or quote it as text")


# YAML 1.1 wants a dot in a float, so `lr: 1e-3` would be text; as YAML 1.2 and --set, it is a number here. The
# resolver lists are copied first: PyYAML's add_implicit_resolver would append to the SafeLoader's own lists.
StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML experiment file, or a pipe such as ``--config <(...)`` (read once), as a dict (see :class:`StrictLoader`);
    one-line errors name the file (and the row of a syntax error, a duplicate key or a YAML 1.1-only number)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a config file") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: over {MAX_CONFIG_BYTES >> 20} MiB, too large for a config file")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=StrictLoader)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    except StrictYAMLError as err:
        raise ValueError(f"{path}, row {err.line}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", row {mark.line + 1}" if mark else ""
        raise ValueError(f"{path}{where}: not valid YAML ({_yaml_problem(err)})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file must be a mapping of sections, not a {type(raw).__name__}")
    return raw


def _yaml_problem(err: yaml.YAMLError) -> str:
    return " ".join(str(getattr(err, "problem", None) or err).split())


# The decimal numbers that YAML 1.1 leaves as text: 3e-4 (it wants 3.0e-4), 1.0e5, -.5; not 09 nor 1_0e5
_DECIMAL = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_value(text: str) -> Any:
    """A command-line value as YAML (:class:`StrictLoader`), except that ``3e-4`` is a number (YAML 1.1 wants
    ``3.0e-4``). Anything YAML refuses is a one-line ``ValueError``."""
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except StrictYAMLError:
        raise
    except yaml.YAMLError as err:
        raise ValueError(f"not a valid value ({_yaml_problem(err)})") from None
    except RecursionError:
        raise ValueError("the value is nested too deeply") from None
    return float(value) if isinstance(value, str) and _DECIMAL.fullmatch(value) else value


def parse_assignment(item: str, where: str, expected: str) -> tuple[str, Any]:
    """``key=value`` as ``(key, parse_value(value))``; a one-line ``ValueError`` starting with ``where`` otherwise
    (``expected``: the form to write, for an item without ``=`` or key)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{where}: expected {expected}")
    try:
        return key, parse_value(value)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
