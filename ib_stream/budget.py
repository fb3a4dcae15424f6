"""Bounded work per request: a deadline and a cancel flag that blocking work checks between its steps.

The service runs each piece of blocking work (a range read, a bar computation, a book replay) under a
`Budget`: `api.query_timeout_seconds` from when it started, and the request's cancel flag, which the
HTTP layer sets when the client goes away. The store calls `check()` between files and partitions, so
a query past its deadline stops with `QueryTimeoutError` (503, naming the setting) and one whose client
left stops with `RequestCancelled`, and when the service shuts down every running one stops with
`ServiceStopping` — none keeps a worker of the pool busy, and shutting down takes a bounded time. Outside a budget (the
in-process API, the command line, background jobs) `check()` does nothing.

The budget travels in a context variable, set in the worker thread for the duration of the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from ib_stream.errors import IbStreamError

P = ParamSpec("P")
T = TypeVar("T")


class QueryTimeoutError(IbStreamError):
    """The work of one request ran past api.query_timeout_seconds and was stopped."""

    code = "QUERY_TIMEOUT"
    http_status = 503


class ServiceStopping(IbStreamError):
    """The service is shutting down: the work of a request still running was stopped (retry elsewhere or later)."""

    code = "SERVICE_STOPPING"
    http_status = 503


class RequestCancelled(IbStreamError):
    """The client went away: the work of its request was stopped (nobody reads the answer)."""

    code = "CLIENT_CLOSED_REQUEST"
    http_status = 499


@dataclass(slots=True)
class Budget:
    """A deadline (monotonic seconds) and a cancel flag; `check()` raises once either is reached."""

    timeout_seconds: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    stopping: Callable[[], bool] | None = None  # whether the service is shutting down
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_seconds

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RequestCancelled("the client closed the request; its work was stopped")
        if self.stopping is not None and self.stopping():
            raise ServiceStopping("the service is shutting down; the query was stopped: retry when it is back")
        if time.monotonic() > self.deadline:
            raise QueryTimeoutError(
                f"the query ran longer than {self.timeout_seconds:g} s (api.query_timeout_seconds) and was stopped; "
                "narrow the range or ask for a larger resolution",
                details={"setting": "api.query_timeout_seconds", "limit_seconds": self.timeout_seconds},
            )

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call fn under this budget (in the calling thread), checking it first."""
        self.check()
        with budget_bound(self):
            return fn(*args, **kwargs)


_current: ContextVar[Budget | None] = ContextVar("ib_stream_budget", default=None)
_request_cancel: ContextVar[threading.Event | None] = ContextVar("ib_stream_request_cancel", default=None)


def check() -> None:
    """Raise when the work running in this thread is past its budget; nothing outside a budget."""
    budget = _current.get()
    if budget is not None:
        budget.check()


def request_cancel_flag() -> threading.Event:
    """The cancel flag of the request being served (a fresh, never-set flag outside a request)."""
    return _request_cancel.get() or threading.Event()


@contextmanager
def request_cancel_flag_bound(flag: threading.Event) -> Iterator[None]:
    """While open: `flag` is the cancel flag of the request this task serves (its child tasks inherit it)."""
    token = _request_cancel.set(flag)
    try:
        yield
    finally:
        _request_cancel.reset(token)


@contextmanager
def budget_bound(budget: Budget) -> Iterator[None]:
    """While open: work started from this task (and copied contexts) runs under `budget`."""
    token = _current.set(budget)
    try:
        yield
    finally:
        _current.reset(token)


__all__ = [
    "Budget",
    "QueryTimeoutError",
    "RequestCancelled",
    "ServiceStopping",
    "budget_bound",
    "check",
    "request_cancel_flag",
    "request_cancel_flag_bound",
]
