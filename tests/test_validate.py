"""The rules at the door (traintel.core.validate): one name grammar for every API, step numbers as the
loop has them, each refusal with its reason and the accepted form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from traintel.core.validate import NAME_PATTERN, check_name, check_step, suggest_name, to_number


@pytest.mark.parametrize(
    "name", ["loss", "train/loss", "eval.top1", "val/acc@1", "_x", "lr-warmup", "a:b", "x" * 100]
)
def test_names_with_slashes_and_dots_are_accepted(name):
    assert check_name("run.log", name) == name


@pytest.mark.parametrize(
    ("name", "reason", "suggestion"),
    [
        ("bad name", "' ' is not allowed", "bad_name"),
        ("1st", "it starts with '1'", "_1st"),
        ("", "it is empty", None),
        ("x" * 101, "it is 101 characters long", "x" * 100),
        ("loss%", "'%' is not allowed", "loss_"),
    ],
)
def test_a_refused_name_says_why_and_what_would_do(name, reason, suggestion):
    with pytest.raises(ValueError) as refused:
        check_name("run.log", name)
    message = str(refused.value)
    assert message.startswith(f"run.log: name {name!r} is refused: {reason}")
    assert "starting with a letter or '_'" in message
    assert (f"e.g. {suggestion!r}" in message) == (suggestion is not None)


def test_a_name_that_is_no_string_is_a_type_error():
    with pytest.raises(TypeError, match="names are strings"):
        check_name("run.event", 3)


@given(st.text(max_size=120))
def test_every_suggestion_is_a_valid_name(text):
    suggestion = suggest_name(text)
    assert suggestion is None or NAME_PATTERN.fullmatch(suggestion)


@pytest.mark.parametrize("step", [7, np.int64(7), np.int32(7), np.uint8(7), torch.tensor(7)])
def test_integer_like_steps_are_steps(step):
    number = check_step("run.log", step)
    assert number == 7 and type(number) is int


@pytest.mark.parametrize(
    ("step", "error", "text"),
    [
        (True, TypeError, "non-negative integer"),
        (7.0, TypeError, r"pass int\(step\)"),
        (torch.tensor(7.5), TypeError, "0-d integer tensor"),
        ("7", TypeError, "got str"),
        (-1, ValueError, "got -1"),
    ],
)
def test_other_steps_are_refused_with_the_accepted_form(step, error, text):
    with pytest.raises(error, match=text):
        check_step("run.log", step)


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, 1),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7.0),
        (torch.tensor(2.5), 2.5),
        (torch.tensor(3), 3),
        (np.array(4.0), 4.0),
    ],
)
def test_numbers_from_python_numpy_and_torch(value, expected) -> None:
    got = to_number("run.log", "x", value)
    assert got == expected and type(got) in (int, float)


@pytest.mark.parametrize(
    "value, error, message",
    [
        ("1.0", TypeError, "'x' must be a number"),
        (None, TypeError, "got NoneType"),
        (torch.ones(2), ValueError, r"tensor/array of shape \(2,\); log a scalar"),
        (np.zeros((2, 2)), ValueError, r"shape \(2, 2\)"),
        (1 + 2j, TypeError, "must be a number"),
    ],
)
def test_anything_else_is_refused_naming_the_key(value, error, message) -> None:
    with pytest.raises(error, match=message):
        to_number("run.log", "x", value)
