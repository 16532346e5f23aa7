"""The JSON Schema of the config file (`poller config-schema`): valid, described, strict."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from poller.cli import main
from poller.config import json_schema
from tests.unit.test_config import FULL, WEBHOOK, toml

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    return [error.message for error in validator.iter_errors(tomllib.loads(text))]


def test_example_config_is_valid(validator: jsonschema.Draft202012Validator) -> None:
    assert problems(validator, EXAMPLE.read_text(encoding="utf-8")) == []


def test_every_key_the_loader_reads_is_valid(validator: jsonschema.Draft202012Validator) -> None:
    # FULL sets every key (level = "DEBUG" too: the loader takes any case, so must editors).
    assert problems(validator, FULL) == []


@pytest.mark.parametrize(
    ("text", "unexpected"),
    [
        pytest.param(toml(top='colour = "red"'), "colour", id="top-level"),
        pytest.param(toml(tables='[poll]\nintervall = "5s"\n'), "intervall", id="poll"),
        pytest.param(toml(webhooks=WEBHOOK + "zzz = 1\n"), "zzz", id="webhook"),
    ],
)
def test_unknown_key_fails(
    validator: jsonschema.Draft202012Validator, text: str, unexpected: str
) -> None:
    assert any(f"'{unexpected}' was unexpected" in p for p in problems(validator, text))


def test_example_with_unknown_key_fails(validator: jsonschema.Draft202012Validator) -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    document["webhooks"][0]["secrets"] = "whsec_x"
    assert not validator.is_valid(document)


@pytest.mark.parametrize("value", ["30", '"30s"', '"250ms"', '"1h30m"', "0.5"])
def test_duration_is_a_number_or_a_string_with_a_unit(
    validator: jsonschema.Draft202012Validator, value: str
) -> None:
    assert problems(validator, toml(tables=f"[poll]\ninterval = {value}\n")) == []


@pytest.mark.parametrize(
    "tables",
    [
        '[poll]\ninterval = "30"\n',  # no unit
        "[poll]\ninterval = 0\n",
        "[poll]\ninterval = true\n",
        '[poll]\npage_size = "100"\n',
        "[poll]\npage_size = 101\n",
        '[delivery]\nretry_schedule = ["5s", "soon"]\n',
        '[log]\nlevel = "verbose"\n',
        '[store]\nurl = "mysql://db/poller"\n',
        "[poll]\ninterval = 86401\n",  # past its bound (a string's bound is the loader's)
        "[delivery]\nretry_schedule = [2592001]\n",
    ],
)
def test_what_the_loader_rejects_by_shape_fails(
    validator: jsonschema.Draft202012Validator, tables: str
) -> None:
    assert problems(validator, toml(tables=tables))


def test_strings_the_store_keeps_are_bounded(validator: jsonschema.Draft202012Validator) -> None:
    (problem,) = problems(validator, toml(top='instance_id = "' + "i" * 256 + '"'))
    assert "is too long" in problem


def test_webhook_values_are_checked(validator: jsonschema.Draft202012Validator) -> None:
    for webhook in (
        '[[webhooks]]\nname = "Recordings"\nurl = "https://x"\n',
        '[[webhooks]]\nname = "a"\nurl = "ftp://x"\n',
        '[[webhooks]]\nname = "a"\nurl = "https://x"\nheaders = { "X Api" = "1" }\n',
        '[[webhooks]]\nname = "a"\nurl = "https://x"\nrooms = []\n',
        '[[webhooks]]\nurl = "https://x"\n',
        '[[webhooks]]\nname = "' + "w" * 65 + '"\nurl = "https://x"\n',
        '[[webhooks]]\nname = "a"\nurl = "https://x"\nheaders = { "X-Api" = "a\\u0001" }\n',
    ):
        assert problems(validator, toml(webhooks=webhook)), webhook


def walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_every_key_is_described(schema: dict[str, Any]) -> None:
    tables = [schema, *schema["$defs"].values()]
    for table in tables:
        assert table.get("description")
        for name, prop in table["properties"].items():
            # A table's description is its own (older pydantic wraps the $ref in allOf).
            ref = prop.get("$ref") or prop.get("allOf", [{}])[0].get("$ref")
            assert prop.get("description") or ref, name
            assert "\n" not in prop.get("description", "")


def test_no_null_anywhere(schema: dict[str, Any]) -> None:
    # TOML has no null: an absent key is how a file says "none".
    for node in walk(schema):
        assert node.get("type") != "null"
        assert "default" not in node or node["default"] is not None


def test_cli_prints_the_schema_without_a_config(
    capsys: pytest.CaptureFixture[str], schema: dict[str, Any]
) -> None:
    assert main(["config-schema"], environ={"POLLER_CONFIG": "/nonexistent.toml"}) == 0
    assert json.loads(capsys.readouterr().out) == schema
    assert main(["config-schema", "-c", "/nonexistent.toml"], environ={}) == 0
