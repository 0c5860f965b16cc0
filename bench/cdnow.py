"""The CDNOW master file as purchase CloudEvents (the loaders of tests/support/cdnow.py).

The same rows, ids and order as `tests.support.cdnow.load_master` and `purchase_events`, so
a bench replay and the tests see the same events; kept here so the bench does not import
the test tree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PURCHASE_TYPE = "crm.purchase.completed.v1"
SOURCE = "cdnow"
CENTS = Decimal("0.01")


@dataclass(frozen=True)
class Purchase:
    """One row of a CDNOW file."""

    customer_id: str  # "cdnow-<master id without leading zeros>"
    day: date
    number_of_cds: int
    dollar_value: Decimal

    @property
    def time(self) -> datetime:
        """The file gives days only, so every purchase happened at midnight UTC."""
        return datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)


def master_path() -> Path:
    """The full file, kept once next to the repository rather than copied into it."""
    return (REPO_ROOT / "../shared/data/cdnow/CDNOW_master.txt").resolve()


def load_master(path: Path | None = None) -> list[Purchase]:
    """The master file: one header line, then customer_id, date, number_of_cds, dollar_value."""
    # split() with no argument also eats the file's CRLF endings and padding spaces.
    rows = [line.split() for line in (path or master_path()).read_text().splitlines()]
    return [_purchase(*row) for row in rows[1:] if row]


def _purchase(master_id: str, yyyymmdd: str, cds: str, dollars: str) -> Purchase:
    return Purchase(
        customer_id=f"cdnow-{int(master_id)}",
        day=date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])),
        number_of_cds=int(cds),
        dollar_value=Decimal(dollars),
    )


def purchase_events(purchases: list[Purchase]) -> list[dict[str, Any]]:
    """The purchases as CloudEvents structured JSON, oldest first (ties: customer id, n).

    A customer can buy more than once a day, so the id numbers their purchases of that day
    (n = 1, 2, ... in the order given): replays produce the same ids, never colliding.
    """
    seen: Counter[tuple[str, date]] = Counter()
    numbered = []
    for purchase in purchases:
        seen[purchase.customer_id, purchase.day] += 1
        numbered.append((purchase, seen[purchase.customer_id, purchase.day]))
    numbered.sort(key=lambda pn: (pn[0].time, pn[0].customer_id, pn[1]))
    return [purchase_event(purchase, n) for purchase, n in numbered]


def purchase_event(purchase: Purchase, n: int) -> dict[str, Any]:
    """The n-th purchase of that customer on that day, as another system would send it."""
    event_id = f"{purchase.customer_id}-{purchase.day:%Y%m%d}-{n}"
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": PURCHASE_TYPE,
        "subject": purchase.customer_id,
        "time": purchase.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {
            "order_id": event_id,
            "amount": str(purchase.dollar_value.quantize(CENTS)),
            "currency": "USD",
            "item_count": purchase.number_of_cds,
        },
    }


def purchase_times_by_customer(purchases: list[Purchase]) -> dict[str, list[datetime]]:
    """Each customer's purchase times, oldest first."""
    times: dict[str, list[datetime]] = {}
    for purchase in purchases:
        times.setdefault(purchase.customer_id, []).append(purchase.time)
    return {customer: sorted(ts) for customer, ts in times.items()}
