"""Settings of the live-bar consumers (core): the alert engine (`AlertsConfig`, section `[alerts]`) and its rules,
and the JSON sink for external visualizers (`JsonSinkConfig`, section `[json_sink]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

LiveResolution = Literal["1s", "5s", "15s", "30s", "1m", "5m", "15m", "30m", "1h"]


class Section(BaseModel):
    """A settings section (or part of one): frozen once built, unknown keys refused."""

    model_config = {"frozen": True, "extra": "forbid"}


class _Rule(Section):
    name: str = Field("", description="Name shown in alerts (default: the kind).")
    contract_ids: tuple[int, ...] = Field((), description="Contracts the rule applies to (empty = all).")

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "kind", ""))

    def applies_to(self, contract_id: int) -> bool:
        return not self.contract_ids or contract_id in self.contract_ids

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude={"kind"}).items() if v not in ("", ()))
        return f"{getattr(self, 'kind', 'rule')}({fields})"


class ObiImbalanceRule(_Rule):
    """|OBI| above a threshold for N consecutive closed bars, leaning the same way."""

    kind: Literal["obi_imbalance"] = "obi_imbalance"
    threshold: float = Field(0.6, gt=0, le=1, description="|OBI close| at or above this counts as imbalanced.")
    bars: int = Field(3, ge=1, description="Consecutive imbalanced bars needed to fire.")


class CvdChangeRule(_Rule):
    """CVD change beyond a threshold within a window of closed bars."""

    kind: Literal["cvd_change"] = "cvd_change"
    threshold: float = Field(..., gt=0, description="Change of CVD (contracts/shares) that fires, either way.")
    bars: int = Field(5, ge=1, description="Window of closed bars the change is measured over.")


class VwapCrossRule(_Rule):
    """The bar close crossing the session VWAP."""

    kind: Literal["vwap_cross"] = "vwap_cross"
    band: float = Field(0.0, ge=0, description="Distance beyond the VWAP (price units) a close must reach.")


AlertRule = Annotated[ObiImbalanceRule | CvdChangeRule | VwapCrossRule, Field(discriminator="kind")]


class AlertsConfig(Section):
    """Alert rules evaluated on live bars of every recorded contract, and the alert history."""

    enabled: bool = Field(True, description="Run the alert engine with the service.")
    resolution: LiveResolution = Field("1m", description="Bar size the rules are evaluated on (1s .. 1h).")
    session_type: str = Field("regular", description="Session whose start resets CVD and the session VWAP.")
    trade_type: Literal["last", "all_last"] = Field("last", description="Trades the bars are built from.")
    lateness_seconds: float = Field(
        2.0, ge=0, le=3600, description="A bar is final once ticks this long past its end have arrived."
    )
    obi_source: Literal["auto", "depth", "quotes"] = Field(
        "auto", description="OBI from the top levels of the depth book, top-of-book sizes, or auto (as /v2/bars)."
    )
    levels: int = Field(10, ge=1, le=1000, description="Depth levels per side for OBI from depth.")
    rules: tuple[AlertRule, ...] = Field(
        (ObiImbalanceRule(), VwapCrossRule()),
        description="The rules (JSON list in the environment; kinds obi_imbalance, cvd_change, vwap_cross).",
    )
    db_path: Path | None = Field(None, description="Alert history SQLite file (default <data_root>/alerts.db).")
    history_limit: int = Field(100_000, ge=100, description="Alerts kept in the history; the oldest are pruned.")


class JsonSinkConfig(Section):
    """The JSON files for external visualizers (off unless enabled)."""

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
    lateness_seconds: float = Field(
        2.0, ge=0, le=3600, description="A bar is final once ticks this long past its end have arrived."
    )


__all__ = [
    "AlertRule",
    "AlertsConfig",
    "CvdChangeRule",
    "JsonSinkConfig",
    "LiveResolution",
    "ObiImbalanceRule",
    "VwapCrossRule",
]
