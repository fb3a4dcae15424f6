"""HTTP client of the service: range queries and session ticks as DataFrames (Arrow IPC on the wire).

`Client` (blocking) and `AsyncClient` mirror `StorageQuery.query_range` and the session endpoints.
Times follow the Python API: naive datetimes are local time, ints are ns since the epoch (UTC); the
client sends them as ISO-8601 with `Z`. The service's JSON error shape comes back as the package's
own exceptions (`ValidationError`, `QueryError`, `NotFoundError`, ...), chosen by the error `code`,
with the same message and details; a code this version does not know raises `IbStreamError` with
that code. A service that cannot be reached raises `ClientError`.

    from ib_stream.client import Client

    with Client("http://127.0.0.1:8000") as client:
        ticks = client.query_range(265598, ["bid_ask", "last"], "2025-01-10T14:30:00Z", "2025-01-10T15:00:00Z")
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import date
from typing import Any, Final

import httpx
import pandas as pd
import pyarrow as pa

from ib_stream.domain import TickType
from ib_stream.errors import CorruptFileError, IbStreamError, ValidationError
from ib_stream.times import TimeLike, iso_ns, to_utc_ns

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT: Final = 60.0
ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"
TickTypes = str | TickType | Sequence[str | TickType]


class ClientError(IbStreamError):
    """The service could not be reached, or answered with something that is not the API's."""

    code = "CLIENT_ERROR"
    http_status = 502


# ---- requests and answers shared by both clients ---------------------------------------------------
def range_params(
    tick_types: TickTypes,
    start_time: TimeLike,
    end_time: TimeLike | None,
    resolution: str | None,
    limit: int | None,
) -> dict[str, str]:
    """The query string of a range request in Arrow format."""
    params = {
        "tick_types": _types(tick_types),
        "start_time": iso_ns(to_utc_ns(start_time, "start_time")),
        "format": "arrow",
    }
    if end_time is not None:
        params["end_time"] = iso_ns(to_utc_ns(end_time, "end_time"))
    if resolution is not None:
        params["resolution"] = resolution
    if limit is not None:
        params["limit"] = str(limit)
    return params


def session_path(contract_id: int, which: str | date) -> str:
    """`/v2/sessions/{id}/current|previous|YYYY-MM-DD`."""
    day = which.isoformat() if isinstance(which, date) else str(which)
    return f"/v2/sessions/{int(contract_id)}/{day}"


def read_frame(response: httpx.Response, limit: int | None) -> pd.DataFrame:
    """Turn an Arrow IPC stream answer into the DataFrame `StorageQuery.query_range` would return."""
    raise_for_error(response)
    if not response.headers.get("content-type", "").startswith(ARROW_STREAM):
        raise ClientError(
            f"{response.request.url} answered {response.headers.get('content-type')!r}, not an Arrow stream",
            details={"url": str(response.request.url)},
        )
    try:
        table = pa.ipc.open_stream(response.content).read_all()
    except pa.ArrowInvalid as e:
        raise ClientError(f"{response.request.url} sent an unreadable Arrow stream: {e}") from e
    frame = table.to_pandas()
    truncated = response.headers.get("x-truncated") == "true"
    frame.attrs["total_count"] = int(response.headers.get("x-total-count", len(frame)))
    frame.attrs["truncated"] = truncated
    if truncated and limit is None:
        warnings.warn(
            f"the service returned the first {len(frame)} of {frame.attrs['total_count']} rows (api.max_limit); "
            "narrow the range or ask for bars",
            stacklevel=3,
        )
    return frame


def read_json(response: httpx.Response) -> Any:
    """The JSON document of an answer, or the package exception its error shape describes."""
    raise_for_error(response)
    try:
        return response.json()
    except ValueError as e:
        raise ClientError(f"{response.request.url} answered with invalid JSON: {e}") from e


def raise_for_error(response: httpx.Response) -> None:
    """Raise the package exception of an error answer (status >= 400)."""
    if response.status_code >= 400:
        raise error_from_response(response)


def error_from_response(response: httpx.Response) -> IbStreamError:
    """Rebuild the exception the service raised from its `{"error": {code, message, details}}` answer."""
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        return ClientError(
            f"{response.request.method} {response.request.url} answered {response.status_code}: {response.text[:200]}",
            details={"status": response.status_code},
        )
    cls = error_classes().get(code, IbStreamError)
    exc = cls.__new__(cls)
    IbStreamError.__init__(exc, message, details=details)
    if cls is IbStreamError:
        exc.code = code
    exc.http_status = response.status_code
    if isinstance(exc, ValidationError):
        exc.field, exc.value = str(details.get("field", "")), details.get("value")
    if isinstance(exc, CorruptFileError):
        exc.path = str(details.get("path", ""))
    return exc


def error_classes() -> dict[str, type[IbStreamError]]:
    """Map each error code to the class that defines it, over every loaded IbStreamError subclass."""
    found: dict[str, type[IbStreamError]] = {}
    pending: list[type[IbStreamError]] = [IbStreamError]
    while pending:
        cls = pending.pop()
        if "code" in vars(cls):
            found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def _session_params(session_type: str, tick_types: TickTypes | None) -> dict[str, str]:
    params = {"session": session_type}
    if tick_types is not None:
        params["tick_types"] = _types(tick_types)
    return params


