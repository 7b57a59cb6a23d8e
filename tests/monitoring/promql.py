"""Just enough PromQL lexing to find the series an expression reads, for the monitoring tests.

Not a parser: it tokenises (strings, label-matcher blocks, ranges, numbers and
durations, Grafana variables), drops grouping lists (``by (...)``, ``on (...)``, ...),
and calls an identifier a metric name when it is not a keyword and not followed by
``(`` or by ``by``/``without`` (which make it a function or an aggregation). That is
how PromQL itself tells them apart, so ``rate``, ``sum``, ``histogram_quantile`` and friends need no list.
Syntax errors are not its business: ``promtool check rules`` parses every expression
for real (see test_rules.py and test_dashboard.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Words that are never metric names where they stand (case-insensitive in PromQL).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
#: Words followed by a parenthesised list of label names, not of expressions.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?)[a-zA-Z0-9_]*")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_MATCHER = re.compile(
    r"""([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
)


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, braces, range, number, var, punct
    text: str


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    """A vector selector: a metric name (None for ``{__name__=...}``) and its matchers."""

    name: str | None
    matchers: tuple[Matcher, ...]

    def matcher(self, label: str) -> Matcher | None:
        return next((m for m in self.matchers if m.label == label), None)


def _string_end(expr: str, i: int) -> int:
    quote = expr[i]
    j = i + 1
    while j < len(expr):
        if expr[j] == "\\" and quote != "`":
            j += 2
            continue
        if expr[j] == quote:
            return j + 1
        j += 1
    raise ValueError(f"unterminated string at {i}: {expr!r}")


def _block_end(expr: str, i: int, close: str) -> int:
    j = i + 1
    while j < len(expr):
        if expr[j] in "\"'`":
            j = _string_end(expr, j)
            continue
        if expr[j] == close:
            return j + 1
        j += 1
    raise ValueError(f"unclosed {expr[i]!r} at {i}: {expr!r}")


def tokens(expr: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "\"'`":
            j = _string_end(expr, i)
            out.append(Token("string", expr[i:j]))
            i = j
        elif c == "{":
            j = _block_end(expr, i, "}")
            out.append(Token("braces", expr[i + 1 : j - 1]))
            i = j
        elif c == "[":
            j = _block_end(expr, i, "]")
            out.append(Token("range", expr[i + 1 : j - 1]))
            i = j
        elif c == "$":
            m = _VARIABLE.match(expr, i)
            if not m:
                raise ValueError(f"stray $ at {i}: {expr!r}")
            out.append(Token("var", m.group()))
            i = m.end()
        elif (m := _NUMBER.match(expr, i)) and (c.isdigit() or c == "."):
            out.append(Token("number", m.group()))
            i = m.end()
        elif m := _IDENT.match(expr, i):
            out.append(Token("ident", m.group()))
            i = m.end()
        else:
            out.append(Token("punct", c))
            i += 1
    return out


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    found = []
    for m in _MATCHER.finditer(text):
        raw = m.group(3)
        value = raw[1:-1] if raw.startswith("`") else raw[1:-1].encode().decode("unicode_escape")
        found.append(Matcher(m.group(1), m.group(2), value))
    return tuple(found)


def _skip_parens(toks: list[Token], i: int) -> int:
    """Index after the parenthesised group starting at toks[i] == '('."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j] == Token("punct", "("):
            depth += 1
        elif toks[j] == Token("punct", ")"):
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced parentheses")


def analyse(expr: str) -> tuple[list[Selector], list[tuple[str, ...]]]:
    """The vector selectors of `expr`, and the label lists of its by/without/on/... clauses."""
    toks = tokens(expr)
    selectors: list[Selector] = []
    groupings: list[tuple[str, ...]] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok.kind == "ident" and tok.text.lower() in LABEL_LISTS and nxt == Token("punct", "("):
            end = _skip_parens(toks, i + 1)
            groupings.append(tuple(t.text for t in toks[i + 2 : end - 1] if t.kind == "ident"))
            i = end
            continue
        if tok.kind == "ident" and tok.text.lower() in LABEL_LISTS:
            i += 1  # group_left without a label list
            continue
        if tok.kind == "ident":
            # A function or aggregation: followed by "(", or by "by"/"without" and then
            # "(" (sum by (x) (...)); a keyword; neither is a metric name.
            aggregation = nxt is not None and nxt.kind == "ident" and nxt.text.lower() in {"by", "without"}
            if nxt == Token("punct", "(") or aggregation or tok.text.lower() in KEYWORDS:
                i += 1
                continue
            matchers: tuple[Matcher, ...] = ()
            if nxt is not None and nxt.kind == "braces":
                matchers = parse_matchers(nxt.text)
                i += 1
            selectors.append(Selector(tok.text, matchers))
        elif tok.kind == "braces":  # {__name__="...", ...} with no name in front
            selectors.append(Selector(None, parse_matchers(tok.text)))
        i += 1
    return selectors, groupings


def metric_names(expr: str) -> set[str]:
    """Every series name `expr` selects. A regex on __name__ is returned as written, so a
    caller that checks names against a list rejects it instead of trusting it."""
    names = set()
    for sel in analyse(expr)[0]:
        if sel.name is not None:
            names.add(sel.name)
        else:
            m = sel.matcher("__name__")
            if m is None:
                raise ValueError(f"selector without a metric name: {expr!r}")
            names.add(m.value if m.op == "=" else f"{m.op}{m.value}")
    return names
