"""Tests of scenario files (agents/scenario.py): a good TOML loads, a bad one names file and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.common.scenario import load_scenario
from agents.common.settings import StartupError

GOOD = """\
name = "two transformers"

[[transformers]]
id = "T1"
rating_kw = 50.0

[[transformers]]
id = "T2"
rating_kw = 25
reverse_limit_kw = 10.5
"""


def write_toml(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_scenario_good_file(tmp_path):
    scenario = load_scenario(write_toml(tmp_path, GOOD))
    assert scenario.name == "two transformers"
    assert [t.id for t in scenario.transformers] == ["T1", "T2"]
    assert scenario.transformers[0].rating_kw == 50.0
    assert scenario.transformers[0].reverse_limit_kw is None  # defaults to the rating downstream
    assert scenario.transformers[1].rating_kw == 25.0
    assert scenario.transformers[1].reverse_limit_kw == 10.5


def test_load_scenario_empty_file_gives_defaults(tmp_path):
    scenario = load_scenario(write_toml(tmp_path, ""))
    assert scenario.name == "unnamed"
    assert scenario.transformers == []


def test_load_scenario_missing_file_raises(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(StartupError, match="not found") as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_load_scenario_bad_toml_raises(tmp_path):
    path = write_toml(tmp_path, 'name = "unterminated\n')
    with pytest.raises(StartupError, match="not valid TOML") as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "line 1" in message  # tomllib's position travels in the message


def test_load_scenario_not_utf8_raises(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(StartupError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "entry", "problem"),
    [
        (GOOD.replace("rating_kw = 25", "rating_kw = -5"), "transformers[1].rating_kw", "greater than 0"),
        (GOOD.replace("rating_kw = 50.0", "rating_kw = 0"), "transformers[0].rating_kw", "greater than 0"),
        (GOOD.replace("rating_kw = 50.0", "rating_kw = nan"), "transformers[0].rating_kw", "finite"),
        (GOOD.replace("rating_kw = 50.0", "rating_kw = inf"), "transformers[0].rating_kw", "finite"),
        (
            GOOD.replace("reverse_limit_kw = 10.5", "reverse_limit_kw = -1"),
            "transformers[1].reverse_limit_kw",
            "greater than 0",
        ),
        (
            GOOD.replace("rating_kw = 25\n", "rating_kw = 25\nrating_kva = 30\n"),
            "transformers[1].rating_kva",
            "Extra inputs",
        ),
        ("nmae = 'typo'\n" + GOOD, "nmae", "Extra inputs"),
        (GOOD.replace("rating_kw = 50.0\n", ""), "transformers[0].rating_kw", "required"),
        (GOOD.replace('id = "T2"', 'id = ""'), "transformers[1].id", "at least 1 character"),
        ('name = "x"\ntransformers = "T1"\n', "transformers", "valid list"),
    ],
    ids=[
        "negative-rating",
        "zero-rating",
        "nan-rating",
        "inf-rating",
        "negative-reverse-limit",
        "unknown-key",
        "unknown-top-level-key",
        "missing-rating",
        "empty-id",
        "not-a-list",
    ],
)
def test_load_scenario_invalid_entry_names_file_and_entry(tmp_path, text, entry, problem):
    path = write_toml(tmp_path, text)
    with pytest.raises(StartupError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {entry}: ")
    assert problem in message


def test_load_scenario_duplicate_ids_raise_naming_the_id(tmp_path):
    path = write_toml(tmp_path, GOOD.replace('id = "T2"', 'id = "T1"'))
    with pytest.raises(StartupError, match="unique") as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "repeated: T1" in message


def test_load_scenario_directory_raises_startup_error(tmp_path):
    with pytest.raises(StartupError):
        load_scenario(tmp_path)
