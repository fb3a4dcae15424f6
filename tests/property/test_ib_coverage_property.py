"""Property: IB capture never loses silently (DESIGN §5, invariant 9), over randomized scripted disconnects.

Each run records a scripted market (1-3 contracts x bid_ask, last, mid_point; the same prices and sizes
repeat within a second) through the real IB source and the real ibapi client against the fake TWS, and
disconnects once at a random instant — half of them late in a second, where ibapi notices the closed
socket only in the next one: a dropped socket, 1100 then 1101 or 1102, a 1102 alone, a drop while a
backfill's history answer is in flight (dropped again before it arrives), or a stalled feed the watchdog
resubscribes (and reconnects). History answers may come with
a live tick in the same write. Then every second of every stream must hold the broker's ticks exactly
once, or lie inside a ledger gap — and once the gaps are backfilled, there must be no loss at all.

The default run has a few runs; `-m slow` has 50 randomized runs and paced runs at 1 message a second.
Run with `-s` to see the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.coverage_scenario import Coverage, Outcome, Scenario, run_scenario

TOTAL = Coverage()
RUNS: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    """Print the figures of the runs of this module (visible with -s)."""
    yield
    if RUNS:
        worst = max(RUNS, key=lambda o: o.coverage.losses_outside_gaps + o.coverage.duplicates)
        print(f"\nIB coverage: {len(RUNS)} runs, {TOTAL.summary()}; worst run: {worst.scenario.describe()}")


async def check(scenario: Scenario, root: Path) -> None:
    outcome = await run_scenario(scenario, root)
    RUNS.append(outcome)
    TOTAL.add(outcome.coverage)
    coverage = outcome.coverage
    print(f"\n{scenario.describe()}: {coverage.summary()}, {len(outcome.gaps)} gaps")
    assert coverage.violations == [], f"{scenario.describe()}: {coverage.violations[:5]}"
    assert coverage.duplicates == 0, f"{scenario.describe()}: {coverage.summary()}"
    assert coverage.losses == 0, f"{scenario.describe()}: backfill left {coverage.summary()}"
    assert coverage.ticks > 0 and outcome.gaps, scenario.describe()
    assert all(g.reason and g.end_ns is not None for g in outcome.gaps)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(seed=101, kind="drop", at_fraction=0.93, piggyback="after", backfill_delay=0.0),
        Scenario(seed=102, kind="1100-1102", at_fraction=0.85, piggyback="before", contracts=3),
        Scenario(seed=103, kind="drop-in-history", at_fraction=0.95, contracts=1, piggyback="before"),
    ],
    ids=lambda s: f"seed{s.seed}",
)
async def test_coverage_over_scripted_disconnects(scenario: Scenario, tmp_path: Path) -> None:
    await check(scenario, tmp_path / "storage")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("seed", range(50))
async def test_coverage_over_randomized_disconnects(seed: int, tmp_path: Path) -> None:
    await check(Scenario.random(seed), tmp_path / "storage")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", range(4))
async def test_coverage_with_subscriptions_paced_at_one_message_a_second(seed: int, tmp_path: Path) -> None:
    # 3 contracts x 2 streams: each connection sends 3 contract-details and 6 subscriptions at 1 a second.
    random = Scenario.random(1000 + seed)
    scenario = Scenario(
        seed=random.seed, kind=random.kind if random.kind != "drop-in-history" else "drop",
        at_fraction=random.at_fraction, outage_seconds=random.outage_seconds, contracts=3,
        kinds=("BidAsk", "MidPoint"), messages_per_second=1, piggyback=random.piggyback,
        backfill_delay=random.backfill_delay,
    )  # fmt: skip
    await check(scenario, tmp_path / "storage")
