"""Prompt expressions: terms, signed weights, and errors that point at the problem."""

import pytest

import ebmcompose as ec
from ebmcompose.pipelines import PromptTerm, parse_prompt


def test_and_not_and_weights():
    terms = parse_prompt("a red cube AND a blue sphere AND NOT a table")
    assert terms == (PromptTerm("a red cube", 1.0), PromptTerm("a blue sphere", 1.0), PromptTerm("a table", -1.0))
    terms = parse_prompt("2*(a blue sphere) AND NOT 0.5*(a table, wooden)", neg_weight=0.8)
    assert terms == (PromptTerm("a blue sphere", 2.0), PromptTerm("a table, wooden", -0.4))
    assert parse_prompt("a AND NOT b", weights=[3, 0.5]) == (PromptTerm("a", 3.0), PromptTerm("b", -0.5))


def test_keywords_are_capital_whole_words():
    assert parse_prompt("a cat and a dog, not a bird") == (PromptTerm("a cat and a dog, not a bird", 1.0),)
    assert [t.text for t in parse_prompt("ANDROID AND NOTEBOOK")] == ["ANDROID", "NOTEBOOK"]
    # AND inside parentheses belongs to the prompt
    assert parse_prompt("(salt AND pepper) AND a cube")[0].text == "salt AND pepper"


@pytest.mark.parametrize(
    "text, message, position",
    [
        ("a cube AND AND", "empty prompt", 11),
        ("NOT", "NOT needs a prompt", 3),
        ("a AND NOT", "NOT needs a prompt", 9),
        ("", "empty prompt", 0),
        ("(a cube", "never closed", 0),
        ("a cube)", "opens it", 6),
        ("2*", "weight needs a prompt", 2),
        ("NOT NOT a", "NOT twice", 4),
        ("()", "empty parentheses", 0),
    ],
)
def test_errors_point_at_the_problem(text, message, position):
    with pytest.raises(ec.ParseError, match=message) as err:
        parse_prompt(text)
    assert err.value.position == position
    assert isinstance(err.value, ec.InputError)


def test_bad_weights_and_types():
    with pytest.raises(ec.InputError, match="one weight per term"):
        parse_prompt("a AND b", weights=[1.0])
    with pytest.raises(ec.InputError, match="neg_weight"):
        parse_prompt("a AND NOT b", neg_weight=-1)
    with pytest.raises(TypeError, match="string"):
        parse_prompt(["a"])
