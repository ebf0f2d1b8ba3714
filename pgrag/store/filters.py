"""Metadata filters for search: `--filter 'lang=en'`, `--filter 'year>=2020'`, ...

Grammar, one condition per expression (several expressions are ANDed):

    KEY OP VALUE
    KEY    letters, digits, '_', '-', '.' (starts with a letter or '_'): a top-level key
           of the chunk's metadata (a copy of its document's metadata)
    OP     =  !=  <  <=  >  >=  ~
    VALUE  the rest of the expression, spaces around it stripped; a number (2020, -1.5),
           true, false, null, or text. Quote it ("2020", 'a b') to force text.

    KEY=VALUE    metadata @> {"KEY": VALUE}: JSONB containment, which a GIN index on
                 chunks.metadata can serve. A number also matches the same digits
                 stored as text ({"year": "2020"}).
    KEY!=VALUE   the negation of KEY=VALUE: true as well where KEY is missing.
    KEY~VALUE    KEY holds VALUE or is a list with VALUE among its elements
                 (tags~security matches {"tags": ["hr", "security"]}).
    KEY<VALUE, <=, >, >=
                 with a number: compares numerically where KEY holds a number (or a
                 numeric string), false elsewhere; with text: compares as text (so
                 ISO dates compare as dates: created>=2024-01-01).

Every key and value reaches PostgreSQL as a query parameter (`metadata ->> %(f0k)s`), never
inside the SQL text, so an expression cannot inject SQL. A malformed expression raises
ValueError naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from pgrag.runtime.errors import UserError

_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(!=|<=|>=|=|<|>|~)\s*(.*?)\s*$", re.S)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
# Text that PostgreSQL can cast to double precision: checked before the cast, so a
# non-numeric value is skipped instead of failing the query.
_NUMERIC_SQL = r"'^\s*-?\d+(\.\d+)?([eE][-+]?\d+)?\s*$'"
GRAMMAR = "KEY OP VALUE with OP one of = != < <= > >= ~ (e.g. lang=en, year>=2020, tags~security)"


class InvalidFilter(UserError, ValueError):
    """A metadata condition that does not parse, or compares what it cannot."""


@dataclass(frozen=True)
class Filter:
    """One parsed condition: `key op value` over a chunk's metadata."""

    key: str
    op: str
    value: Any  # str, int, float, bool or None

    def sql(self, column: str, name: str) -> tuple[str, dict[str, Any]]:
        """A boolean SQL condition over the JSONB `column` (an expression of ours, never user
        text) and its parameters, named after `name` so several filters can share a query."""
        key, val = f"{name}k", f"{name}v"
        if self.op in ("=", "!="):
            alternatives = [{self.key: self.value}]
            if isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
                alternatives.append({self.key: _number_text(self.value)})
            params = {f"{name}v{i}": Jsonb(a) for i, a in enumerate(alternatives)}
            cond = " OR ".join(f"{column} @> %({p})s" for p in params)
            return (f"({cond})" if self.op == "=" else f"NOT ({cond})"), params
        if self.op == "~":
            params = {
                f"{name}v0": Jsonb({self.key: self.value}),
                f"{name}v1": Jsonb({self.key: [self.value]}),
            }
            return f"({column} @> %({name}v0)s OR {column} @> %({name}v1)s)", params
        if isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            number = (
                f"CASE WHEN ({column} ->> %({key})s) ~ {_NUMERIC_SQL}"
                f" THEN ({column} ->> %({key})s)::double precision END"
            )
            return f"({number} {self.op} %({val})s)", {key: self.key, val: float(self.value)}
        if self.value is None or isinstance(self.value, bool):
            raise InvalidFilter(
                f"filter {self}: {self.op} needs a number or text, not {self.value!r}"
            )
        return f"(({column} ->> %({key})s) {self.op} %({val})s)", {key: self.key, val: self.value}

    def __str__(self) -> str:
        return f"{self.key}{self.op}{json.dumps(self.value)}"


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() else repr(value)


def _value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if _NUMBER.match(text):
        number = float(text)
        return int(text) if re.fullmatch(r"-?\d+", text) else number
    return {"true": True, "false": False, "null": None}.get(text, text)


def parse_filter(expression: str) -> Filter:
    """Parse one expression; InvalidFilter with the grammar when it is malformed."""
    match = _EXPRESSION.match(expression)
    if not match:
        raise InvalidFilter(f"bad filter {expression!r}: expected {GRAMMAR}")
    key, op, raw = match.groups()
    if raw == "":
        raise InvalidFilter(
            f"bad filter {expression!r}: no value after {op!r} (expected {GRAMMAR})"
        )
    if "\x00" in raw:
        raise InvalidFilter(f"bad filter {expression!r}: NUL characters are not allowed")
    parsed = Filter(key, op, _value(raw))
    if op in ("<", "<=", ">", ">=") and (parsed.value is None or isinstance(parsed.value, bool)):
        raise InvalidFilter(f"bad filter {expression!r}: {op} needs a number or text")
    return parsed


def parse_filters(expressions: Sequence[str]) -> list[Filter]:
    if isinstance(expressions, str):  # a lone string would be iterated character by character
        expressions = [expressions]
    return [parse_filter(e) for e in expressions]


def where_sql(filters: Sequence[Filter], column: str = "c.metadata") -> tuple[str, dict[str, Any]]:
    """`AND cond AND cond ...` for a WHERE clause (empty with no filters) and its parameters."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, f in enumerate(filters):
        cond, p = f.sql(column, f"f{i}")
        parts.append(f" AND {cond}")
        params.update(p)
    return "".join(parts), params
