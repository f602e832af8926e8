"""Every fenced snippet of README.md and docs/*.md is run or explicitly classified.

A snippet's language decides what happens to it:

- ``text``: a diagram; it must hold no command line.
- ``json``: parsed; a schedule (``noise_schedule`` + ``t``) must load as a ``Schedule``.
- ``yaml``: parsed; its top-level keys must be ``params.yaml`` sections, its ``models:`` entries use only entry keys,
  and a snippet without ``models:`` loads through ``load_params`` merged over ``params.yaml``.
- ``python``: executed (in a temporary folder, with the names of ``PY_FIXTURES``), unless in ``EXCLUDED``.
- ``bash``: every ``optsteps …`` line is checked against the real command line (the command exists, every option
  is one of its options, required options are given); the snippet is then either run (``RUN``: every line through
  the CLI in a temporary workspace) or in ``EXCLUDED`` with the reason.

A snippet is named by its file and its first line. An unknown language, a bash or python snippet that is neither
run nor excluded, and an ``EXCLUDED``/``RUN`` entry that names no snippet each fail the test, so adding a snippet
means running it or writing down why not.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"text", "json", "yaml", "python", "bash"}
COMMANDS = {
    "optsteps",
    "python",
    "python3",
    "dvc",
    "make",
    "pip",
    "ray",
    "mlflow",
    "prefect",
    "docker",
    "kubectl",
    "git",
    "curl",
    "export",
    "cd",
    "cp",
    "conda",
    "mim",
    "pytest",
    "$",
}

TRAINED = "needs the trained digits model (minutes of training); the same commands run in tests/test_pipeline_e2e.py"
REGISTRY = "needs a registry with a registered champion; tests/test_registry.py and test_pipeline_e2e.py cover these"
SERVER = "a long-running server; tests/test_infra.py starts a real mlflow server"
BENCHMARK = "a benchmark of minutes to hours on trained models (its numbers are in the page, with this command)"
PIPELINE = "needs a real diffusers pipeline at that path; apply runs on tiny pipelines in tests/test_pipelines.py"

# (page, start of the snippet's first line) -> why it is not run here; each entry must match exactly one snippet
EXCLUDED = {
    (
        "README.md",
        "make run    # create .venv",
    ): "the two top-level commands: the full pipeline and the full suite (CI runs `make test` itself)",
    ("README.md", "optsteps apply --pipeline /models/sd-v1-5"): PIPELINE,
    ("README.md", "optsteps registry list --model digits --nfe 5"): REGISTRY,
    ("docs/cli.md", "optsteps train --model digits"): TRAINED,
    ("docs/costs.md", "python benchmarks/cost_quality.py"): BENCHMARK,
    ("docs/costs.md", "PYTHONPATH=. timeout 720 python benchmarks/cost_quality.py"): BENCHMARK,
    ("docs/algorithms.md", "PYTHONPATH=. timeout 720 python benchmarks/quality_front.py"): BENCHMARK,
    ("docs/cli.md", "optsteps apply --pipeline /models/sd-v1-5"): PIPELINE,
    (
        "docs/cli.md",
        "optsteps stage identify --model digits",
    ): "the pipeline stages on digits (training included); tests/test_pipeline_e2e.py runs them through dvc repro",
    ("docs/cli.md", "optsteps registry list --model digits --nfe 5"): REGISTRY,
    (
        "docs/cli.md",
        "python flows/optimize_schedules.py --params params.yaml",
    ): "the whole Prefect flow; tests/test_pipeline_e2e.py runs it on a small config",
    (
        "docs/pipeline.md",
        "dvc exp run -S",
    ): "a DVC experiment of the full pipeline; tests/test_pipeline_e2e.py reruns stages after a params change",
    (
        "docs/pipeline.md",
        "dvc remote add -d local",
    ): "commits to the user's repository and pushes the pipeline's outputs",
    ("docs/evaluation.md", ".venv/bin/mlflow ui"): SERVER,
    ("docs/evaluation.md", "import tempfile, mlflow"): REGISTRY
    + " (test_registry.py: the same load_model/predict calls)",
    ("docs/models.md", "optsteps apply --pipeline path/to/pipeline"): PIPELINE,
    (
        "docs/models.md",
        "git clone https://github.com/djghosh13/geneval.git",
    ): "installs GenEval from the network (conda, a CUDA GPU); not part of the project's stack",
    (
        "docs/deployment.md",
        "export RAY_AUTH_MODE=disabled",
    ): "shell environment only; the Makefile sets the same variables for make run and make test",
    (
        "docs/deployment.md",
        "# the head (GCS on 6379)",
    ): "starts a Ray cluster; tests/test_infra.py starts the same two nodes and runs trajectories through it",
    ("docs/deployment.md", "mlflow server --host 127.0.0.1"): SERVER,
    (
        "docs/deployment.md",
        "prefect server start",
    ): "a long-running server; tests/test_infra.py serves the flow on a real one",
    (
        "docs/deployment.md",
        "cd infra/compose",
    ): "needs Docker; tests/test_infra.py validates the compose file against its schema",
    ("docs/deployment.md", "dvc remote add -d minio"): "needs the compose stack's MinIO and pushes to it",
    (
        "docs/deployment.md",
        "kubectl create namespace optsteps",
    ): "needs a Kubernetes cluster; tests/test_infra.py validates the manifests against their schemas",
}

# (page, start of the first line) of bash snippets whose every line runs through the CLI in a temporary workspace
RUN = {
    ("docs/cli.md", "optsteps schedule baseline karras"),
    ("docs/cli.md", "optsteps schedule lambda-opt"),
    ("docs/cli.md", "optsteps trajectories --model gmm"),
}


def _in(table, page: str, first: str) -> bool:
    return any(p == page and first.startswith(prefix) for p, prefix in table)


def _snippets():
    out = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)```(.*)$", lines[i])
            if not m:
                i += 1
                continue
            indent, lang, body = len(m.group(1)), m.group(2).strip(), []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i][indent:])
                i += 1
            assert i < len(lines), f"{rel}: unclosed code fence"
            i += 1
            text = "\n".join(body)
            first = next((ln.strip() for ln in body if ln.strip()), "")
            out.append((rel, lang, first, text))
    return out


SNIPPETS = _snippets()


def _id(s):
    return f"{s[0]}:{s[1]}:{s[2][:40]}"


def _commands(text: str) -> list[list[str]]:
    """The command lines of a bash snippet as token lists (comments dropped, continuations joined, split at && ; |)."""
    cmds = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        cur = []
        for tok in tokens:
            if tok in ("&&", ";", "|", "&", "||"):
                cmds.append(cur)
                cur = []
            else:
                cur.append(tok.rstrip("&") if tok.endswith("&") and tok != "&" else tok)
        cmds.append(cur)
    return [c for c in cmds if c]


def _cli_root():
    import typer

    from optsteps.cli.main import app

    return app, typer.main.get_command(app)


def _check_cli_line(args: list[str]) -> None:
    """``args`` (after ``optsteps``) name a real command with only its own options and its required ones given."""
    _, cmd = _cli_root()
    path, rest = [], list(args)
    while hasattr(cmd, "commands"):
        assert rest and rest[0] in cmd.commands, f"optsteps {' '.join(path)}: no command {rest[:1]}"
        path.append(rest.pop(0))
        cmd = cmd.commands[path[-1]]
    opts = {}
    for p in cmd.params:
        for o in [*p.opts, *getattr(p, "secondary_opts", [])]:
            opts[o] = p
    n_args = sum(1 for p in cmd.params if not p.opts[0].startswith("-"))
    given, positional, k = set(), 0, 0
    while k < len(rest):
        tok = rest[k]
        if tok.startswith("-"):
            name = tok.split("=", 1)[0]
            assert name in opts or name == "--help", f"optsteps {' '.join(path)}: unknown option {name}"
            if name in opts:
                given.add(opts[name].name)
                if not getattr(opts[name], "is_flag", False) and "=" not in tok:
                    k += 1
        else:
            positional += 1
        k += 1
    assert positional <= n_args, f"optsteps {' '.join(path)}: {positional} arguments, takes {n_args}"
    missing = [p.name for p in cmd.params if p.required and p.opts[0].startswith("-") and p.name not in given]
    assert not missing, f"optsteps {' '.join(path)}: required options missing: {missing}"


def test_every_snippet_is_run_or_classified():
    unknown, unclassified = [], []
    for page, lang, first, _text in SNIPPETS:
        if lang not in LANGS:
            unknown.append(f"{page}: ```{lang} {first!r}")
        elif lang == "bash" and not _in(EXCLUDED, page, first) and not _in(RUN, page, first):
            unclassified.append(f"{page}: {first!r}")
    assert not unknown, f"snippets need a language of {sorted(LANGS)}: {unknown}"
    assert not unclassified, (
        "bash snippets neither run (RUN) nor excluded with a reason (EXCLUDED) in "
        f"tests/test_doc_snippets.py: {unclassified}"
    )
    matches = {k: sum(p == k[0] and f.startswith(k[1]) for p, _, f, _ in SNIPPETS) for k in [*EXCLUDED, *RUN]}
    stale = [k for k, n in matches.items() if n != 1]
    assert not stale, f"EXCLUDED/RUN entries that match no snippet or several (edit them): {stale}"
    assert not set(EXCLUDED) & RUN
    assert all(reason.strip() for reason in EXCLUDED.values())


def _check_text(snippet, workspace):
    for line in snippet[3].splitlines():
        word = line.split()[0] if line.strip() else ""
        assert word not in COMMANDS and not word.startswith(".venv/"), (
            f"{snippet[0]}: a command in a text block: {line!r}; make it a bash snippet"
        )


def _check_json(snippet, workspace):
    from optsteps.core.schedule import Schedule

    d = json.loads(snippet[3])
    if isinstance(d, dict) and {"noise_schedule", "t"} <= set(d):
        s = Schedule.from_dict(d)
        assert s.nfe == len(d["t"]) - 1


def _check_yaml(snippet, workspace):
    import dataclasses

    import yaml

    from optsteps.models.entries import KEYS
    from optsteps.pipeline.config import Params, load_params

    d = yaml.safe_load(snippet[3])
    assert isinstance(d, dict)
    sections = {f.name for f in dataclasses.fields(Params)}
    assert set(d) <= sections, f"not params.yaml sections: {set(d) - sections}"
    if "models" in d:  # pipeline folders that do not exist here: check the entries' keys
        for name, entry in d["models"].items():
            assert set(entry or {}) <= set(KEYS), f"models.{name}: unknown entry keys {set(entry) - set(KEYS)}"
        return
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in d.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    (workspace / "params.yaml").write_text(yaml.safe_dump(base))
    load_params(workspace / "params.yaml")


def _check_cli_lines(snippet, workspace):
    for c in _commands(snippet[3]):
        if c[0] in ("optsteps", ".venv/bin/optsteps"):
            _check_cli_line(c[1:])


def _tiny_ddpm(folder):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import build_ddpm

    return str(build_ddpm(folder))


PY_FIXTURES = {"tiny_ddpm_dir": _tiny_ddpm}


def _real_stack(code: str) -> bool:
    """A snippet that builds a fixture pipeline or imports diffusers runs the real diffusers stack (integration)."""
    return (
        any(re.search(rf"\b{name}\b", code) for name in PY_FIXTURES)
        or re.search(r"^\s*(from|import) diffusers\b", code, re.MULTILINE) is not None
    )


def _exec_python(snippet, workspace):
    code = snippet[3]
    ns = {"__name__": "__snippet__"}
    for name, make in PY_FIXTURES.items():
        if re.search(rf"\b{name}\b", code):
            ns[name] = make(workspace / name)
    exec(compile(code, f"{snippet[0]}:{snippet[2]}", "exec"), ns)  # noqa: S102 - running the docs is the point


def _run_bash(snippet, workspace):
    from typer.testing import CliRunner

    from optsteps.core.schedule import Schedule

    app, _ = _cli_root()
    for c in _commands(snippet[3]):
        assert c[0] == "optsteps", f"RUN snippets run optsteps lines only: {c}"
        r = CliRunner().invoke(app, c[1:])
        assert r.exit_code == 0, f"{' '.join(c)} -> {r.exit_code}: {r.output[-2000:]}"
        if "--json" in c:
            s = Schedule.from_json(r.stdout)
            assert s.nfe == int(c[c.index("--nfe") + 1])


ACTIONS = {
    "text": _check_text,
    "json": _check_json,
    "yaml": _check_yaml,
    "cli-lines": _check_cli_lines,
    "python": _exec_python,
    "run": _run_bash,
}


def _cases():
    """(action, snippet) for every snippet; runs of the real stack (CLI runs, diffusers) are marked integration."""
    out = []
    for s in SNIPPETS:
        page, lang, first, code = s
        if lang not in LANGS:
            continue  # test_every_snippet_is_run_or_classified names it
        actions = {
            "bash": ["cli-lines"] + (["run"] if _in(RUN, page, first) else []),
            "python": [] if _in(EXCLUDED, page, first) else ["python"],
        }.get(lang, [lang])
        for a in actions:
            heavy = a == "run" or (a == "python" and _real_stack(code))
            out.append(pytest.param(a, s, id=f"{a}:{_id(s)}", marks=[pytest.mark.integration] if heavy else []))
    return out


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("action,snippet", _cases())
def test_snippet(action, snippet, workspace):
    ACTIONS[action](snippet, workspace)


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists, and a heading there if it has #."""
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                heads = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", dest.read_text(), flags=re.MULTILINE)}
                if anchor not in heads:
                    bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, bad
