"""JSON text through orjson, with the json module's reading where the two differ."""

from __future__ import annotations

import json
import math

import pytest

from crm_shared.store import jsontext

VALUES = [
    {},
    [],
    {"plan": "gold", "seats": 5, "ratio": 0.1, "ok": True, "none": None},
    {"name": "Zoë Ångström 東京", "nested": {"list": [1, 2.5, "x", [None]]}},
    {"big": 123456789012345678901234567890, "negative": -(10**25)},
    {"edges": [2**63 - 1, -(2**63), 2**64 - 1, 2**64, 10**18, -(10**18)]},
    {"phone": "+441234567890123456789", "id": "0000000000000000000000"},
    {"float": 1e300, "tiny": 5e-324, "long_fraction": 0.12345678901234567890123},
]


@pytest.mark.parametrize("value", VALUES)
def test_a_value_reads_back_equal_to_what_was_written(value: object) -> None:
    text = jsontext.dumps(value)
    assert isinstance(text, str)
    assert jsontext.loads(text) == value
    assert jsontext.loads(text.encode()) == value
    assert json.loads(text) == value


def test_integers_beyond_64_bits_stay_exact_both_ways() -> None:
    big = 123456789012345678901234567890
    assert jsontext.loads(jsontext.dumps({"n": big}))["n"] == big
    assert isinstance(jsontext.loads('{"n": 18446744073709551616}')["n"], int)
    assert jsontext.loads(b"[100000000000000000000000000000]") == [10**29]


def test_integer_keys_become_strings_as_with_json() -> None:
    value = {1: "a", 2: "b"}
    assert jsontext.loads(jsontext.dumps(value)) == json.loads(json.dumps(value))
    assert jsontext.loads(jsontext.dumps(value)) == {"1": "a", "2": "b"}


def test_text_the_json_module_wrote_with_nan_and_infinity_is_read() -> None:
    value = jsontext.loads(json.dumps({"nan": math.nan, "inf": math.inf, "ninf": -math.inf}))
    assert math.isnan(value["nan"]) and value["inf"] == math.inf and value["ninf"] == -math.inf


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "[1,]", "nul", '{"a": 1} x', b"\xff\xfe"])
def test_what_is_not_json_raises_what_json_raises(text: str | bytes) -> None:
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as ours:
        jsontext.loads(text)
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_what_json_cannot_write_is_refused_with_a_type_error() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"set": {1, 2}})
    with pytest.raises(TypeError):
        jsontext.dumps({"object": object()})
