"""Every expected error of the command line is one line on stderr and the documented exit code, never a traceback.

Real data roots, real files: a catalog overwritten with garbage, a data root that is a file (/etc/passwd), one
where even root may not create a file (sysfs: EACCES), `--output` through a symlink to /dev/full (the kernel's
ENOSPC), a tiny tmpfs filled up or remounted read-only (ENOSPC / EROFS, when this machine lets the tests mount),
and a real `ib-stream serve` holding a data root. One case injects the error instead: ENOSPC raised where the
archiver writes its Parquet file, the boundary a full disk reaches.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from ib_stream.cli import app
from ib_stream.clock import ManualClock
from ib_stream.domain import StreamKey, TickType
from ib_stream.settings import StorageConfig
from ib_stream.storage import TickStore
from ib_stream.store.gaps import GapReason
from tests.conftest import CONTRACT, T0_NS, quote, seconds, trade

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "config" / "contracts.toml"
START, END = "2025-01-10T14:00:00Z", "2025-01-10T15:00:00Z"
A_FILE = "/etc/passwd"
NO_WRITE = "/sys/kernel"  # sysfs refuses to create files, to root too (chmod would not stop root)


@pytest.fixture
def data_root(store: TickStore, config: StorageConfig, clock: ManualClock) -> StorageConfig:
    """14:00–14:30 archived, 14:30–14:45 in the buffer (sealed by the wall clock), closed."""
    for batch in range(3):
        first = T0_NS + seconds(batch * 900)
        store.append_batch_sync(CONTRACT, "last", [trade(first + seconds(j), j) for j in range(20)])
        store.append_batch_sync(CONTRACT, "bid_ask", [quote(first + seconds(j), j) for j in range(20)])
        clock.advance(900)
        if batch == 1:
            store.run_archival()
    store.close()
    return config


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    """Settings naming the repository's contracts file by its absolute path (the tests' cwd does not matter)."""
    path = tmp_path / "ib-stream.toml"
    path.write_text(f'contracts_file = "{CONTRACTS}"\n')
    return path


@pytest.fixture
def corrupt_root(data_root: StorageConfig, tmp_path: Path) -> Path:
    """A copy of the data root whose catalog is not a SQLite database any more."""
    root = tmp_path / "corrupt"
    shutil.copytree(data_root.data_root, root)
    (root / "index.db").write_bytes(b"this is not a SQLite database " * 200)
    return root


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A directory of `--output` names that all lead to /dev/full."""
    directory = tmp_path / "full"
    directory.mkdir()
    for name in ("ticks.csv", "ticks.parquet", "bars.json"):
        (directory / name).symlink_to("/dev/full")
    return directory


def cli(settings: Path, *args: str, **env: str) -> Result:
    return CliRunner().invoke(app, ["--config", str(settings), *args], env={"IB_STREAM_STORAGE__DATA_ROOT": "", **env})


