"""Settings of the JSON sink for external visualizers (`JsonSinkConfig`, section `[json_sink]`); no imports
beyond pydantic, so `ib_stream.settings` can hold it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ib_stream.alerts.config import LiveResolution


class JsonSinkConfig(BaseModel):
    """The JSON files for external visualizers (off unless enabled)."""

    model_config = {"frozen": True, "extra": "forbid"}

    enabled: bool = Field(False, description="Keep the JSON files current while the service runs.")
    directory: Path | None = Field(None, description="Where the files are written (default <data_root>/viz).")
    contract_id: int | None = Field(None, description="Contract shown (default: the first configured contract).")
    resolution: LiveResolution = Field("1m", description="Bar size (1s .. 1h).")
    window: int = Field(1000, ge=2, le=100_000, description="Bars kept in the files (the newest).")
    min_write_interval_ms: int = Field(500, ge=0, description="At most one write of the files per this interval.")
    levels: int = Field(10, ge=1, le=1000, description="Levels per side in depth_data.json (and for OBI from depth).")
    obi_source: Literal["auto", "depth", "quotes"] = Field(
        "auto", description="OBI from the top levels of the depth book, top-of-book sizes, or auto (as /v2/bars)."
    )
    session_type: str = Field("regular", description="Session whose start resets CVD.")
    trade_type: Literal["last", "all_last"] = Field("last", description="Trades the bars are built from.")


__all__ = ["JsonSinkConfig"]
