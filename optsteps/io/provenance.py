"""Provenance of a run: the git commit (read from .git, no git process), the params hash and the DVC data hash
(read from dvc.lock as YAML; DVC itself is not imported)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def git_commit(start=".") -> str:
    """HEAD's commit read from the .git folder (no git process); 'unknown' outside a repository."""
    p = Path(start).resolve()
    for d in [p, *p.parents]:
        g = d / ".git"
        if not g.exists():
            continue
        try:
            if g.is_file():  # a worktree or submodule: "gitdir: <path>"
                g = (d / g.read_text().strip().split(":", 1)[1].strip()).resolve()
            common = (g / (g / "commondir").read_text().strip()).resolve() if (g / "commondir").is_file() else g
            head = (g / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(":", 1)[1].strip()
            for base in (g, common):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip()
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except (OSError, IndexError):
            pass
        return "unknown"
    return "unknown"


def params_hash(params=None, path="params.yaml") -> str:
    """sha256 of the canonical JSON of ``params`` (a dict or dataclass), else of ``path`` parsed; 'none'."""
    import dataclasses

    if params is None:
        p = Path(path)
        if not p.is_file():
            return "none"
        import yaml

        params = yaml.safe_load(p.read_text())
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def dvc_data_hash(lock="dvc.lock") -> str:
    """sha256 over the sorted (path, md5) of every dep and out recorded in ``dvc.lock``; 'none' without one."""
    p = Path(lock)
    if not p.is_file():
        return "none"
    import yaml

    data = yaml.safe_load(p.read_text()) or {}
    items = []
    for stage, body in sorted((data.get("stages") or {}).items()):
        for kind in ("deps", "outs"):
            for e in (body or {}).get(kind) or []:
                items.append((stage, kind, e.get("path"), e.get("md5") or e.get("hash") or e.get("etag")))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()
