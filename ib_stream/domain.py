"""Immutable domain types: tick types, their fields, streams and contracts (UTC int64 ns, no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from numbers import Integral, Real
from typing import Any, Final, Literal

from ib_stream.errors import TickValidationError, ValidationError


class TickType(StrEnum):
    """The v2 tick type names (snake_case); IB's PascalCase names are accepted by `parse`."""

    BID_ASK = "bid_ask"
    LAST = "last"
    ALL_LAST = "all_last"
    MID_POINT = "mid_point"
    DEPTH = "depth"

    @classmethod
    def parse(cls, name: str, field_name: str = "tick_type") -> TickType:
        """Return the tick type for a snake_case or PascalCase name, or raise naming the value."""
        found = _ALIASES.get(name.strip()) if isinstance(name, str) else None
        if found is None:
            allowed = ", ".join(t.value for t in cls)
            raise ValidationError(field_name, name, f"is not a tick type (use one of {allowed})")
        return found

    @classmethod
    def parse_list(cls, names: str | TickType | list[str] | list[TickType] | tuple[str, ...]) -> tuple[TickType, ...]:
        """Parse a comma list or a sequence of names into unique tick types, keeping order."""
        items = names.split(",") if isinstance(names, str) else list(names)
        parsed: list[TickType] = []
        for item in items:
            tick_type = cls.parse(item, "tick_types")
            if tick_type not in parsed:
                parsed.append(tick_type)
        if not parsed:
            raise ValidationError("tick_types", names, "is empty")
        return tuple(parsed)


_ALIASES: Final[dict[str, TickType]] = {
    **{t.value: t for t in TickType},
    "BidAsk": TickType.BID_ASK,
    "Last": TickType.LAST,
    "AllLast": TickType.ALL_LAST,
    "MidPoint": TickType.MID_POINT,
    "Depth": TickType.DEPTH,
}

