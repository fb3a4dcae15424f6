"""Pure translation of ibapi 9.81 callback payloads into domain ticks (no sockets, threads or EClient).

The IB source calls these from its EWrapper methods and hands the results to the store. Every
function returns plain tick dicts as `ib_stream.domain.TickValidator` expects: `ts` (int ns UTC),
the tick type's fields and `source`. ibapi's camelCase stays here and in the IB source module.

Times. Tick-by-tick and historical ticks carry IB's event time in whole **seconds**, so
`ts = seconds * 1e9` and several ticks often share one `ts`; the store keeps their arrival order
in `seq`. `reqMktData` and `reqMktDepth` carry no exchange time: the caller passes its local
receive time as `ts`.

Sources: `ib_tbt` (reqTickByTickData), `ib_mkt` (reqMktData), `ib_depth` (reqMktDepth),
`ib_hist` (reqHistoricalTicks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Final, Protocol

from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import TickType
from ib_stream.errors import SourceError

Tick = dict[str, Any]

SOURCE_TBT: Final = "ib_tbt"
SOURCE_MKT: Final = "ib_mkt"
SOURCE_DEPTH: Final = "ib_depth"
SOURCE_HIST: Final = "ib_hist"

# Tick-by-tick trade kinds as ibapi passes them to tickByTickAllLast (1 "Last", 2 "AllLast").
TBT_TRADE_TYPES: Final[dict[int, TickType]] = {1: TickType.LAST, 2: TickType.ALL_LAST}
# updateMktDepth codes.
DEPTH_SIDES: Final[dict[int, str]] = {0: "ask", 1: "bid"}
DEPTH_OPERATIONS: Final[dict[int, str]] = {0: "insert", 1: "update", 2: "delete"}

# ibapi TickTypeEnum codes the assembler uses; the delayed codes (66-71, 74) map onto the live ones.
BID_SIZE, BID, ASK, ASK_SIZE, LAST, LAST_SIZE, VOLUME = 0, 1, 2, 3, 4, 5, 8
_LIVE_CODE: Final[dict[int, int]] = {
    BID_SIZE: BID_SIZE, BID: BID, ASK: ASK, ASK_SIZE: ASK_SIZE, LAST: LAST, LAST_SIZE: LAST_SIZE, VOLUME: VOLUME,
    66: BID, 67: ASK, 68: LAST, 69: BID_SIZE, 70: ASK_SIZE, 71: LAST_SIZE, 74: VOLUME,
}  # fmt: skip
# The size that ibapi delivers right after a price (decoder.processTickPriceMsg).
_PAIRED_SIZE: Final[dict[int, int]] = {BID: BID_SIZE, ASK: ASK_SIZE, LAST: LAST_SIZE}


class _BidAskAttrib(Protocol):
    bidPastLow: bool
    askPastHigh: bool


class _LastAttrib(Protocol):
    pastLimit: bool
    unreported: bool


def seconds_to_ns(seconds: int) -> int:
    """Convert IB's whole epoch seconds to int ns UTC."""
    return int(seconds) * NS_PER_SECOND


# -- tick-by-tick (reqTickByTickData) -----------------------------------------------------------


def bid_ask_from_tbt(
    time: int,
    bid_price: float,
    ask_price: float,
    bid_size: float,
    ask_size: float,
    attrib: _BidAskAttrib | None,
) -> Tick:
    """Build a `bid_ask` tick from tickByTickBidAsk (time in epoch seconds)."""
    return {
        "ts": seconds_to_ns(time),
        "bid_price": float(bid_price),
        "bid_size": float(bid_size),
        "ask_price": float(ask_price),
        "ask_size": float(ask_size),
        "bid_past_low": bool(getattr(attrib, "bidPastLow", False)),
        "ask_past_high": bool(getattr(attrib, "askPastHigh", False)),
        "source": SOURCE_TBT,
    }


