"""Routes: what the store holds on disk, for IB-Studies (`v3-info`, `v3-files`): `/v3/storage/stats` (totals and the
`optimization_summary`) and `/v3/storage/files/{contract_id}` (files of a contract, newest first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ib_stream.api.params import ContractIdPath
from ib_stream.api.state import State
from ib_stream.api.storage_reads import FILE_FORMATS
from ib_stream.domain import TickType
from ib_stream.errors import ValidationError
from ib_stream.times import iso_us

router = APIRouter(tags=["storage"])


@router.get("/v3/storage/stats")
async def storage_stats(state: State) -> dict[str, Any]:
    """Files, sizes and ticks held, per stream and in all, and how the archive compresses the buffer."""
    stats = await state.storage_stats()
    return {"timestamp": iso_us(state.clock.now_ns()), **stats}


@router.get("/v3/storage/files/{contract_id}")
async def storage_files(
    state: State,
    contract_id: ContractIdPath,
    tick_type: str | None = Query(None, description="One tick type (default: every stream of the contract)."),
    format: str = Query("all", description="parquet (archive files), json (JSON-lines buffer segments) or all."),
) -> dict[str, Any]:
    """The files holding a contract's ticks, newest first, with their size and modification time."""
    if format not in FILE_FORMATS:
        raise ValidationError("format", format, f"is not one of {', '.join(FILE_FORMATS)} (the store keeps no other)")
    types = (TickType.parse(tick_type, "tick_type"),) if tick_type is not None else None
    _, held_types = await state.history_contract(contract_id)
    files = await state.storage_files(contract_id, types or held_types, format)
    return {
        "contract_id": contract_id,
        "tick_type": types[0].value if types else None,
        "format": format,
        "total_files": len(files),
        "total_size_mb": sum(f["size_bytes"] for f in files) / (1024 * 1024),
        "files": files,
    }
