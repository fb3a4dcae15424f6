"""The contracts file: fields, defaults, `record = false`, and errors that name the contract and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ib_stream.contracts import load_contracts
from ib_stream.domain import TickType
from ib_stream.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "contracts.toml"
    path.write_text(body)
    return path


def test_the_repository_contracts_load_and_are_recorded() -> None:
    contracts = load_contracts(REPO / "config" / "contracts.toml")
    assert [c.con_id for c in contracts] == [265598, 495512563]
    assert all(c.record for c in contracts)
    assert contracts[1].extra["local_symbol"] == "ESZ6"


def test_defaults_and_a_served_only_contract(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[contracts]]\ncon_id = 1\nsymbol = "A"\n\n'
        '[[contracts]]\ncon_id = 900001\nsymbol = "BTCUSDT"\ncalendar = "24/7"\ntick_types = ["last"]\nrecord = false\n',
    )
    first, served = load_contracts(path)
    assert (first.record, first.tick_types, first.calendar, first.depth_rows) == (
        True,
        (TickType.BID_ASK, TickType.LAST),
        "XNYS",
        0,
    )
    assert (served.record, served.tick_types, served.calendar) == (False, (TickType.LAST,), "24/7")
    assert "record" not in served.extra


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('con_id = 1\nsymbol = "A"\nrecord = "no"', "contract #1: record 'no' must be true or false"),
        ('con_id = 0\nsymbol = "A"', "contract #1: con_id 0 must be a positive integer"),
        ('symbol = "A"', "contract #1: con_id is required"),
        ('con_id = 1\nsymbol = "A"\ntick_types = ["trades"]', "contract #1: tick_types"),
        ('con_id = 1\nsymbol = "A"\nmin_tick = 0', "contract #1: min_tick 0.0 must be positive"),
    ],
)
def test_a_bad_contract_is_a_config_error_naming_the_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match="contracts file") as raised:
        load_contracts(write(tmp_path, f"[[contracts]]\n{body}\n"))
    assert message in raised.value.message


def test_a_con_id_twice_is_refused(tmp_path: Path) -> None:
    body = '[[contracts]]\ncon_id = 7\nsymbol = "A"\n[[contracts]]\ncon_id = 7\nsymbol = "B"\n'
    with pytest.raises(ConfigError, match="con_id 7 appears twice"):
        load_contracts(write(tmp_path, body))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_contracts(tmp_path / "nope.toml")
