"""Importers: existing recordings (order-flow SQLite, vendor CSV / JSON lines) into the store, exactly once.

    from ib_stream.importers import import_file, import_orderflow, OrderflowOptions, preset
    report = import_file(store, Path("trades.csv.gz"), preset("binance-trades"), contract_id=1)
    report = import_orderflow(store, Path("flow.db"), OrderflowOptions(contract_id=2))

Every importer reads a file into per-stream tick lists, appends them in batches with source
`import`, and records each durable batch in the import ledger (`ledger`), so running it again
stores nothing twice; a tick the store already holds by content (`content`) is not stored again,
whichever file it comes from. Each run is an import with an id: `list_imports` lists them and
`undo_import` removes one's ticks (`undo`). The command line is `ib-stream import ...` (`cli_import`).
"""

from ib_stream.importers.ledger import ImportLedger
from ib_stream.importers.orderflow_sqlite import OrderflowOptions, import_orderflow, inspect_recording
from ib_stream.importers.presets import PRESETS, preset
from ib_stream.importers.tabular import Output, Recipe, import_file, parse_mapping
from ib_stream.importers.undo import list_imports, undo_import
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
    "list_imports",
    "parse_mapping",
    "preset",
    "undo_import",
]
