"""One boundary for the files optsteps reads (params.yaml, schedule JSON, shard manifests, model_index.json, prompt
files, registry records): encoding errors, wrong top-level types, missing or mistyped keys, absurd sizes and
nesting depths become one ``OptstepsError`` naming the file, the key and the fix — never a ``UnicodeDecodeError``,
``RecursionError``, ``KeyError`` or ``TypeError`` from deep inside a command.

``read_text`` / ``read_json`` / ``read_yaml`` read a file; ``require`` checks a mapping's keys and their types
(a small schema: ``{"file": str, "start": int}``). Every function takes ``what`` (what the file is, for the
message) and ``fix`` (what to do about it).
"""

from __future__ import annotations

import json
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.limits import limit

_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _is(value, t) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in ts:
        return False  # true/false is not a number here
    if float in ts and isinstance(value, int):
        return True
    return isinstance(value, ts)


def _fail(path, problem: str, fix: str):
    raise OptstepsError(f"{path}: {problem}; {fix}")


def decode(data: bytes, path, what: str, fix: str) -> str:
    """UTF-8 text of ``data`` (a UTF-8 byte-order mark is dropped); anything else is one line naming the file."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        _fail(path, f"the {what} is UTF-16 text, optsteps reads UTF-8", f"save it as UTF-8 ({fix})")
    if b"\x00" in data:
        _fail(
            path,
            f"the {what} holds NUL bytes (a binary file, or UTF-16/32 without a byte-order mark)",
            f"pass the text file itself, saved as UTF-8 ({fix})",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(
            path,
            f"the {what} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}: Latin-1 or binary?)",
            f"save it as UTF-8 ({fix})",
        )
    return text[1:] if text.startswith("\ufeff") else text


def read_bytes(path, what: str, max_bytes: int | None = None, fix: str = "check the file") -> bytes:
    p = Path(path)
    if not p.is_file():
        _fail(p, f"the {what} does not exist (or is not a file)", fix)
    cap = limit("MAX_FILE_BYTES") if max_bytes is None else max_bytes
    size = p.stat().st_size
    if size > cap:
        _fail(
            p,
            f"the {what} is {size:,} bytes, over the limit of {cap:,} bytes (MAX_FILE_BYTES)",
            f"{fix}, or raise the limit with OPTSTEPS_MAX_FILE_BYTES={size}",
        )
    try:
        with open(p, "rb") as f:
            return f.read(cap + 1)
    except OSError as e:
        _fail(p, f"the {what} cannot be read ({e.strerror or e})", "check its permissions")


def read_text(path, what: str, max_bytes: int | None = None, fix: str = "check the file") -> str:
    """The UTF-8 text of the file ``path`` (at most ``max_bytes``; default ``MAX_FILE_BYTES``)."""
    return decode(read_bytes(path, what, max_bytes, fix), path, what, fix)


def depth(value, cap: int) -> int:
    """Nesting depth of parsed JSON/YAML (a scalar 0, ``[]`` 1), counted without recursion, stopping past ``cap``
    (shared YAML anchors are visited once)."""
    deepest, stack, seen = 0, [(value, 1)], set()
    while stack:
        v, d = stack.pop()
        if not isinstance(v, (dict, list)) or id(v) in seen:
            continue
        seen.add(id(v))
        deepest = max(deepest, d)
        if deepest > cap:
            return deepest
        stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _check_shape(data, path, what, top, max_depth, fix):
    cap = limit("MAX_NESTING") if max_depth is None else max_depth
    if depth(data, cap) > cap:
        _fail(path, f"the {what} is nested deeper than {cap} levels", fix)
    if top is not None and not _is(data, top):
        _fail(
            path,
            f"the {what} must be {_type_name(top)} at the top level, got {type(data).__name__} "
            f"{json.dumps(data, default=str)[:60] if not isinstance(data, (dict, list)) else ''}".rstrip(),
            fix,
        )
    return data


def read_json(
    path,
    what: str,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    top=dict,
    fix: str = "check the file",
    allow_nan: bool = False,
) -> object:
    """The parsed JSON file ``path``: UTF-8, at most ``max_bytes``, nested at most ``max_depth``, with a top-level
    value of type ``top`` (None: any); NaN/Infinity literals are refused (JSON has none) unless ``allow_nan`` (files
    optsteps wrote with Python's ``json``, e.g. a metric that came out NaN)."""
    text = read_text(path, what, max_bytes, fix)
    return parse_json(text, path, what, max_depth, top, fix, allow_nan)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(
    text: str, path, what: str, max_depth: int | None = None, top=dict, fix: str = "check the file", allow_nan=False
):
    """``read_json`` for text already read (e.g. a registry record): the same checks, the same one line."""
    try:
        data = json.loads(text) if allow_nan else json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        _fail(path, f"the {what} is nested too deeply to read", fix)
    except ValueError as e:  # JSONDecodeError, and NaN/Infinity
        _fail(path, f"the {what} is not valid JSON ({e})", fix)
    return _check_shape(data, path, what, top, max_depth, fix)


def read_yaml(
    path,
    what: str,
    max_bytes: int | None = None,
    max_depth: int | None = None,
    top=dict,
    fix: str = "check the file",
    loader=None,
) -> object:
    """The parsed YAML file ``path`` (``yaml.SafeLoader`` or the given subclass); the checks of ``read_json``.
    An empty file is refused when ``top`` is given (it parses as null)."""
    import yaml

    text = read_text(path, what, max_bytes, fix)
    try:
        data = yaml.load(text, Loader=loader or yaml.SafeLoader)  # noqa: S506 - a SafeLoader (subclass)
    except RecursionError:
        _fail(path, f"the {what} is nested too deeply to read", fix)
    except yaml.YAMLError as e:
        _fail(path, f"the {what} is not valid YAML ({' '.join(str(e).split())})", fix)
    if data is None and top is not None:
        _fail(path, f"the {what} is empty", fix)
    return _check_shape(data, path, what, top, max_depth, fix)


def require(data, schema: dict, path, where: str = "", fix: str = "check the file", optional: dict | None = None):
    """``data`` if it is a mapping with every key of ``schema`` of its type (and the keys of ``optional`` that are
    present of theirs); else one line naming the file, the key (``where`` + key) and the fix."""
    label = where.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        _fail(
            path,
            f"{label} must be a mapping with keys {sorted(schema)}, got {type(data).__name__} "
            f"{json.dumps(data, default=str)[:40]}",
            fix,
        )
    for key, t in list(schema.items()) + list((optional or {}).items()):
        if key not in data:
            if key in schema:
                _fail(path, f"key {where}{key} is missing ({_type_name(t)} expected)", fix)
            continue
        if not _is(data[key], t):
            _fail(path, f"key {where}{key} must be {_type_name(t)}, got {json.dumps(data[key], default=str)[:40]}", fix)
    return data