def trade_from_tbt(
    tick_type: int,
    time: int,
    price: float,
    size: float,
    attrib: _LastAttrib | None,
    exchange: str,
    special_conditions: str,
) -> tuple[TickType, Tick]:
    """Build a `last` (tick_type 1) or `all_last` (2) tick from tickByTickAllLast.

    `side` is None: IB sends no aggressor side.
    """
    stream = TBT_TRADE_TYPES.get(tick_type)
    if stream is None:
        raise SourceError(
            f"tick-by-tick trade type {tick_type!r} is not 1 (Last) or 2 (AllLast)",
            details={"field": "tick_type", "value": tick_type},
        )
    return stream, _trade(seconds_to_ns(time), price, size, attrib, exchange, special_conditions, SOURCE_TBT)


def midpoint_from_tbt(time: int, mid_point: float) -> Tick:
    """Build a `mid_point` tick from tickByTickMidPoint."""
    return {"ts": seconds_to_ns(time), "mid_point": float(mid_point), "source": SOURCE_TBT}


def _trade(ts: int, price: float, size: float, attrib: Any, exchange: str, conditions: str, source: str) -> Tick:
    return {
        "ts": ts,
        "price": float(price),
        "size": float(size),
        "exchange": exchange or "",
        "conditions": conditions or "",
        "past_limit": bool(getattr(attrib, "pastLimit", False)),
        "unreported": bool(getattr(attrib, "unreported", False)),
        "side": None,
        "source": source,
    }


# -- historical ticks (reqHistoricalTicks) ------------------------------------------------------


def ticks_from_historical_bid_ask(ticks: Iterable[Any]) -> list[Tick]:
    """Turn HistoricalTickBidAsk objects (whatToShow BID_ASK) into `bid_ask` ticks, order kept."""
    out = []
    for t in ticks:
        tick = bid_ask_from_tbt(t.time, t.priceBid, t.priceAsk, t.sizeBid, t.sizeAsk, t.tickAttribBidAsk)
        tick["source"] = SOURCE_HIST
        out.append(tick)
    return out


def ticks_from_historical_last(ticks: Iterable[Any]) -> list[Tick]:
    """Turn HistoricalTickLast objects (whatToShow TRADES) into `last` ticks, order kept."""
    return [
        _trade(seconds_to_ns(t.time), t.price, t.size, t.tickAttribLast, t.exchange, t.specialConditions, SOURCE_HIST)
        for t in ticks
    ]


def ticks_from_historical_midpoint(ticks: Iterable[Any]) -> list[Tick]:
    """Turn HistoricalTick objects (whatToShow MIDPOINT; size is always 0) into `mid_point` ticks."""
    return [{"ts": seconds_to_ns(t.time), "mid_point": float(t.price), "source": SOURCE_HIST} for t in ticks]


# -- market depth (reqMktDepth) -----------------------------------------------------------------


def depth_from_mkt_depth(
    position: int, operation: int, side: int, price: float, size: float, ts: int, market_maker: str = ""
) -> Tick:
    """Build a `depth` tick from updateMktDepth / updateMktDepthL2 (ts = local receive time).

    updateMktDepthL2's `isSmartDepth` is not part of the tick: it is a property of the subscription.
    """
    side_name = DEPTH_SIDES.get(side)
    if side_name is None:
        raise SourceError(f"depth side {side!r} is not 0 (ask) or 1 (bid)", details={"field": "side", "value": side})
    op_name = DEPTH_OPERATIONS.get(operation)
    if op_name is None:
        raise SourceError(
            f"depth operation {operation!r} is not 0 (insert), 1 (update) or 2 (delete)",
            details={"field": "operation", "value": operation},
        )
    return {
        "ts": ts,
        "side": side_name,
        "position": int(position),
        "operation": op_name,
        "price": float(price),
        "size": float(size),
        "market_maker": market_maker or "",
        "source": SOURCE_DEPTH,
    }


# -- market data (reqMktData): tickPrice / tickSize -> bid_ask and last -------------------------


