"""Paths and URIs we print or write to: a name read from a file stays inside its folder (``inside``), and no
message shows a credential (``redact``, ``has_credentials``)."""

from __future__ import annotations

import re
from pathlib import Path

from optsteps.errors import OptstepsError


def inside(folder, name, what: str) -> Path:
    """``folder / name`` resolved, refused unless it lies inside ``folder`` (a name read from a file, such as a
    manifest's ``"file"`` or a schedule's ``"method"``, must not reach ``..``, an absolute path or a symlink out)."""
    base = Path(folder).resolve()
    name = str(name)
    target = None if "\x00" in name or not name.strip() else (base / name).resolve()
    if target is None or target == base or base not in target.parents:
        raise OptstepsError(
            f"{what} {name!r} points outside {folder}; a name read from a file must be a plain name "
            "inside its folder: fix or regenerate the file that holds it."
        )
    return target


# (scheme://)user[:password]@host, and token-like query parameters
_USERINFO = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/?#@:\s]*:?[^/?#@\s]*@")
_SECRET_QUERY = re.compile(
    r"[?&;](?:token|access_token|api_key|apikey|key|password|passwd|pwd|secret|sig|"
    r"signature|auth)=",
    re.IGNORECASE,
)
_USERINFO_ANY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_SECRET_VALUE = re.compile(
    r"(?P<key>[?&;](?:token|access_token|api_key|apikey|key|password|passwd|pwd|secret|sig|"
    r"signature|auth)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def has_credentials(uri: str) -> bool:
    """A URI with credentials in it: user[:password]@host (with or without a scheme) or a token/password/secret
    query parameter."""
    return bool(uri) and bool(_USERINFO.match(uri) or _SECRET_QUERY.search(uri))


def redact(text) -> str:
    """``text`` (a URI, or a message holding URIs) with every ``user:password@`` and every token-like query value
    replaced by ``***``: ``http://alice:pw@h/?token=x`` → ``http://***@h/?token=***``."""
    if text is None:
        return ""
    s = str(text)
    s = _USERINFO_ANY.sub(lambda m: m.group("scheme") + "***@", s)
    m = _USERINFO.match(s)
    if m and "://" not in m.group(0):  # a scheme-less user:pw@host
        s = "***@" + s[m.end() :]
    return _SECRET_VALUE.sub(lambda m: m.group("key") + "***", s)
