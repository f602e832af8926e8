"""The import-linter contracts of pyproject.toml (run by `lint-imports` in `make test`) cover every top-level
module of optsteps: the layers contract is exhaustive by itself; the forbidden contracts list their source
modules, and a new top-level package (e.g. optsteps.io) must be added to them."""

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"typer": {"cli"}, "mlflow": {"cli", "pipeline", "integrations"}}


def top_level_modules() -> set[str]:
    pkg = ROOT / "optsteps"
    return {p.parent.name for p in pkg.glob("*/__init__.py")} | {
        p.stem for p in pkg.glob("*.py") if p.stem != "__init__"
    }


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_layers_contract_is_exhaustive_over_optsteps():
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    assert layers["containers"] == ["optsteps"] and layers["exhaustive"] is True


@pytest.mark.parametrize("external", sorted(ALLOWED))
def test_forbidden_contracts_cover_every_other_top_level_module(external):
    (contract,) = [
        c
        for c in contracts()
        if c["type"] == "forbidden" and external in c["forbidden_modules"] and c["source_modules"] != ["optsteps"]
    ]
    want = {f"optsteps.{m}" for m in top_level_modules() - ALLOWED[external]}
    have = set(contract["source_modules"])
    assert have == want, (
        f"{contract['name']!r}: add {sorted(want - have)} to / remove {sorted(have - want)} from "
        "its source_modules in pyproject.toml"
    )