class MarketDataAssembler:
    """Assemble one reqMktData subscription's tickPrice/tickSize callbacks into `bid_ask` and `last` ticks.

    Call `on_price` / `on_size` in callback order with the local receive time; each returns the
    ticks it completes as (TickType, tick) pairs, source `ib_mkt`. reqMktData is a sampled feed
    (IB aggregates a few hundred ms), not a tick feed; the rules below make it as faithful as it can be:

    * ibapi delivers a BID/ASK/LAST price (tickPrice) and then, at once, its size (tickSize of the
      paired code). The price waits for that size so one message gives one tick, not two; any
      other callback first settles a price still waiting.
    * A price of -1 means "no value": the side becomes unknown and no quote is emitted until it is
      known again. A size of 0 means "no value" and is ignored (the previous size stays).
    * Quotes: a `bid_ask` tick is emitted when the bid or ask price or size changes and both
      sides are known. A locked or crossed quote (bid >= ask) is held back: IB sends bid and ask
      as separate messages, so moving one side first briefly crosses the other; the next update
      of the same burst fixes it (all 30 such states in the recorded HK sample).
    * Trades: LAST + its size is one trade. The first LAST of a subscription only primes the
      state: IB sends the current last trade on subscribe, which is not a new trade. A LAST_SIZE
      on its own is a trade at the current LAST price, except when it repeats the size of the
      LAST message just before it (TWS re-sends it as a separate message: 1,038 of 1,038 such
      pairs in the HK sample) or when no LAST price is known yet.
    * VOLUME confirms trades: the first VOLUME is the baseline; afterwards, when the cumulative
      volume exceeds the size of the trades emitted since the baseline, the difference is volume
      IB did not show as a LAST/LAST_SIZE change (trades at an unchanged price and size) and
      becomes one trade at the current LAST price (`infer_volume_trades`, default on). A VOLUME
      below the running total means volume lags; the next VOLUME catches up. A lower VOLUME
      than before (a new day) starts a new baseline. So the `last` stream's total size matches
      IB's volume, while single prints may be aggregates.

    `stats` counts what happened to every callback, so every emitted and dropped tick is accounted for.
    """

    def __init__(self, infer_volume_trades: bool = True) -> None:
        self.infer_volume_trades = infer_volume_trades
        self.stats: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """Forget the state (after a resubscribe): the next values prime it again."""
        self.bid_price: float | None = None
        self.bid_size: float | None = None
        self.ask_price: float | None = None
        self.ask_size: float | None = None
        self.last_price: float | None = None
        self.last_size: float | None = None
        self._emitted_quote: tuple[float, float, float, float] | None = None
        self._pending: int | None = None  # the size code the last price waits for
        self._priming = False  # the pending LAST is the subscription's first: state, not a trade
        self._pending_ts = 0
        self._repeat_size: float | None = None  # a LAST_SIZE equal to this, next, is TWS's repeat
        self._volume_base: float | None = None
        self._volume_last = 0.0
        self._traded_since_base = 0.0

    def on_price(self, tick_type: int, price: float, ts: int) -> list[tuple[TickType, Tick]]:
        """Handle tickPrice(tick_type, price) received at `ts` (int ns)."""
        out = self._settle(ts)
        self._repeat_size = None
        code = _LIVE_CODE.get(tick_type)
        if code not in _PAIRED_SIZE:
            self.stats["ignored_price"] += 1  # HIGH, LOW, CLOSE, OPEN, ...
            return out
        value = float(price) if price >= 0 else None
        if code == BID:
            self.bid_price = value
        elif code == ASK:
            self.ask_price = value
        elif value is None:
            self.stats["last_no_value"] += 1
            return out
        else:
            self.stats["last_primed" if self.last_price is None else "last_price"] += 1
            self._priming = self.last_price is None
            self.last_price = value
        self._pending, self._pending_ts = _PAIRED_SIZE[code], ts
        return out

    def on_size(self, tick_type: int, size: float, ts: int) -> list[tuple[TickType, Tick]]:
        """Handle tickSize(tick_type, size) received at `ts` (int ns)."""
        code = _LIVE_CODE.get(tick_type)
        repeat, self._repeat_size = self._repeat_size, None
        if code is not None and code == self._pending:
            self._pending = None
            return self._paired_size(code, float(size), ts)
        out = self._settle(ts)
        if code in (BID_SIZE, ASK_SIZE):
            if size > 0:
                if code == BID_SIZE:
                    self.bid_size = float(size)
                else:
                    self.ask_size = float(size)
            return out + self._quote(ts)
        if code == LAST_SIZE:
            if repeat is not None and size == repeat:
                self.stats["last_size_repeat"] += 1
            elif size <= 0:
                self.stats["last_size_no_value"] += 1
            elif self.last_price is None:
                self.stats["last_size_unpriced"] += 1
            else:
                self.stats["trade_size_only"] += 1
                out.append(self._trade(self.last_price, float(size), ts))
            return out
        if code == VOLUME:
            return out + self._volume(float(size), ts)
        self.stats["ignored_size"] += 1
        return out

    def flush(self, ts: int) -> list[tuple[TickType, Tick]]:
        """Settle a price still waiting for its size (call when the callbacks pause)."""
        return self._settle(ts)

    def _paired_size(self, code: int, size: float, ts: int) -> list[tuple[TickType, Tick]]:
        if code == LAST_SIZE:
            if size <= 0:
                self.stats["last_size_no_value"] += 1
                return []
            self.last_size = self._repeat_size = size
            if self._priming:
                return []
            self.stats["trade_last"] += 1
            assert self.last_price is not None
            return [self._trade(self.last_price, size, ts)]
        if size > 0:
            if code == BID_SIZE:
                self.bid_size = size
            else:
                self.ask_size = size
        return self._quote(ts)

    def _settle(self, ts: int) -> list[tuple[TickType, Tick]]:
        # A price whose size never came: a quote change stands on its own, a LAST without size is no trade.
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        self.stats["price_without_size"] += 1
        return [] if pending == LAST_SIZE else self._quote(self._pending_ts)

    def _quote(self, ts: int) -> list[tuple[TickType, Tick]]:
        bid, bid_size, ask, ask_size = self.bid_price, self.bid_size, self.ask_price, self.ask_size
        if bid is None or bid_size is None or ask is None or ask_size is None:
            self.stats["quote_incomplete"] += 1
            return []
        quote = (bid, bid_size, ask, ask_size)
        if quote == self._emitted_quote:
            self.stats["quote_unchanged"] += 1
            return []
        if bid >= ask:
            self.stats["quote_crossed_held"] += 1
            return []
        self._emitted_quote = quote
        self.stats["quote"] += 1
        tick: Tick = {"ts": ts, "bid_price": bid, "bid_size": bid_size, "ask_price": ask, "ask_size": ask_size}
        tick.update(bid_past_low=False, ask_past_high=False, source=SOURCE_MKT)
        return [(TickType.BID_ASK, tick)]

    def _trade(self, price: float, size: float, ts: int) -> tuple[TickType, Tick]:
        if self._volume_base is not None:
            self._traded_since_base += size
        return TickType.LAST, _trade(ts, price, size, None, "", "", SOURCE_MKT)

    def _volume(self, volume: float, ts: int) -> list[tuple[TickType, Tick]]:
        if volume <= 0:
            self.stats["volume_no_value"] += 1
            return []
        if self._volume_base is None or volume < self._volume_last:
            self.stats["volume_baseline"] += 1
            self._volume_base, self._volume_last, self._traded_since_base = volume, volume, 0.0
            return []
        self._volume_last = volume
        unexplained = volume - self._volume_base - self._traded_since_base
        if unexplained <= 0:
            self.stats["volume_explained" if unexplained == 0 else "volume_lagging"] += 1
            return []
        if not self.infer_volume_trades or self.last_price is None:
            self.stats["volume_not_traded"] += 1
            self._traded_since_base += unexplained  # counted once, never emitted later
            return []
        self.stats["trade_from_volume"] += 1
        return [self._trade(self.last_price, unexplained, ts)]
