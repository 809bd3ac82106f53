"""Prompt expressions: ``"a red cube AND a blue sphere AND NOT 0.5*(a table)"`` → weighted terms.

Grammar (``AND`` and ``NOT`` are keywords in capitals only, so "a cat and a dog" is one prompt)::

    expression := term ("AND" term)*
    term       := ["NOT"] [NUMBER "*"] prompt
    prompt     := free text without a top-level AND | "(" free text ")"

A term's weight ``s`` is its number (default 1), negated by ``NOT`` and multiplied by the
negation strength ``β`` (``neg_weight``) there, so the guided noise estimate is the article's
``ε = ε_u + w Σ_i s_i (ε_i − ε_u)``. Errors are :class:`ebmcompose.ParseError` with a caret at
the problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import InputError, InputTypeError
from ..parse import ParseError

__all__ = ["PromptTerm", "parse_prompt"]

_AND = re.compile(r"\bAND\b")
_NOT = re.compile(r"NOT\b")
_WEIGHT = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*")


@dataclass(frozen=True)
class PromptTerm:
    """One prompt of an expression and its signed weight ``s`` (negative for ``NOT``)."""

    text: str
    weight: float

    def __str__(self) -> str:
        w = self.weight
        if w < 0:
            return f"NOT {-w:g}*({self.text})" if w != -1 else f"NOT ({self.text})"
        return f"{w:g}*({self.text})" if w != 1 else f"({self.text})"


def _split_and(text: str) -> List[Tuple[str, int]]:
    """Pieces between top-level ``AND`` keywords, each with its start offset."""
    pieces, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ParseError("unbalanced ')': no '(' opens it", text, i)
        elif depth == 0:
            m = _AND.match(text, i)
            if m is not None and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                pieces.append((text[start:i], start))
                start = i = m.end()
                continue
        i += 1
    if depth > 0:
        raise ParseError("unbalanced '(': it is never closed", text, text.rfind("("))
    pieces.append((text[start:], start))
    return pieces


def _term(text: str, piece: str, offset: int, neg_weight: float) -> PromptTerm:
    lead = len(piece) - len(piece.lstrip())
    body, pos = piece.strip(), offset + lead
    if not body:
        raise ParseError("an empty prompt: every AND needs a prompt on both sides", text, pos)
    sign = 1.0
    m = _NOT.match(body)
    if m is not None:
        sign = -neg_weight
        rest = body[m.end():]
        pos += m.end() + len(rest) - len(rest.lstrip())
        body = rest.strip()
        if not body:
            raise ParseError("NOT needs a prompt after it, e.g. 'a cat AND NOT a dog'", text, pos)
        if _NOT.match(body):
            raise ParseError("NOT twice: write the prompt once with a NOT, or without", text, pos)
    weight = 1.0
    m = _WEIGHT.match(body)
    if m is not None:
        weight = float(m.group(1))
        if not math.isfinite(weight):
            raise ParseError("a weight must be a finite number", text, pos)
        pos += m.end()
        body = body[m.end():].strip()
        if not body:
            raise ParseError("a weight needs a prompt after '*', e.g. '2*(a blue sphere)'", text, pos)
    if body.startswith("(") and body.endswith(")") and _closes_at_end(body):
        body = body[1:-1].strip()
        if not body:
            raise ParseError("empty parentheses: put a prompt inside", text, pos)
    return PromptTerm(text=body, weight=sign * weight)


def _closes_at_end(body: str) -> bool:
    """Whether the '(' at ``body[0]`` is closed by the ')' at its end (one group, not '(a) (b)')."""
    depth = 0
    for i, c in enumerate(body):
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return i == len(body) - 1
    return False


def parse_prompt(
    expression: str, weights: Optional[Sequence[float]] = None, neg_weight: float = 1.0
) -> Tuple[PromptTerm, ...]:
    """Parse a prompt expression into weighted terms.

    Parameters
    ----------
    expression : str
        E.g. ``"a red cube AND a blue sphere AND NOT a table"``, ``"2*(a blue sphere) AND a cube"``.
    weights : sequence of float, optional
        One multiplier per term (in order), applied on top of inline weights.
    neg_weight : float
        The negation strength ``β >= 0``: a ``NOT`` term's weight is ``−β`` times its number.

    Returns
    -------
    tuple of PromptTerm
        The terms in order, with signed weights.

    Raises
    ------
    ParseError
        An empty prompt ("a cube AND AND"), a lone "NOT", unbalanced parentheses; the message
        shows the position with a caret.
    """
    if not isinstance(expression, str):
        raise InputTypeError(f"a prompt expression must be a string, got {type(expression).__name__}")
    if not (isinstance(neg_weight, (int, float)) and not isinstance(neg_weight, bool)) or not (
        math.isfinite(neg_weight) and neg_weight >= 0
    ):
        raise InputError(f"neg_weight (the NOT strength β) must be a finite number >= 0, got {neg_weight!r}")
    if not expression.strip():
        raise ParseError("an empty prompt; write e.g. 'a red cube AND NOT a table'", expression, 0)
    terms = [_term(expression, piece, off, float(neg_weight)) for piece, off in _split_and(expression)]
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(terms):
            raise InputError(
                f"weights has {len(weights)} entries but the prompt has {len(terms)} terms "
                f"({', '.join(repr(t.text) for t in terms)}); give one weight per term"
            )
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise InputError(f"weights must be finite numbers, got {w!r}")
        terms = [PromptTerm(t.text, t.weight * float(w)) for t, w in zip(terms, weights)]
    return tuple(terms)
