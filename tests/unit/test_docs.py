"""The docs cannot rot: settings, CLI commands and options, errors and Python examples are checked against the code."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import ib_stream.errors as errors_module
from ib_stream.cli import app
from ib_stream.cli_support import exit_code_for
from ib_stream.errors import IbStreamError
from ib_stream.jobs import job_intervals
from ib_stream.settings import Settings, StorageConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROGRAM = "ib-stream"


def read(relative: str) -> str:
    return (DOCS / relative).read_text()


# ---- configuration -----------------------------------------------------------------------------------

_SETTING_ROW = re.compile(
    r"^\| `(?P<name>\w+)` \| (?P<default>[^|]+?) \| `(?P<env>[A-Z0-9_]+)` \| (?P<description>[^|]+?) \|$", re.M
)


def documented_settings() -> dict[str, dict[str, str]]:
    """Documented settings keyed by their environment variable (unique across sections)."""
    return {m["env"]: m.groupdict() for m in _SETTING_ROW.finditer(read("reference/configuration.md"))}


def all_settings() -> dict[str, FieldInfo]:
    """Every setting, keyed by its environment variable: top-level fields and each section's fields."""
    found: dict[str, FieldInfo] = {}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for inner, inner_field in section.model_fields.items():
                found[f"IB_STREAM_{name.upper()}__{inner.upper()}"] = inner_field
        else:
            found[f"IB_STREAM_{name.upper()}"] = field
    return found


def shown_default(default: Any) -> str:
    """How configuration.md writes a default: `value` in backticks, or "unset" for None."""
    return "unset" if default is None else f"`{default}`"


@pytest.mark.parametrize("env", list(all_settings()))
def test_every_setting_is_documented_with_default_and_env_var(env: str) -> None:
    field = all_settings()[env]
    rows = documented_settings()
    assert env in rows, f"{env} is missing from docs/reference/configuration.md"
    row = rows[env]
    assert row["default"] == shown_default(field.default), f"{env}: wrong default in the docs"
    assert env.endswith(row["name"].upper())
    assert field.description is not None
    assert field.description in row["description"].replace("`", ""), f"{env}: description differs"


def test_no_setting_is_documented_that_does_not_exist() -> None:
    assert set(documented_settings()) <= set(all_settings())


def test_every_scheduled_job_is_documented() -> None:
    text = read("reference/configuration.md")
    for job in job_intervals(StorageConfig()):
        assert f"| `{job}` |" in text


# ---- command line --------------------------------------------------------------------------------------


def walk_commands(command: Any, path: tuple[str, ...] = (PROGRAM,)) -> Iterator[tuple[str, Any]]:
    yield " ".join(path), command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk_commands(sub, (*path, name))


def cli_sections() -> dict[str, str]:
    """The `## \\`ib-stream …\\`` sections of cli.md, keyed by command path."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in read("reference/cli.md").splitlines():
        heading = re.fullmatch(r"## `(ib-stream[\w -]*)`", line)
        if heading:
            current = heading[1]
            sections[current] = ""
        elif line.startswith("## "):
            current = None
        elif current is not None:
            sections[current] += line + "\n"
    return sections


COMMANDS = dict(walk_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", list(COMMANDS))
def test_every_command_and_option_is_documented(path: str) -> None:
    sections = cli_sections()
    assert path in sections, f"`{path}` has no section in docs/reference/cli.md"
    section = sections[path]
    for param in COMMANDS[path].params:
        if param.param_type_name == "argument":
            names = [param.metavar or param.name.upper()]
        else:
            names = [*param.opts, *param.secondary_opts]
        for name in names:
            assert f"`{name}`" in section, f"{name} of `{path}` is not documented in its section of cli.md"


def test_no_command_is_documented_that_does_not_exist() -> None:
    assert set(cli_sections()) <= set(COMMANDS)


# ---- errors --------------------------------------------------------------------------------------------

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors_module, inspect.isclass)
    if issubclass(cls, IbStreamError) and cls.__module__ == errors_module.__name__
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_documented(cls: type[IbStreamError]) -> None:
    text = read("reference/errors.md")
    row = re.search(rf"^\| `{cls.__name__}` \|.*$", text, re.M)
    assert row, f"{cls.__name__} is missing from docs/reference/errors.md"
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[1:5] == [
        f"`{cls.__bases__[0].__name__}`",
        f"`{cls.code}`",
        str(cls.http_status),
        str(exit_code_for(cls)),
    ]


def test_error_tree_is_the_one_in_the_code() -> None:
    doc = errors_module.__doc__ or ""
    tree = doc[doc.index("IbStreamError") :].strip()
    assert tree in read("reference/errors.md")


# ---- links and examples --------------------------------------------------------------------------------


def test_relative_links_point_to_existing_pages() -> None:
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.relative_to(DOCS)} links to missing {target}"


# The Python examples of the docs run against a live service: tests/integration/test_docs_live.py.
