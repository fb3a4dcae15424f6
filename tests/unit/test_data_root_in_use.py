"""`StorageQuery()` finds the data root the running service records into, or says how to name one."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from ib_stream.errors import StorageError
from ib_stream.settings import StorageConfig
from ib_stream.store.service_file import announce_service, data_root_in_use, running_services, withdraw_service


def catalogued(root: Path) -> StorageConfig:
    root.mkdir(parents=True)
    (root / "index.db").write_bytes(b"")
    return StorageConfig(data_root=root)


def register(state: Path, pid: int, root: Path) -> None:
    entry = state / "ib-stream" / "services" / f"{pid}.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    record = {"url": "http://127.0.0.1:1", "pid": pid, "data_root": str(root), "index_file": str(root / "index.db")}
    entry.write_bytes(orjson.dumps(record))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def test_a_data_root_with_a_catalog_is_used_as_it_is(tmp_path: Path, state: Path) -> None:
    own = catalogued(tmp_path / "own")
    register(state, os.getpid(), catalogued(tmp_path / "service").data_root)
    assert data_root_in_use(own) == own


def test_without_a_catalog_the_one_running_service_is_found(tmp_path: Path, state: Path) -> None:
    service = catalogued(tmp_path / "service")
    announce_service(service, "127.0.0.1", 8123)  # what `serve` does once it holds the lock
    found = data_root_in_use(StorageConfig(data_root=tmp_path / "storage"))
    assert found.data_root == service.data_root.resolve() and found.index_file == service.index_file.resolve()
    assert withdraw_service(service) and running_services() == []
    assert data_root_in_use(StorageConfig(data_root=tmp_path / "storage")).data_root == tmp_path / "storage"


def test_several_running_services_are_named_and_dead_ones_forgotten(tmp_path: Path, state: Path) -> None:
    first, second = catalogued(tmp_path / "a").data_root, catalogued(tmp_path / "b").data_root
    register(state, os.getpid(), first)
    register(state, os.getppid(), second)
    register(state, 2**22 + 12345, tmp_path / "gone")  # no such process
    with pytest.raises(StorageError) as raised:
        data_root_in_use(StorageConfig(data_root=tmp_path / "storage"))
    assert str(first) in raised.value.message and str(second) in raised.value.message
    assert "StorageConfig(data_root=" in raised.value.message
    assert not (state / "ib-stream" / "services" / f"{2**22 + 12345}.json").exists()
