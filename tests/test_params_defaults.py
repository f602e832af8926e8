"""params.yaml is the one source of configuration: every dataclass default equals it, field for field, and
every params field appears in params.yaml (and every key of params.yaml is a field); library options (``param:
False``) are not in params.yaml; no library entry point or CLI option carries a default of its own for a value
params.yaml holds."""

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import typer.main
import yaml

import optsteps.evaluate
import optsteps.optimizers
from optsteps.cli.main import app
from optsteps.evaluate.options import EvaluateOptions
from optsteps.models.digits import TrainConfig
from optsteps.optimizers.lambda_opt.options import LambdaOptOptions
from optsteps.optimizers.oss.options import OSSOptions
from optsteps.optimizers.polish.options import PolishOptions
from optsteps.pipeline.config import SECTIONS, Params, load_params, param_fields

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
DEFAULT = Params()
SCALARS = (
    "artifacts",
    "results",
    "models",
    "budget",
    "pipeline_defaults",
)  # the top-level keys that are values, not sections


def names(cls) -> set:
    return {f.name for f in param_fields(cls)}


def test_top_level_keys_are_the_params_fields():
    assert set(RAW) == names(Params)
    assert set(SCALARS) | {"train"} | set(SECTIONS) == names(Params)  # each field is read by params_from_dict


@pytest.mark.parametrize("key", SCALARS)
def test_top_level_values_equal_the_defaults(key):
    value = getattr(DEFAULT, key)
    if key == "models":  # name → ModelEntry; params.yaml writes each entry's non-default settings
        value = {name: e.as_param() for name, e in value.items()}
    assert RAW[key] == value


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_section_equals_its_dataclass_defaults(section):
    cls = SECTIONS[section]
    assert set(RAW[section]) == names(cls), f"params.yaml {section}: keys differ from {cls.__name__}'s fields"
    default = getattr(DEFAULT, section)
    assert type(default) is cls
    for name in names(cls):
        assert RAW[section][name] == getattr(default, name), f"{section}.{name}"


def test_train_sections_equal_the_train_defaults():
    assert set(RAW["train"]) == set(DEFAULT.train)
    for model, body in RAW["train"].items():
        assert set(body) == names(TrainConfig), f"params.yaml train.{model}: keys differ from TrainConfig's fields"
        default = DEFAULT.train[model]
        assert default == TrainConfig()
        for name in names(TrainConfig):
            assert body[name] == getattr(default, name), f"train.{model}.{name}"


def test_loaded_params_equal_the_defaults():
    assert load_params(ROOT / "params.yaml") == DEFAULT


@pytest.mark.parametrize(
    "cls,section", [(LambdaOptOptions, "lambda_opt"), (EvaluateOptions, "evaluate"), (OSSOptions, "oss")]
)
def test_option_dataclasses_are_the_sections_and_their_defaults_equal_params(cls, section):
    assert SECTIONS[section] is cls and cls.__dataclass_params__.frozen
    default = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("param", True):
            assert RAW[section][f.name] == getattr(default, f.name), f"{section}.{f.name}"
        else:  # a library option: not a params.yaml key, and refused there like any unknown key
            assert f.name not in RAW[section], f"{section}.{f.name} is marked param: False but params.yaml has it"


def _params_names() -> set:
    """Every params.yaml key of the option sections, and the singular of the list keys (``solvers`` → ``solver``)."""
    out = set()
    for cls in SECTIONS.values():
        for f in param_fields(cls):
            out |= {f.name, f.name[:-1]} if f.name.endswith("s") else {f.name}
    return out


def _entry_functions():
    """Every public function of optsteps.optimizers and optsteps.evaluate that takes an ``options`` object."""
    found = {}
    for pkg in (optsteps.optimizers, optsteps.evaluate):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            mod = importlib.import_module(info.name)
            for name, fn in vars(mod).items():
                if (
                    inspect.isfunction(fn)
                    and fn.__module__ == mod.__name__
                    and not name.startswith("_")
                    and "options" in inspect.signature(fn).parameters
                ):
                    found[f"{fn.__module__}.{name}"] = fn
    return found


ENTRIES = _entry_functions()
GRID = {"nfe"}  # the one K of a call (required), where the options' nfe is the pipeline's grid of K
OPTIONS = {
    "LambdaOptOptions": LambdaOptOptions,
    "EvaluateOptions": EvaluateOptions,
    "OSSOptions": OSSOptions,
    "PolishOptions": PolishOptions,
}


