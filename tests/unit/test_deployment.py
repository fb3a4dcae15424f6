"""docker-compose.yml, checked statically (no Docker engine runs here): services, ports, volumes,
healthcheck, credentials only by reference, and every IB_STREAM_ variable an existing setting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ib_stream.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names |= {f"IB_STREAM_{name.upper()}__{inner.upper()}" for inner in section.model_fields}
        else:
            names.add(f"IB_STREAM_{name.upper()}")
    return names


def test_services_gateway_service_and_demo_profile() -> None:
    services = compose()["services"]
    assert set(services) == {"ib-gateway", "ib-stream", "demo"}
    assert services["ib-gateway"]["image"].startswith("ghcr.io/gnzsnz/ib-gateway:")
    assert services["demo"]["profiles"] == ["demo"]
    assert services["demo"]["environment"]["IB_STREAM_SOURCE"] == "sim"
    assert "profiles" not in services["ib-stream"]


def test_service_ports_volumes_restart_and_healthcheck() -> None:
    for name in ("ib-stream", "demo"):
        service = compose()["services"][name]
        assert service["restart"] == "unless-stopped"
        assert service["ports"] == ["127.0.0.1:8000:8000"]
        assert {v.split(":")[0] for v in service["volumes"]} == {"./storage", "./config"}
        assert any("/health" in part for part in service["healthcheck"]["test"])
    assert compose()["services"]["ib-gateway"]["restart"] == "unless-stopped"
    assert "ports" not in compose()["services"]["ib-gateway"]  # the API stays inside the compose network


def test_credentials_are_references_never_values() -> None:
    gateway = compose()["services"]["ib-gateway"]["environment"]
    for key in ("TWS_USERID", "TWS_PASSWORD"):
        assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", gateway[key]), f"{key} must come from the environment"
    example = (REPO / "config" / "ib-stream.env.example").read_text()
    assert re.search(r"^TWS_PASSWORD=$", example, re.M)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_every_ib_stream_variable_is_a_setting_and_valid(monkeypatch: Any) -> None:
    known = setting_env_names()
    for name in ("ib-stream", "demo"):
        environment = compose()["services"][name]["environment"]
        for key, value in environment.items():
            if not key.startswith("IB_STREAM_"):
                continue
            assert key in known, f"{name}: {key} is not a setting"
            if "${" not in str(value):
                monkeypatch.setenv(key, str(value))
        settings = load_settings(REPO / "config" / "ib-stream.toml")
        for key in [k for k in environment if k.startswith("IB_STREAM_")]:
            monkeypatch.delenv(key, raising=False)
        if name == "ib-stream":
            assert settings.ib.enabled and settings.ib.host == "ib-gateway" and settings.ib.ports == (4004, 4003)
        else:
            assert settings.source == "sim"


def test_the_image_runs_the_service_on_all_interfaces() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert '"ib-stream", "serve", "--host", "0.0.0.0", "--port", "8000"' in dockerfile