def assert_one_line(code: int, exit_code: int | None, stdout: str, stderr: str, fragments: Sequence[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == code, stderr or stdout
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stdout + stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- the table: each expected error on each command ---------------------------------------------------------

CASES: list[tuple[str, list[str], int, list[str]]] = []


def case(name: str, args: list[str], code: int, *fragments: str) -> None:
    CASES.append((name, args, code, list(fragments)))


for name, args in {
    "query": ["query", str(CONTRACT), "--tick-types", "last", "--start", START],
    "stats": ["stats"],
    "verify": ["verify"],
    "coverage": ["coverage", "--contract", str(CONTRACT)],
    "bars": ["bars", str(CONTRACT), "--start", START],
}.items():
    case(f"corrupt-catalog-{name}", [*args, "--data-dir", "{corrupt}"], 1, "is damaged", "ib-stream index rebuild")

for name, args in {
    "archive": ["archive"],
    "index-rebuild": ["index", "rebuild"],
    "verify": ["verify"],
    "query": ["query", str(CONTRACT), "--tick-types", "last", "--start", START],
    "stats": ["stats"],
    "coverage": ["coverage", "--contract", str(CONTRACT)],
    "backfill": ["backfill", "--contract", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", END],
    "bars": ["bars", str(CONTRACT), "--start", START],
    "serve": ["serve", "--port", "{port}"],
}.items():
    case(f"data-root-is-a-file-{name}", [*args, "--data-dir", A_FILE], 2, A_FILE, "is a file, not a directory")

for name, args in {
    "archive": ["archive"],
    "index-rebuild": ["index", "rebuild"],
    "backfill": ["backfill", "--contract", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", END],
    "serve": ["serve", "--port", "{port}"],
}.items():
    case(f"root-not-writable-{name}", [*args, "--data-dir", NO_WRITE], 1, f"{NO_WRITE}/.lock", "permission denied")

case(
    "full-disk-query-csv",
    ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--output", "{full}/ticks.csv"],
    1,
    "--output",
    "no space left on the device",
)
case(
    "full-disk-query-parquet",
    ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--output", "{full}/ticks.parquet"],
    1,
    "no space left on the device",
)
case(
    "full-disk-bars-json",
    ["bars", str(CONTRACT), "--start", START, "--end", END, "--output", "{full}/bars.json"],
    1,
    "no space left on the device",
)

for name, args in {
    "query": ["query", str(CONTRACT), "--tick-types", "last"],
    "bars": ["bars", str(CONTRACT)],
    "backfill": ["backfill", "--contract", str(CONTRACT), "--end", END],
}.items():
    case(f"year-1-{name}", [*args, "--start", "0001-01-01T00:00:00Z"], 2, "--start 0001-01-01T00:00:00Z", "1990..2199")
case(
    "year-9999-query-end",
    ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--end", "9999-12-31T23:59:59Z"],
    2,
    "--end 9999-12-31T23:59:59Z",
    "1990..2199",
)
case("relative-and-last", ["bars", str(CONTRACT), "--last", "2h", "--start", "-1h"], 2, "--last 2h", "--start")
case("bad-duration", ["bars", str(CONTRACT), "--last", "2 weeks"], 2, "--last 2 weeks", "duration")

for value in ("0", "-5", str(2**63)):
    case(
        f"contract-{value}-query",
        ["query", "--tick-types", "last", "--start", START, "--", value],
        2,
        f"CONTRACT_ID {value} is not a contract id",
    )
    case(f"contract-{value}-bars", ["bars", "--start", START, "--", value], 2, f"CONTRACT_ID {value} is not a")
    case(f"contract-{value}-stats", ["stats", "--contract", value], 2, f"--contract {value} is not a contract id")
    case(f"contract-{value}-coverage", ["coverage", "--contract", value], 2, f"--contract {value} is not a")
    case(
        f"contract-{value}-backfill",
        ["backfill", "--contract", value, "--start", START, "--end", END],
        2,
        f"--contract {value} is not a contract id",
    )
    case(  # the file is never read: the id is refused first, as HTTP refuses it
        f"contract-{value}-import-file",
        ["import", "file", "/etc/hostname", f"--contract={value}", "--preset", "truefx"],
        2,
        f"--contract {value} is not a contract id",
    )
    case(
        f"contract-{value}-import-map",
        ["import", "orderflow", "/etc/hostname", "--map", f"ES={value}"],
        2,
        f"--map {value} is not a contract id",
    )

case("usage-missing-option", ["query", str(CONTRACT), "--start", START], 2, "--tick-types", "--help")
case("usage-unknown-option", ["verify", "--bogus"], 2, "--bogus", "ib-stream verify --help")
case("usage-bad-int", ["query", str(CONTRACT), "--tick-types", "last", "--start", START, "--limit", "0"], 2, "--limit")


@pytest.mark.parametrize(("args", "code", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_expected_error_is_one_line_and_its_exit_code(
    data_root: StorageConfig,
    corrupt_root: Path,
    full: Path,
    settings_file: Path,
    args: list[str],
    code: int,
    fragments: list[str],
) -> None:
    paths = {"corrupt": str(corrupt_root), "full": str(full), "port": str(free_port())}
    filled = [a.format(**paths) for a in args]
    if "--data-dir" not in filled:
        filled += ["--data-dir", str(data_root.data_root)]
    result = cli(settings_file, *filled)
    assert_one_line(code, result.exit_code, result.stdout, result.stderr, fragments)


@pytest.mark.parametrize(
    "args",
    [
        ["coverage", "--contract", str(CONTRACT)],
        ["backfill", "--contract", str(CONTRACT), "--start", START, "--end", END],
        ["bars", str(CONTRACT), "--start", START],
    ],
    ids=["coverage", "backfill", "bars"],
)
def test_a_missing_contracts_file_says_how_to_give_one(
    data_root: StorageConfig, tmp_path: Path, args: list[str]
) -> None:
    settings = tmp_path / "settings.toml"
    missing = tmp_path / "missing.toml"
    settings.write_text(f'contracts_file = "{missing}"\n')
    result = cli(settings, *args, "--data-dir", str(data_root.data_root))
    assert_one_line(
        2, result.exit_code, result.stdout, result.stderr, [str(missing), "does not exist", "IB_STREAM_CONTRACTS_FILE"]
    )


def test_a_full_disk_in_the_data_root_is_one_line(
    data_root: StorageConfig, settings_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected where the archiver writes its Parquet file, as the kernel raises it there: no file name.
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ib_stream.store.archive.write_parquet_atomic", no_space)
    result = cli(settings_file, "archive", "--data-dir", str(data_root.data_root))
    assert_one_line(
        1, result.exit_code, result.stdout, result.stderr, ["no space left on the device", str(data_root.data_root)]
    )


# ---- a real full disk and a real read-only file system (a tmpfs, when the tests may mount one) ------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_really_full_disk_is_one_line(data_root: StorageConfig, settings_file: Path, tmpfs: Path) -> None:
    root = tmpfs / "root"
    shutil.copytree(data_root.data_root, root)
    filler = os.open(tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as no_space:
            while True:
                os.write(filler, b"\0" * 4096)  # unbuffered: every byte the disk takes, and then ENOSPC
        assert no_space.value.errno == errno.ENOSPC
    finally:
        os.close(filler)
    result = cli(settings_file, "archive", "--data-dir", str(root))
    assert_one_line(1, result.exit_code, result.stdout, result.stderr, [str(root)])
    assert "no space left on the device" in result.stderr or "disk of the data root full" in result.stderr


@pytest.mark.parametrize("args", [["archive"], ["index", "rebuild"]], ids=["archive", "index-rebuild"])
def test_a_read_only_file_system_is_one_line(
    data_root: StorageConfig, settings_file: Path, tmpfs: Path, args: list[str]
) -> None:
    root = tmpfs / "root"
    shutil.copytree(data_root.data_root, root)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = cli(settings_file, *args, "--data-dir", str(root))
    assert_one_line(1, result.exit_code, result.stdout, result.stderr, [str(root), "the file system is read-only"])


# ---- index rebuild over a damaged catalog ----------------------------------------------------------------------


def test_index_rebuild_replaces_a_corrupt_catalog_and_keeps_it_aside(
    data_root: StorageConfig, corrupt_root: Path, settings_file: Path
) -> None:
    def every_tick(root: Path) -> Any:
        query = ["query", str(CONTRACT), "--tick-types", "bid_ask,last", "--start", START, "--end", END]
        return cli(settings_file, *query, "--limit", "1000", "--data-dir", str(root))

    before = every_tick(data_root.data_root)
    assert before.exit_code == 0, before.output
    garbage = (corrupt_root / "index.db").read_bytes()
    for suffix in ("-wal", "-shm"):
        (corrupt_root / f"index.db{suffix}").write_bytes(b"old " + suffix.encode())
    result = cli(settings_file, "index", "rebuild", "--data-dir", str(corrupt_root))
    assert result.exit_code == 0, result.output
    (kept,) = corrupt_root.glob("index.db.corrupt-*[0-9]Z")
    assert kept.read_bytes() == garbage
    assert Path(f"{kept}-wal").read_bytes() == b"old -wal"  # the WAL may hold data: moved as it was
    assert Path(f"{kept}-shm").is_file()  # the WAL's index (SQLite rebuilds it from the WAL): moved with it
    assert f"was damaged (file is not a database): kept as {kept}" in result.stdout
    assert "catalog rebuilt: 4 files, 80 ticks" in result.stdout
    assert "gap ledger" in result.stderr and "import ledger" in result.stderr and "Traceback" not in result.output
    assert cli(settings_file, "verify", "--data-dir", str(corrupt_root)).exit_code == 0
    after = every_tick(corrupt_root)
    assert after.stdout == before.stdout  # every tick found again, archive and buffer


def test_index_rebuild_of_an_intact_catalog_keeps_it_and_its_ledgers(
    data_root: StorageConfig, settings_file: Path
) -> None:
    with TickStore(data_root) as store:
        store.gaps.add(
            StreamKey(CONTRACT, TickType.LAST),
            T0_NS + seconds(100),
            T0_NS + seconds(200),
            GapReason.DISCONNECT,
            "a gap",
        )
    result = cli(settings_file, "index", "rebuild", "--data-dir", str(data_root.data_root))
    assert result.exit_code == 0, result.output
    assert not list(data_root.data_root.glob("index.db.corrupt-*")) and "damaged" not in result.output
    coverage = cli(
        settings_file, "coverage", "--contract", str(CONTRACT), "--json", "--data-dir", str(data_root.data_root)
    )
    assert '"detail":"a gap"' in coverage.stdout


# ---- serve ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(settings: Path, data_root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ib_stream.cli",
            "--config",
            str(settings),
            "serve",
            "--data-dir",
            str(data_root),
            *args,
        ],
        cwd=REPO,
        env={**os.environ, "IB_STREAM_SIM__BATCH_MS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused(settings: Path, data_root: Path, *args: str) -> tuple[int, str, str]:
    process = serve(settings, data_root, *args)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


@pytest.fixture
def running_service(settings_file: Path, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    root, port = tmp_path / "served", free_port()
    process = serve(settings_file, root, "--port", str(port))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        yield root, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


@pytest.mark.timeout(120)
def test_serve_on_a_data_root_in_use_is_one_line_and_leaves_the_service_alone(
    running_service: tuple[Path, subprocess.Popen[str]], settings_file: Path
) -> None:
    root, service = running_service
    announced = (root / ".service.json").read_bytes()
    assert str(service.pid) in announced.decode()
    code, stdout, stderr = refused(settings_file, root, "--port", str(free_port()))
    assert_one_line(2, code, stdout, stderr, [str(root), "in use by pid", str(service.pid)])
    assert "serving on" not in stdout
    assert (root / ".service.json").read_bytes() == announced  # the running service's announcement is untouched
    assert service.poll() is None


def test_serve_checks_the_port_host_and_contracts_before_it_writes_anything(
    settings_file: Path, tmp_path: Path
) -> None:
    root = tmp_path / "new-root"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stdout, stderr = refused(settings_file, root, "--port", str(port))
    assert_one_line(2, code, stdout, stderr, [f"--port {port} is in use"])
    code, stdout, stderr = refused(settings_file, root, "--port", str(free_port()), "--host", "no-such-host.invalid")
    assert_one_line(2, code, stdout, stderr, ["--host no-such-host.invalid does not resolve"])
    settings = tmp_path / "no-contracts.toml"
    settings.write_text(f'contracts_file = "{tmp_path / "missing.toml"}"\n')
    code, stdout, stderr = refused(settings, root, "--port", str(free_port()))
    assert_one_line(2, code, stdout, stderr, ["missing.toml", "does not exist"])
    assert "serving on" not in stdout
    assert not root.exists()  # refused before the data root was created


def test_an_expected_error_of_the_service_start_is_one_line(data_root: StorageConfig, settings_file: Path) -> None:
    # A writer takes the data root after serve's checks and before the service opens the store: the service's
    # lifespan meets DataRootLockedError. The race is made certain by holding the lock from create_app on.
    driver = (
        "import sys\n"
        "from ib_stream import cli_serve\n"
        "from ib_stream.cli import main\n"
        "from ib_stream.storage import TickStore\n"
        "real = cli_serve.create_app\n"
        "def racing(settings):\n"
        "    global holder\n"
        "    holder = TickStore(settings.storage).open()\n"
        "    return real(settings)\n"
        "cli_serve.create_app = racing\n"
        "main()\n"
    )
    root = data_root.data_root
    process = subprocess.run(
        [sys.executable, "-c", driver, "--config", str(settings_file), "serve", "--port", str(free_port()),
         "--data-dir", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    errors = [line for line in process.stderr.splitlines() if line.startswith(("error:", "ERROR"))]
    assert process.returncode == 2, process.stderr
    assert errors == [
        f"error: data root {root} is in use by pid {_pid_in(process.stderr)}; stop it or use another data root"
    ]
    assert "Traceback" not in process.stderr
    assert not (root / ".service.json").exists()  # announced only once the service holds the data root


def _pid_in(text: str) -> str:
    return text.split("in use by pid ", 1)[1].split(";", 1)[0]