def test_the_algorithms_take_options_objects():
    for name in (
        "optsteps.optimizers.lambda_opt.solve.optimize_lambdas",
        "optsteps.optimizers.lambda_opt.schedule.lambda_opt_schedule",
        "optsteps.evaluate.run.evaluate_schedule",
        "optsteps.evaluate.run.evaluate_grid",
    ):
        assert name in ENTRIES


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_no_entry_signature_repeats_an_option_or_defaults_a_params_value(name):
    """An option reaches an algorithm only through its options object (whose defaults equal params.yaml): no other
    parameter is named like one of its fields, and no parameter named like a params.yaml key has a default other
    than None."""
    sig = inspect.signature(ENTRIES[name])
    ann = str(sig.parameters["options"].annotation)
    cls = next(c for n, c in OPTIONS.items() if n in ann)
    fields = {f.name for f in dataclasses.fields(cls)}
    params_names = _params_names()
    for pname, par in sig.parameters.items():
        if pname == "options":
            assert par.default in (None, inspect.Parameter.empty)
            continue
        if pname not in GRID:
            assert pname not in fields, f"{name}({pname}=…) repeats {cls.__name__}.{pname}"
        if pname in params_names:
            assert par.default in (None, inspect.Parameter.empty), f"{name}({pname}={par.default!r})"


def _commands(c=None, path=()):
    c = c or typer.main.get_command(app)
    subs = getattr(c, "commands", None)
    if subs:
        for n, sub in subs.items():
            yield from _commands(sub, path + (n,))
    else:
        yield " ".join(path), c


COMMANDS = dict(_commands())
MIRRORS = {  # CLI options that stand for a params.yaml value: None = "take params.yaml's (model-merged) value"
    "trajectories": {
        "samples": "trajectories.samples",
        "teacher_steps": "teacher.steps",
        "shard_size": "trajectories.shard_size",
        "ray": "ray.enabled",
    },
    "schedule lambda-opt": {
        "solver": "lambda_opt.solvers",
        "p_exp": "lambda_opt.p",
        "error_model": "lambda_opt.error_model",
    },
    "schedule oss": {"solver": "oss.solvers"},
    "schedule gits": {"solver": "oss.solvers"},
    "evaluate": {
        "solver": "evaluate.solvers",
        "n": "evaluate.n",
        "inception_n": "evaluate.inception_n",
        "seed": "evaluate.seed",
        "guidance": "teacher.guidance",
    },
}


@pytest.mark.parametrize("command", sorted(MIRRORS))
def test_cli_options_that_mirror_params_default_to_none(command):
    options = {p.name: p for p in COMMANDS[command].params if p.param_type_name == "option"}
    for name, key in MIRRORS[command].items():
        section, field = key.split(".")
        assert field in names(SECTIONS[section]), key  # the table names real params keys
        assert name in options, f"{command} has no option {name}"
        assert options[name].default is None, f"{command} --{name} defaults to {options[name].default!r}, not {key}"


def test_every_command_takes_the_params_file_but_apply():
    for command, c in COMMANDS.items():
        opts = {p.name: p.default for p in c.params if p.param_type_name == "option"}
        assert command == "apply" or opts.get("params") == "params.yaml", command


def test_the_field_rule_walker_reads_each_convention():
    """``check_fields`` on a made-up section: every metadata convention refuses a bad value with one line naming
    section.key, the value, the flag it came from and the rule."""
    from dataclasses import dataclass, field, replace

    from optsteps.errors import OptstepsError
    from optsteps.pipeline.config import check_fields

    @dataclass(frozen=True)
    class Section:
        k: int = field(default=2, metadata={"range": (1, 9)})
        at_least: int = field(default=1, metadata={"range": (1, None)})
        x: float = field(default=0.5, metadata={"range": (0.0, 1.0), "open": "hi", "hint": "why"})
        ks: list = field(default_factory=lambda: [3], metadata={"items": {"range": (2, 5)}})
        pick: str = field(default="a", metadata={"choices": ("a", "b")})
        picks: list = field(default_factory=lambda: ["a"], metadata={"choices": ("a", "b"), "nonempty": True})
        folder: str = field(default="f", metadata={"nonempty": "a folder path"})
        odd: int = field(default=1, metadata={"check": lambda v: None if v % 2 else "use an odd number"})

    check_fields(Section(), "sec")
    cases = {
        "k": (0, "sec.k = 0: use an integer in 1 … 9."),
        "at_least": (0, "use an integer ≥ 1"),
        "x": (1.0, "sec.x = 1.0: use a finite number with 0 ≤ x < 1; why."),
        "ks": ([1], "integers in 2 … 5"),
        "pick": ("c", "use one of a, b"),
        "picks": ([], "use a non-empty list of a, b"),
        "folder": (" ", "use a folder path"),
        "odd": (2, "sec.odd = 2: use an odd number."),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(OptstepsError) as e:
            check_fields(replace(Section(), **{key: value}), "sec")
        assert message in str(e.value), (key, str(e.value))
    with pytest.raises(OptstepsError, match=r"sec.x = nan: use a finite number"):
        check_fields(replace(Section(), x=float("nan")), "sec")
    with pytest.raises(OptstepsError, match=r"sec.k = 0 \(given as --k 0\): use an integer in 1 … 9"):
        check_fields(replace(Section(), k=0), "sec", flags={"sec.k": "--k 0"})
