"""Options of extensions: typed like their declared defaults, each declared, each once."""

from __future__ import annotations

import pytest

from swimkit.errors import SwimkitError
from swimkit.options import (
    checked_options,
    completed,
    option_value,
    parse_options,
    typed_options,
)

DECLARED = {"compensation": False, "steps": 10, "rate": 0.5, "levels": None, "path": ""}
OWNER = "device model 'toy'"


@pytest.mark.parametrize("key,text,value", [
    ("compensation", "on", True), ("compensation", "FALSE", False), ("compensation", "1", True),
    ("steps", "3", 3), ("steps", "2.5", 2.5), ("steps", "1e3", 1000), ("rate", "2", 2.0),
    ("levels", "yes", True), ("levels", "0.25", 0.25), ("levels", "pcm", "pcm"),
    ("path", "curve.csv", "curve.csv"), ("path", "1", "1"),
])
def test_text_is_read_as_the_kind_of_its_default(key, text, value):
    """A bool, an int (a whole number without a point), a float, text; a default of
    None takes a bool, a number or text."""
    got = option_value(OWNER, key, DECLARED[key], text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("key,text,needle", [
    ("compensation", "maybe", "must be true or false"),
    ("steps", "many", "must be a finite number"), ("rate", "inf", "must be a finite number"),
    ("rate", "nan", "must be a finite number"),
])
def test_text_of_the_wrong_kind_is_refused(key, text, needle):
    with pytest.raises(SwimkitError, match=f"option {key} of {OWNER} {needle}"):
        option_value(OWNER, key, DECLARED[key], text)


def test_command_line_pairs_are_declared_and_given_once():
    assert parse_options(OWNER, DECLARED, [("steps", "4"), ("compensation", "true")]) == {
        "steps": 4, "compensation": True}
    with pytest.raises(SwimkitError, match="has no option 'drift'; its options: "
                                           "compensation, steps, rate, levels, path"):
        parse_options(OWNER, DECLARED, [("drift", "1")])
    with pytest.raises(SwimkitError, match="option steps of .* is given twice"):
        parse_options(OWNER, DECLARED, [("steps", "4"), ("steps", "5")])
    with pytest.raises(SwimkitError, match="its options: none"):
        parse_options(OWNER, {}, [("steps", "4")])


def test_options_given_in_the_api_are_checked_not_completed():
    """Values of the API are checked against their default's kind; the defaults are not
    added (completed() does that, the given on top)."""
    assert checked_options(OWNER, DECLARED, None) == {}
    assert checked_options(OWNER, DECLARED, {"rate": 1}) == {"rate": 1}
    for given, needle in (({"compensation": 1}, "true or false"),
                          ({"steps": "4"}, "finite number"), ({"rate": float("inf")},
                                                              "finite number"),
                          ({"rate": True}, "finite number"), ({"nope": 1}, "has no option"),
                          (["steps"], "must be a dict")):
        with pytest.raises(SwimkitError, match=needle):
            checked_options(OWNER, DECLARED, given)
    assert completed(DECLARED, {"steps": 4}) == {**DECLARED, "steps": 4}


def test_typed_options_read_text_then_check():
    """A dict or command-line pairs: text read as its default's kind, then checked."""
    assert typed_options(OWNER, DECLARED, {"steps": "4", "path": "a.csv"}) == {
        "steps": 4, "path": "a.csv"}
    assert typed_options(OWNER, DECLARED, [("rate", "0.1")]) == {"rate": 0.1}
    assert typed_options(OWNER, DECLARED, None) == {}
    with pytest.raises(SwimkitError, match="given twice"):
        typed_options(OWNER, DECLARED, [("rate", "0.1"), ("rate", "0.2")])
    with pytest.raises(SwimkitError, match="must be a dict of name -> value"):
        typed_options(OWNER, DECLARED, ["rate=0.1"])
    with pytest.raises(SwimkitError, match="true or false"):
        typed_options(OWNER, DECLARED, {"compensation": "perhaps"})