def _types(tick_types: TickTypes) -> str:
    # Parsed here so a bad name fails like StorageQuery does, before any request.
    parsed = TickType.parse_list(tick_types if isinstance(tick_types, str) else [str(t) for t in tick_types])
    return ",".join(t.value for t in parsed)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _unreachable(base_url: str, e: httpx.TransportError) -> ClientError:
    return ClientError(f"cannot reach ib-stream at {base_url}: {e}", details={"base_url": base_url})


# ---- blocking client ------------------------------------------------------------------------------
class Client:
    """Blocking client; use it as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=_headers(token), transport=transport)

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return self._http.get(path, params=params)
        except httpx.TransportError as e:
            raise _unreachable(self.base_url, e) from e

    def query_range(
        self,
        contract_id: int,
        tick_types: TickTypes,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Return ticks (or bars) in [start_time, end_time) like `StorageQuery.query_range` (end None = now)."""
        params = range_params(tick_types, start_time, end_time, resolution, limit)
        return read_frame(self._get(f"/v2/historical/{int(contract_id)}", params), limit)

    def session(
        self,
        contract_id: int,
        which: str | date = "current",
        session_type: str = "regular",
        tick_types: TickTypes | None = None,
    ) -> dict[str, Any]:
        """Describe a session: `which` is current, previous or a trading date; boundaries, counts, OHLC."""
        return dict(read_json(self._get(session_path(contract_id, which), _session_params(session_type, tick_types))))

    def session_ticks(
        self,
        contract_id: int,
        tick_types: TickTypes,
        which: str | date = "current",
        session_type: str = "regular",
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """Return the ticks (or bars) of a session so far, as `query_range` over its boundaries."""
        info = self.session(contract_id, which, session_type)
        return self.query_range(contract_id, tick_types, info["start"], info["data_end"], resolution)

    def contracts(self) -> list[dict[str, Any]]:
        """The configured contracts with what is held of each stream."""
        return list(read_json(self._get("/v2/contracts"))["contracts"])

    def coverage(self, contract_id: int, tick_types: TickTypes | None = None, min_gap: str = "1m") -> dict[str, Any]:
        """Intervals held per stream and the gaps between them."""
        params = {"min_gap": min_gap, **({} if tick_types is None else {"tick_types": _types(tick_types)})}
        return dict(read_json(self._get(f"/v2/contracts/{int(contract_id)}/coverage", params)))

    def health(self) -> dict[str, Any]:
        """The liveness document of `/health`."""
        return dict(read_json(self._get("/health")))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- asyncio client -------------------------------------------------------------------------------
class AsyncClient:
    """The same calls as `Client`, awaitable; use `async with` or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=_headers(token), transport=transport
        )

    async def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return await self._http.get(path, params=params)
        except httpx.TransportError as e:
            raise _unreachable(self.base_url, e) from e

    async def query_range(
        self,
        contract_id: int,
        tick_types: TickTypes,
        start_time: TimeLike,
        end_time: TimeLike | None = None,
        resolution: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Return ticks (or bars) in [start_time, end_time) like `StorageQuery.query_range` (end None = now)."""
        params = range_params(tick_types, start_time, end_time, resolution, limit)
        return read_frame(await self._get(f"/v2/historical/{int(contract_id)}", params), limit)

    async def session(
        self,
        contract_id: int,
        which: str | date = "current",
        session_type: str = "regular",
        tick_types: TickTypes | None = None,
    ) -> dict[str, Any]:
        """Describe a session: `which` is current, previous or a trading date; boundaries, counts, OHLC."""
        response = await self._get(session_path(contract_id, which), _session_params(session_type, tick_types))
        return dict(read_json(response))

    async def session_ticks(
        self,
        contract_id: int,
        tick_types: TickTypes,
        which: str | date = "current",
        session_type: str = "regular",
        resolution: str | None = None,
    ) -> pd.DataFrame:
        """Return the ticks (or bars) of a session so far, as `query_range` over its boundaries."""
        info = await self.session(contract_id, which, session_type)
        return await self.query_range(contract_id, tick_types, info["start"], info["data_end"], resolution)

    async def contracts(self) -> list[dict[str, Any]]:
        """The configured contracts with what is held of each stream."""
        return list(read_json(await self._get("/v2/contracts"))["contracts"])

    async def coverage(
        self, contract_id: int, tick_types: TickTypes | None = None, min_gap: str = "1m"
    ) -> dict[str, Any]:
        """Intervals held per stream and the gaps between them."""
        params = {"min_gap": min_gap, **({} if tick_types is None else {"tick_types": _types(tick_types)})}
        return dict(read_json(await self._get(f"/v2/contracts/{int(contract_id)}/coverage", params)))

    async def health(self) -> dict[str, Any]:
        """The liveness document of `/health`."""
        return dict(read_json(await self._get("/health")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
