"""Importers: list the imports of a data root, and undo one — its ticks removed as if it had never run.

    undo = ImportUndo(store, 3)      # the import with id 3 (`ib-stream import list`)
    steps = undo.prepare()           # marks it `undoing`, archives its streams' buffered ticks, plans the rewrite
    report = undo.run(progress)      # rewrites what holds its ticks; marks it `undone`

An import's ticks are those its batches were given (the seq ranges of the ledger's `import_ranges`) that
carry source `import`; `store.rewrite.TickRemover` removes them from the archive and the buffer, with the
derived files and caches that depend on them. The import is marked `undoing` before anything changes and
`undone` (its seq ranges and its file's batches forgotten, so importing the file again stores it again)
only once everything is rewritten: a run that dies half-way leaves it `undoing`, and running the undo again
finishes it. Ticks a later import found already stored because this import held them are not that import's:
the report names such imports (re-import their files after the undo to store those ticks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ib_stream.importers.ledger import UNDOING, UNDONE, ImportInfo, ImportLedger
from ib_stream.importers.writer import SOURCE
from ib_stream.store.rewrite import Progress, RemovalPlan, RemovalReport, Selection, TickRemover
from ib_stream.store.tickstore import TickStore


@dataclass(slots=True)
class UndoReport:
    """What an undo did (`removal` is None when the import was already undone)."""

    info: ImportInfo
    removal: RemovalReport | None
    warnings: list[str] = field(default_factory=list)

    @property
    def already_undone(self) -> bool:
        return self.removal is None


def list_imports(index_file: Path) -> list[ImportInfo]:
    """Every import recorded in a catalog file, oldest first (read-only: safe while the service runs)."""
    if not index_file.is_file():
        return []
    ledger = ImportLedger(index_file, readonly=True)
    try:
        return ledger.imports() if ledger.has_imports() else []
    finally:
        ledger.close()


class ImportUndo:
    """The undo of one import on an open, writable store that nothing else appends to meanwhile."""

    def __init__(self, store: TickStore, import_id: int) -> None:
        self.store = store
        self.ledger = ImportLedger(store.config.index_file)
        try:
            self.info = self.ledger.import_info(import_id)
        except BaseException:
            self.ledger.close()
            raise
        self.plan: RemovalPlan | None = None

    def prepare(self) -> int:
        """Mark the import `undoing`, archive its streams' buffered ticks and plan the rewrite; return its steps (0
        when it is already undone)."""
        if self.info.state == UNDONE:
            return 0
        self.ledger.set_state(self.info.import_id, UNDOING)
        selections = [
            Selection(r.stream, r.ranges, r.min_ts, r.max_ts, SOURCE)
            for r in self.ledger.seq_ranges(self.info.import_id)
        ]
        self.plan = TickRemover(self.store).prepare(selections)
        return self.plan.steps

    def run(self, progress: Progress | None = None) -> UndoReport:
        """Remove the import's ticks (after `prepare`) and mark it undone."""
        if self.info.state == UNDONE:
            return UndoReport(self.info, None)
        if self.plan is None:
            self.prepare()
        assert self.plan is not None
        removal = TickRemover(self.store).remove(self.plan, progress)
        self.ledger.forget(self.info)
        report = UndoReport(self.ledger.import_info(self.info.import_id), removal)
        later = self.ledger.later_matches(self.info)
        if later:
            ids = ", ".join(str(i) for i in later)
            report.warnings.append(
                f"later imports ({ids}) found ticks already stored in the streams and span of import "
                f"{self.info.import_id} and did not store them again: if they were this import's they are gone now; "
                "undo those imports and import their files again to store them"
            )
        return report

    def close(self) -> None:
        self.ledger.close()


def undo_import(store: TickStore, import_id: int, progress: Progress | None = None) -> UndoReport:
    """Undo the import `import_id` on an open store (see `ImportUndo`)."""
    undo = ImportUndo(store, import_id)
    try:
        undo.prepare()
        return undo.run(progress)
    finally:
        undo.close()
