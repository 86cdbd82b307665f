"""Expand a panel's SQL as Grafana and the ClickHouse plugin would, for a fixed time range.

No Grafana server runs on the development machines, so the tests turn each
panel's SQL into what ClickHouse would receive and run it in chDB. Two steps,
in Grafana's order:

1. **Template variables** (Grafana's frontend, before the query is sent):
   ``${name:singlequote}`` → ``'a','b'``, ``${name:doublequote}``, ``${name:csv}``,
   ``${name:raw}``; plain ``$name`` / ``${name}`` only for a single value.
2. **Plugin macros** (the plugin's backend, ``pkg/macros/macros.go`` of
   grafana/clickhouse-datasource v4), reproduced exactly:

   ===========================  ==============================================================
   ``$__fromTime``              ``toDateTime(<from, Unix s>)``  (``$__toTime`` likewise)
   ``$__fromTime_ms``           ``fromUnixTimestamp64Milli(<from, Unix ms>)`` (``$__toTime_ms``)
   ``$__timeFilter(c)``         ``c >= toDateTime(<from>) AND c <= toDateTime(<to>)``
   ``$__timeFilter_ms(c)``      the same with ``fromUnixTimestamp64Milli``
   ``$__dateFilter(c)``         ``c >= toDate('<from date>') AND c <= toDate('<to date>')``
   ``$__dateTimeFilter(d, t)``  ``(date filter on d) AND (time filter on t)``; alias ``$__dt``
   ``$__timeInterval(c)``       ``toStartOfInterval(toDateTime(c), INTERVAL <s> second)``
   ``$__timeInterval_ms(c)``    ``toStartOfInterval(toDateTime64(c, 3), INTERVAL <ms> millisecond)``
   ``$__interval_s``            the interval in whole seconds (at least 1)
   ===========================  ==============================================================

   Seconds are truncated like Go's ``time.Unix()``; the interval is the one
   Grafana computes from the range and the panel width (here: given).

Anything left that looks like a variable or macro (``$name``, ``${``) raises :class:`MacroError`,
so a typo fails the test instead of reaching ClickHouse as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone


class MacroError(ValueError):
    """Unknown macro or variable, or a macro with the wrong number of arguments."""


@dataclass(frozen=True)
class QueryContext:
    """What Grafana sends with a query: the time range (UTC), the interval in
    seconds, and the values of template variables (each a list of strings)."""

    time_from: datetime
    time_to: datetime
    interval_s: float = 60.0
    variables: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("time_from", "time_to"):
            if getattr(self, name).tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")
        if self.time_to < self.time_from:
            raise ValueError("time_to is before time_from")


def _unix_s(t: datetime) -> int:
    return math.floor(t.timestamp())


def _unix_ms(t: datetime) -> int:
    return math.floor(t.timestamp() * 1000)


def _date(t: datetime) -> str:
    return f"toDate('{t.astimezone(timezone.utc).strftime('%Y-%m-%d')}')"


def _dt(t: datetime) -> str:
    return f"toDateTime({_unix_s(t)})"


def _dt64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_unix_ms(t)})"


def _one(args: list[str], name: str) -> str:
    if len(args) != 1:
        raise MacroError(f"$__{name}: expected 1 argument, received {len(args)}")
    return args[0]


def _date_time_filter(ctx: QueryContext, args: list[str], name: str) -> str:
    if len(args) != 2:
        raise MacroError(f"$__{name}: expected 2 arguments, received {len(args)}")
    d, t = args
    return (f"({d} >= {_date(ctx.time_from)} AND {d} <= {_date(ctx.time_to)}) AND "
            f"({t} >= {_dt(ctx.time_from)} AND {t} <= {_dt(ctx.time_to)})")


_Macro = Callable[[QueryContext, list[str], str], str]

MACROS: dict[str, _Macro] = {
    "fromTime": lambda c, a, n: _dt(c.time_from),
    "toTime": lambda c, a, n: _dt(c.time_to),
    "fromTime_ms": lambda c, a, n: _dt64(c.time_from),
    "toTime_ms": lambda c, a, n: _dt64(c.time_to),
    "timeFilter": lambda c, a, n: (f"{_one(a, n)} >= {_dt(c.time_from)} AND "
                                   f"{_one(a, n)} <= {_dt(c.time_to)}"),
    "timeFilter_ms": lambda c, a, n: (f"{_one(a, n)} >= {_dt64(c.time_from)} AND "
                                      f"{_one(a, n)} <= {_dt64(c.time_to)}"),
    "dateFilter": lambda c, a, n: (f"{_one(a, n)} >= {_date(c.time_from)} AND "
                                   f"{_one(a, n)} <= {_date(c.time_to)}"),
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": lambda c, a, n: (f"toStartOfInterval(toDateTime({_one(a, n)}), "
                                     f"INTERVAL {int(max(c.interval_s, 1))} second)"),
    "timeInterval_ms": lambda c, a, n: (f"toStartOfInterval(toDateTime64({_one(a, n)}, 3), "
                                        f"INTERVAL {int(max(c.interval_s * 1000, 1))} millisecond)"),
    "interval_s": lambda c, a, n: str(int(max(c.interval_s, 1))),
}

_MACRO = re.compile(r"\$__([A-Za-z][A-Za-z0-9_]*)")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


#: What a variable or macro looks like (a ``$`` ending a regex literal, ``'...$'``, does not).
_LEFTOVER = re.compile(r"\$(\{|\w)")


def _args(sql: str, start: int) -> tuple[list[str], int]:
    """Arguments of a macro call whose ``(`` is at ``start``: split on top-level commas."""
    depth, args, current = 0, [], []
    for i in range(start, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return [a for a in args if a], i + 1
        elif ch == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    raise MacroError(f"unbalanced parentheses after position {start}")


def expand_macros(sql: str, ctx: QueryContext) -> str:
    """Replace every ``$__macro`` / ``$__macro(args)`` as the plugin's backend does."""
    out, pos = [], 0
    for match in _MACRO.finditer(sql):
        if match.start() < pos:  # inside the arguments of a macro already expanded
            continue
        name = match.group(1)
        if name not in MACROS:
            raise MacroError(f"unknown macro $__{name}")
        out.append(sql[pos:match.start()])
        args, pos = ([], match.end())
        if match.end() < len(sql) and sql[match.end()] == "(":
            args, pos = _args(sql, match.end())
        out.append(MACROS[name](ctx, args, name))
    out.append(sql[pos:])
    return "".join(out)


def _quote(value: str, q: str) -> str:
    return q + value.replace("\\", "\\\\").replace(q, "\\" + q) + q


def _format(name: str, values: Sequence[str], fmt: str | None) -> str:
    if fmt == "singlequote":
        return ",".join(_quote(v, "'") for v in values)
    if fmt == "doublequote":
        return ",".join(_quote(v, '"') for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt in (None, "raw"):
        if len(values) != 1:
            raise MacroError(f"${name} has {len(values)} values: give a format such as :singlequote")
        return values[0]
    raise MacroError(f"unsupported variable format {fmt!r} for ${name}")


def expand_variables(sql: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Replace Grafana template variables (``$__`` macros are left to :func:`expand_macros`)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name.startswith("__"):
            return match.group(0)
        if name not in variables:
            raise MacroError(f"no value for template variable ${name}")
        return _format(name, list(variables[name]), match.group(2))

    return _VARIABLE.sub(replace, sql)


def expand(sql: str, ctx: QueryContext) -> str:
    """Template variables, then plugin macros; raises :class:`MacroError` if a ``$name``,
    ``${...}`` or ``$__macro`` is left."""
    result = expand_macros(expand_variables(sql, ctx.variables), ctx)
    left = _LEFTOVER.search(result)
    if left:
        raise MacroError(f"unexpanded {left.group(0)!r} in: {result[left.start():][:60]!r}")
    return result
