"""Expression strings → the energy algebra.

>>> expr = ec.parse("ring AND NOT 0.5*bar", {"ring": ring, "bar": bar})   # ring - 0.5*bar

Grammar (lowest precedence first; keywords are case-insensitive)::

    expr    := and_ (("OR" | "|") and_)*                  mixture   a | b
    and_    := sum (("AND" | "&") ["NOT"] sum)*           product   a + b, a - b
    sum     := product (("+" | "-") product)*             energies add / subtract
    product := unary (("*" | "/") NUMBER)*                weight / temperature
             | NUMBER "*" unary
    unary   := ("-" | "NOT") unary | atom
    atom    := NAME | NUMBER "*" atom | "(" expr ")"

``a AND NOT w*b`` is ``a - w*b`` (Liu et al.'s negation with strength ``w``), ``NOT a`` is ``-a``.
Errors (:class:`ParseError`) point at the position with a caret and list the known names.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Tuple

from .energy import Energy
from .errors import InputError, InputTypeError

__all__ = ["parse", "ParseError"]

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[-+*/()|&]))"
)
_KEYWORDS = {"AND", "OR", "NOT"}


class ParseError(InputError):
    """A malformed expression; ``position`` is the 0-based character offset of the problem."""

    def __init__(self, message: str, text: str, position: int):
        self.text = text
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message}\n  {text}\n  {caret}")


def _tokenize(text: str) -> List[Tuple[str, str, int]]:
    tokens = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ParseError(f"unexpected character {text[pos]!r}", text, pos)
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind == "name" and value.upper() in _KEYWORDS:
            kind, value = "kw", value.upper()
        tokens.append((kind, value, start))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, names: Mapping[str, Energy]):
        self.text = text
        self.names = names
        self.tokens = _tokenize(text)
        self.i = 0

    # helpers
    def peek(self):
        return self.tokens[self.i]

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, kind, value=None) -> bool:
        k, v, _ = self.peek()
        return k == kind and (value is None or v == value)

    def error(self, message, tok=None):
        tok = tok or self.peek()
        raise ParseError(message, self.text, tok[2])

    def expect(self, kind, value, what):
        if not self.at(kind, value):
            k, v, _ = self.peek()
            got = "the end of the expression" if k == "end" else repr(v)
            self.error(f"expected {what}, got {got}")
        return self.take()

    # grammar
    def parse(self) -> Energy:
        if self.at("end"):
            self.error("empty expression; write e.g. 'a AND NOT 0.5*b'")
        e = self.expr()
        if not self.at("end"):
            k, v, _ = self.peek()
            self.error(f"unexpected {v!r}; expected an operator (AND, OR, NOT, +, -, *) or the end")
        return e

    def expr(self) -> Energy:
        e = self.and_()
        while self.at("kw", "OR") or self.at("op", "|"):
            self.take()
            e = e | self.and_()
        return e

    def and_(self) -> Energy:
        e = self.sum()
        while self.at("kw", "AND") or self.at("op", "&"):
            self.take()
            if self.at("kw", "NOT"):
                self.take()
                e = e - self.sum()
            else:
                e = e + self.sum()
        return e

    def sum(self) -> Energy:
        e = self.product()
        while self.at("op", "+") or self.at("op", "-"):
            op = self.take()[1]
            rhs = self.product()
            e = e + rhs if op == "+" else e - rhs
        return e

    def product(self) -> Energy:
        e = self.unary()
        while self.at("op", "*") or self.at("op", "/"):
            op = self.take()
            if not self.at("number"):
                self.error("an energy can only be multiplied or divided by a number; use AND (+) for products of densities")
            w = float(self.take()[1])
            if op[1] == "/":
                if w == 0:
                    self.error("division by zero", op)
                w = 1.0 / w
            e = w * e
        return e

    def unary(self) -> Energy:
        if self.at("op", "-") or self.at("kw", "NOT"):
            self.take()
            return -self.unary()
        return self.atom()

    def atom(self) -> Energy:
        tok = self.peek()
        kind, value, _ = tok
        if kind == "number":
            self.take()
            self.expect("op", "*", "'*' after a weight (e.g. 0.5*b)")
            return float(value) * self.unary()
        if kind == "name":
            self.take()
            if value not in self.names:
                known = ", ".join(sorted(self.names)) or "(none given)"
                self.error(f"unknown name {value!r}; known names: {known}", tok)
            return self.names[value]
        if kind == "op" and value == "(":
            self.take()
            e = self.expr()
            self.expect("op", ")", "')'")
            return e
        if kind == "end":
            self.error("the expression ends too early; expected a name, a number or '('")
        self.error(f"unexpected {value!r}; expected a name, a number or '('")


def parse(text: str, names: Mapping[str, Energy]) -> Energy:
    """Parse an expression string into the energy algebra.

    Parameters
    ----------
    text : str
        E.g. ``"ring AND bar"``, ``"moons AND NOT 0.5*circle"``, ``"left OR right"``,
        ``"u + 7.5*(c1 - u)"``. See the module docstring for the grammar.
    names : mapping of str to Energy
        The energies the names refer to.

    Returns
    -------
    Energy
        The composed expression.

    Raises
    ------
    ParseError
        Bad syntax or an unknown name; the message shows the position with a caret.
    """
    if not isinstance(text, str):
        raise InputTypeError(f"parse() needs an expression string, got {type(text).__name__}")
    for k, v in names.items():
        if not isinstance(v, Energy):
            raise InputTypeError(f"names[{k!r}] must be an ebmcompose.Energy, got {type(v).__name__}")
    return _Parser(text, names).parse()
