"""params.yaml is the one source of configuration: every dataclass default equals it, field for field, and
every field appears in params.yaml (and every key of params.yaml is a field)."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from optsteps.models.digits import TrainConfig
from optsteps.pipeline.config import SECTIONS, Params, load_params

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
DEFAULT = Params()
SCALARS = ("artifacts", "results", "models", "budget", "pipeline_defaults")  # the top-level keys that are values, not sections


def names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


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
