"""Importers: existing recordings (order-flow SQLite, vendor CSV / JSON lines) into the store, exactly once.

    from ib_stream.importers import import_file, import_orderflow, OrderflowOptions, preset
    report = import_file(store, Path("trades.csv.gz"), preset("binance-trades"), contract_id=1)
    report = import_orderflow(store, Path("flow.db"), OrderflowOptions(contract_id=2))

Every importer reads a file into per-stream tick lists, appends them in batches with source
`import`, and records each durable batch in the import ledger (`ledger`), so running it again
stores nothing twice. The command line is `ib-stream import ...` (`importers.cli`).
"""

from ib_stream.importers.ledger import ImportLedger
from ib_stream.importers.orderflow_sqlite import OrderflowOptions, import_orderflow, inspect_recording
from ib_stream.importers.presets import PRESETS, preset
from ib_stream.importers.tabular import Output, Recipe, import_file, parse_mapping
from ib_stream.importers.writer import ImportReport

__all__ = [
    "PRESETS",
    "ImportLedger",
    "ImportReport",
    "OrderflowOptions",
    "Output",
    "Recipe",
    "import_file",
    "import_orderflow",
    "inspect_recording",
    "parse_mapping",
    "preset",
]
