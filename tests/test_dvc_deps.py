"""dvc.yaml's code deps are honest: every optsteps file a stage's command can import lies under one of the
stage's deps (so a fix anywhere in that code makes `dvc status` report the stage), and every optsteps dep
holds code the stage imports.

The import closure is computed statically with ``ast``, from the ``optsteps`` console script (``optsteps.cli.main``:
its module code and ``main``) and the typer command the stage's ``cmd`` names. An imported module contributes its
module-level code (including whole class bodies); a function contributes its body (function-level imports
included) once something reachable refers to it. A function only handed to ``typer``'s ``X.command(...)(f)``
registers another command and is not followed.
The real DVC side (a solver change makes `dvc status` report the stages that run it) is
test_pipeline_e2e.py::test_a_solver_change_makes_dvc_status_report_the_stages_that_run_it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "optsteps"
CLI = "optsteps.cli.main"


# ---- the static import closure -----------------------------------------------------------------------


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module ``name`` under ``root`` (a package's ``__init__.py``), None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


class Module:
    """One parsed module: its top-level functions, module-level code and module-level import bindings."""

    def __init__(self, name: str, root: Path = ROOT):
        self.name, self.root = name, root
        self.file = module_file(name, root)
        self.tree = ast.parse(self.file.read_text(), str(self.file))
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.module_code = []  # what runs on import: every statement, but of a def only decorators and defaults
        for n in self.tree.body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.module_code += n.decorator_list + n.args.defaults + [d for d in n.args.kw_defaults if d]
            else:
                self.module_code.append(n)
        self.imported, self.bindings = self.imports(self.module_code)

    @property
    def package(self) -> str:
        return self.name if self.file.name == "__init__.py" else self.name.rpartition(".")[0]

    def imports(self, nodes) -> tuple[set, dict]:
        """(modules imported, name → ("mod", module) | ("attr", module, name)) of the import statements in nodes."""
        imported, bindings = set(), {}
        for node in nodes:
            for n in ast.walk(node):
                if isinstance(n, ast.Import):
                    for a in n.names:
                        imported.add(a.name)
                        bindings[a.asname or a.name.split(".")[0]] = (
                            "mod",
                            a.name if a.asname else a.name.split(".")[0],
                        )
                elif isinstance(n, ast.ImportFrom):
                    base = n.module or ""
                    if n.level:
                        pkg = self.package.split(".")
                        base = ".".join(pkg[: len(pkg) - n.level + 1] + ([base] if base else []))
                    imported.add(base)
                    for a in n.names:
                        sub = f"{base}.{a.name}"
                        if module_file(sub, self.root):
                            imported.add(sub)
                            bindings[a.asname or a.name] = ("mod", sub)
                        else:
                            bindings[a.asname or a.name] = ("attr", base, a.name)
        return imported, bindings

    def references(self, nodes, bindings: dict) -> set:
        """(module, name) of every module-level function / imported name the nodes refer to."""
        skip = set()
        for node in nodes:  # app.command("name")(f) registers f as another command: not a call of f
            for n in ast.walk(node):
                if (
                    isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Call)
                    and isinstance(n.func.func, ast.Attribute)
                    and n.func.func.attr == "command"
                ):
                    skip.update(id(a) for a in n.args if isinstance(a, ast.Name))

        def resolve(e):
            if isinstance(e, ast.Name):
                return bindings.get(e.id)
            if isinstance(e, ast.Attribute):
                t = resolve(e.value)
                if t and t[0] == "mod":
                    sub = f"{t[1]}.{e.attr}"
                    return ("mod", sub) if module_file(sub, self.root) else ("attr", t[1], e.attr)
            return None

        refs = set()
        for node in nodes:
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in skip:
                    t = bindings.get(n.id)
                    if t is None and n.id in self.functions:
                        refs.add((self.name, n.id))
                    elif t is not None:
                        refs.add((t[1], None) if t[0] == "mod" else (t[1], t[2]))
                elif isinstance(n, ast.Attribute):
                    t = resolve(n)
                    if t is not None:
                        refs.add((t[1], None) if t[0] == "mod" else (t[1], t[2]))
        return refs


def import_closure(entries, root: Path = ROOT) -> set[Path]:
    """The optsteps files that running ``entries`` ((module, function name or None for the import)) can import."""
    modules: dict[str, Module] = {}
    seen, queue, files = set(), list(entries), set()

    def mod(name):
        if name not in modules:
            modules[name] = Module(name, root)
        return modules[name]

    def visit_import(name):
        queue.extend((p, None) for p in _prefixes(name) if module_file(p, root))

    while queue:
        unit = queue.pop()
        if unit in seen or not module_file(unit[0], root):
            continue
        seen.add(unit)
        m = mod(unit[0])
        visit_import(m.name)
        if unit[1] is None:
            files.add(m.file)
            for name in m.imported:
                visit_import(name)
            queue.extend(m.references(m.module_code, m.bindings))
        elif unit[1] in m.functions:
            body = [m.functions[unit[1]]]
            imported, local = m.imports(body)
            for name in imported:
                visit_import(name)
            queue.extend(m.references(body, {**m.bindings, **local}))
        elif m.bindings.get(unit[1], ("",))[0] == "attr":  # a name the module re-exports
            _, src, attr = m.bindings[unit[1]]
            queue.append((src, attr))
        # else a class or a variable: its module's code is already in
    return files


def cli_command(words: list[str], root: Path = ROOT) -> str:
    """The function in optsteps.cli.main that ``optsteps <words>`` runs (typer apps, add_typer names, commands)."""
    m = Module(CLI, root)
    apps = {"app": ""}
    for n in ast.walk(m.tree):
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add_typer"
            and isinstance(n.args[0], ast.Name)
        ):
            name = next(k.value.value for k in n.keywords if k.arg == "name")
            apps[n.args[0].id] = name
    for f in m.functions.values():
        for d in f.decorator_list:
            if (
                isinstance(d, ast.Call)
                and isinstance(d.func, ast.Attribute)
                and d.func.attr == "command"
                and isinstance(d.func.value, ast.Name)
                and d.func.value.id in apps
            ):
                cmd = d.args[0].value if d.args else f.name.replace("_", "-")
                prefix = apps[d.func.value.id]
                if ([prefix] if prefix else []) + [cmd] == words:
                    return f.name
    raise AssertionError(f"no command `optsteps {' '.join(words)}` in {CLI}")


def stages(root: Path = ROOT) -> dict:
    """stage name → (the optsteps command words, its deps) from dvc.yaml (foreach stages: their ``do``)."""
    out = {}
    for name, body in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        body = body.get("do", body)
        words = body["cmd"].split()
        assert words[0] == "optsteps", f"stage {name}: {body['cmd']!r} is not an optsteps command"
        cmd = []
        for w in words[1:]:
            if w.startswith("-"):
                break
            cmd.append(w)
        out[name] = (cmd, [d for d in body.get("deps", []) if isinstance(d, str)])
    return out


def stage_closure(cmd: list[str], root: Path = ROOT) -> set[Path]:
    return import_closure([(CLI, None), (CLI, "main"), (CLI, cli_command(cmd, root))], root)


def covered(path: Path, deps: list[str], root: Path = ROOT) -> bool:
    rel = path.relative_to(root).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = stages()


# ---- the fast checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_file_is_a_dep_of_the_stage(stage):
    cmd, deps = STAGES[stage]
    files = stage_closure(cmd)
    assert module_file("optsteps.core.schedule") in files  # the closure reaches past the CLI
    missing = sorted(f.relative_to(ROOT).as_posix() for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not depend on; add to its deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_code_dep_exists_and_is_imported(stage):
    cmd, deps = STAGES[stage]
    files = stage_closure(cmd)
    for d in deps:
        if d.split("/")[0] != PACKAGE:
            continue
        assert (ROOT / d).exists(), f"dvc.yaml stage {stage}: dep {d} does not exist"
        assert any(covered(f, [d]) for f in files), f"dvc.yaml stage {stage}: dep {d} holds no code the stage imports"


def test_the_closure_follows_lazy_imports_and_only_the_stage_command():
    oss = {f.relative_to(ROOT).as_posix() for f in stage_closure(["stage", "oss"])}
    assert {
        "optsteps/optimizers/oss/search.py",
        "optsteps/core/solvers/samplers.py",
        "optsteps/teacher/trajectories.py",
    } <= oss
    assert "optsteps/evaluate/run.py" not in oss and "optsteps/optimizers/lambda_opt.py" not in oss
    train = {f.relative_to(ROOT).as_posix() for f in stage_closure(["train"])}
    assert "optsteps/models/digits.py" in train and "optsteps/optimizers/oss.py" not in train