Kind = Literal["int", "float", "str", "bool", "side", "depth_side", "operation"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a tick: its kind, whether it is required, its default and whether it may be negative."""

    name: str
    kind: Kind
    required: bool = True
    default: Any = None
    non_negative: bool = False
    nullable: bool = False


# Fields every tick carries; `seq` and `recv_ts` are assigned by the store, `source` by the producer.
SIM_SOURCE: Final = "sim"  # the source of the built-in simulator's ticks: every other source is real data
COMMON_FIELDS: Final[tuple[str, ...]] = ("seq", "ts", "recv_ts", "source")

TICK_FIELDS: Final[dict[TickType, tuple[FieldSpec, ...]]] = {
    TickType.BID_ASK: (
        FieldSpec("bid_price", "float", non_negative=True),
        FieldSpec("bid_size", "float", non_negative=True),
        FieldSpec("ask_price", "float", non_negative=True),
        FieldSpec("ask_size", "float", non_negative=True),
        FieldSpec("bid_past_low", "bool", required=False, default=False),
        FieldSpec("ask_past_high", "bool", required=False, default=False),
    ),
    TickType.LAST: (
        FieldSpec("price", "float", non_negative=True),
        FieldSpec("size", "float", non_negative=True),
        FieldSpec("exchange", "str", required=False, default=""),
        FieldSpec("conditions", "str", required=False, default=""),
        FieldSpec("past_limit", "bool", required=False, default=False),
        FieldSpec("unreported", "bool", required=False, default=False),
        FieldSpec("side", "side", required=False, default=None, nullable=True),
    ),
    TickType.MID_POINT: (FieldSpec("mid_point", "float", non_negative=True),),
    TickType.DEPTH: (
        FieldSpec("side", "depth_side"),
        FieldSpec("position", "int", non_negative=True),
        FieldSpec("operation", "operation"),
        FieldSpec("price", "float", non_negative=True),
        FieldSpec("size", "float", non_negative=True),
        FieldSpec("market_maker", "str", required=False, default=""),
        # False: IB position-based rows (insert/update/delete at `position`);
        # True: price-level depth (position ignored, size 0 or delete removes the price level).
        FieldSpec("by_price", "bool", required=False, default=False),
    ),
}
TICK_FIELDS[TickType.ALL_LAST] = TICK_FIELDS[TickType.LAST]

# Columns that carry a price / a size per tick type (statistics, bars).
PRICE_FIELDS: Final[dict[TickType, tuple[str, ...]]] = {
    TickType.BID_ASK: ("bid_price", "ask_price"),
    TickType.LAST: ("price",),
    TickType.ALL_LAST: ("price",),
    TickType.MID_POINT: ("mid_point",),
    TickType.DEPTH: ("price",),
}

DEPTH_SIDES: Final = frozenset({"bid", "ask"})
DEPTH_OPERATIONS: Final = frozenset({"insert", "update", "delete"})
TRADE_SIDES: Final = frozenset({1, -1})
# Earliest and latest event time accepted (1990-01-01 .. 2200-01-01): guards against s/ms/us mix-ups.
MIN_TS_NS: Final = 631_152_000 * 1_000_000_000
MAX_TS_NS: Final = 7_258_118_400 * 1_000_000_000
INT32_MAX: Final = 2**31 - 1


def field_names(tick_type: TickType) -> tuple[str, ...]:
    """Return every column of a stream in storage order: common fields, then the type's fields."""
    return COMMON_FIELDS + tuple(spec.name for spec in TICK_FIELDS[tick_type])


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """A stream: one tick type of one contract."""

    contract_id: int
    tick_type: TickType

    def __str__(self) -> str:
        return f"{self.contract_id}/{self.tick_type.value}"


@dataclass(frozen=True, slots=True)
class Contract:
    """A contract to record: IB identifiers plus the calendar and tick types it uses."""

    con_id: int
    symbol: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    calendar: str = "XNAS"
    tick_types: tuple[TickType, ...] = (TickType.BID_ASK, TickType.LAST)
    depth_rows: int = 0
    min_tick: float = 0.01
    record: bool = True  # False: served (queries, bars, sessions) but not recorded live, e.g. imported data
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class TickValidator:
    """Turn a raw tick mapping into the canonical stored record, or raise `TickValidationError`.

    The canonical record holds exactly the stream's columns in storage order; `seq`, `recv_ts` and
    `source` are filled by the caller. Missing optional fields take their default; unknown fields,
    wrong types, NaN/inf and negative values where not allowed are rejected.
    """

    def __init__(self, tick_type: TickType) -> None:
        self.tick_type = tick_type
        self.specs = TICK_FIELDS[tick_type]
        self.allowed = frozenset(("ts", "source", "recv_ts", *(s.name for s in self.specs)))
        self._fast = _compile_fast_path(self.specs)

    def canonical(self, raw: Any, seq: int, recv_ts: int, source: str, index: int = 0) -> dict[str, Any]:
        """Return the canonical record of `raw` with the given seq / recv_ts / default source."""
        if type(raw) is dict:
            record = self._fast(raw, seq, recv_ts, source)
            if record is not None:
                return record
        return self._checked(raw, seq, recv_ts, source, index)

    def _checked(self, raw: Any, seq: int, recv_ts: int, source: str, index: int) -> dict[str, Any]:
        # The precise path: accepts ints for floats, numpy scalars, objects with as_record(), and
        # names the field and value of the first problem.
        if not isinstance(raw, dict):
            raw = _as_mapping(raw, self.tick_type, index)
        ts = raw.get("ts")
        if type(ts) is not int:
            ts = self._int(ts, "ts", index)
        if not MIN_TS_NS <= ts < MAX_TS_NS:
            self._fail(index, "ts", ts, "is outside 1990..2200 in UTC nanoseconds (is it seconds or ms?)")
        out: dict[str, Any] = {"seq": seq, "ts": ts, "recv_ts": recv_ts, "source": source}
        if len(raw) > 1:
            given_recv = raw.get("recv_ts")
            if given_recv is not None:
                given_recv = self._int(given_recv, "recv_ts", index)
                if not MIN_TS_NS <= given_recv < MAX_TS_NS:
                    self._fail(index, "recv_ts", given_recv, "is outside 1990..2200 in UTC nanoseconds")
                out["recv_ts"] = given_recv
            given_source = raw.get("source")
            if given_source is not None:
                if not isinstance(given_source, str) or not given_source or not _is_utf8(given_source):
                    self._fail(index, "source", given_source, "must be a non-empty UTF-8 string")
                out["source"] = given_source
        for spec in self.specs:
            value = raw.get(spec.name)
            if value is None:
                if spec.required:
                    self._fail(index, spec.name, value, "is required")
                out[spec.name] = spec.default
                continue
            out[spec.name] = self._check(spec, value, index)
        if len(raw) > len(out) - 2 or not self.allowed.issuperset(raw):
            for key in raw:
                if key not in self.allowed:
                    reason = "is assigned by the store" if key == "seq" else "is not a field of this tick type"
                    self._fail(index, str(key), raw[key], reason)
        return out

    def _check(self, spec: FieldSpec, value: Any, index: int) -> Any:
        kind = spec.kind
        if kind == "float":
            if type(value) is not float:
                if isinstance(value, bool) or not isinstance(value, Real):
                    self._fail(index, spec.name, value, "must be a number")
                try:
                    value = float(value)
                except OverflowError:
                    self._fail(index, spec.name, value, "is too large for a float")
            if not math.isfinite(value):
                self._fail(index, spec.name, value, "must be finite")
            if spec.non_negative and value < 0:
                self._fail(index, spec.name, value, "must not be negative")
            return value
        if kind == "int":
            value = self._int(value, spec.name, index)
            if spec.non_negative and value < 0:
                self._fail(index, spec.name, value, "must not be negative")
            if not -INT32_MAX <= value <= INT32_MAX:
                self._fail(index, spec.name, value, f"must fit in 32 bits (at most {INT32_MAX})")
            return value
        if kind == "str":
            if not isinstance(value, str):
                self._fail(index, spec.name, value, "must be a string")
            if not _is_utf8(value):
                self._fail(index, spec.name, value, "must be valid UTF-8 text")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                self._fail(index, spec.name, value, "must be true or false")
            return value
        if kind == "side":
            if isinstance(value, bool) or not isinstance(value, Integral) or int(value) not in TRADE_SIDES:
                self._fail(index, spec.name, value, "must be 1 (buy), -1 (sell) or null")
            return int(value)
        if kind == "depth_side":
            if not isinstance(value, str) or value not in DEPTH_SIDES:
                self._fail(index, spec.name, value, "must be 'bid' or 'ask'")
            return value
        if not isinstance(value, str) or value not in DEPTH_OPERATIONS:
            self._fail(index, spec.name, value, "must be 'insert', 'update' or 'delete'")
        return value

    def _int(self, value: Any, name: str, index: int) -> int:
        if isinstance(value, bool) or not isinstance(value, Integral):
            self._fail(index, name, value, "must be an integer")
        return int(value)

    def _fail(self, index: int, name: str, value: Any, reason: str) -> None:
        raise TickValidationError(name, value, reason, tick_type=self.tick_type.value, index=index)


def _compile_fast_path(specs: tuple[FieldSpec, ...]) -> Any:
    """Build `fast(raw, seq, recv_ts, source) -> record | None` for one tick type.

    It accepts only the common, exactly-typed case (Python floats, ints, strs, bools; no extra
    keys; no `source`/`recv_ts` override) in one expression and returns None otherwise, so the
    precise path decides every doubtful tick. Generated once per tick type: per-tick checks in a
    loop over field specs cost more than the JSON encoding itself.
    """
    loads = ["ts = raw.get('ts')"]
    checks = ["type(ts) is int", f"{MIN_TS_NS} <= ts < {MAX_TS_NS}", "raw.keys() <= allowed"]
    for i, spec in enumerate(specs):
        name = f"v{i}"
        if spec.required:
            loads.append(f"{name} = raw.get({spec.name!r})")
        else:
            loads.append(f"{name} = raw.get({spec.name!r}, {spec.default!r})")
        check = _FAST_CHECKS[spec.kind].format(v=name, lo="0.0 <= " if spec.non_negative else "-inf < ")
        checks.append(f"{check} and 0 <= {name}" if spec.kind == "int" and spec.non_negative else check)
    fields_out = ", ".join(f"{s.name!r}: v{i}" for i, s in enumerate(specs))
    source = (
        "def fast(raw, seq, recv_ts, source):\n"
        + "".join(f"    {line}\n" for line in loads)
        + f"    if {' and '.join(checks)}:\n"
        + f"        return {{'seq': seq, 'ts': ts, 'recv_ts': recv_ts, 'source': source, {fields_out}}}\n"
        + "    return None\n"
    )
    allowed = frozenset(("ts", *(s.name for s in specs)))
    namespace: dict[str, Any] = {"allowed": allowed, "inf": math.inf, "INT32_MAX": INT32_MAX}
    exec(compile(source, f"<fast tick validator {'/'.join(s.name for s in specs)}>", "exec"), namespace)
    return namespace["fast"]


_FAST_CHECKS: Final[dict[str, str]] = {
    "float": "type({v}) is float and {lo}{v} < inf",
    "int": "type({v}) is int and {v} <= INT32_MAX",
    "str": "type({v}) is str and {v}.isascii()",
    "bool": "type({v}) is bool",
    "side": "({v} is None or (type({v}) is int and ({v} == 1 or {v} == -1)))",
    "depth_side": "({v} == 'bid' or {v} == 'ask')",
    "operation": "({v} == 'insert' or {v} == 'update' or {v} == 'delete')",
}


def _is_utf8(text: str) -> bool:
    # Lone surrogates are valid in Python strings but cannot be written as UTF-8 JSON.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_mapping(raw: Any, tick_type: TickType, index: int) -> dict[str, Any]:
    as_record = getattr(raw, "as_record", None)
    if callable(as_record):
        return dict(as_record())
    try:
        return dict(raw)
    except (TypeError, ValueError):
        raise TickValidationError(
            "tick", raw, "must be a mapping of field names to values", tick_type=tick_type.value, index=index
        ) from None
