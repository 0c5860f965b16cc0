"""The CDNOW purchase history (see tests/data/cdnow/README.md) as purchases and CloudEvents."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PATH = REPO_ROOT / "tests" / "data" / "cdnow" / "CDNOW_sample.txt"
PURCHASE_TYPE = "crm.purchase.completed.v1"
CENTS = Decimal("0.01")


@dataclass(frozen=True)
class Purchase:
    """One row of a CDNOW file."""

    customer_id: str  # "cdnow-<master id without leading zeros>", the same in sample and master
    day: date
    number_of_cds: int
    dollar_value: Decimal

    @property
    def time(self) -> datetime:
        """The files give days only, so every purchase happened at midnight UTC."""
        return datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)


def master_path() -> Path:
    """The full file, kept once next to the repository rather than copied into it."""
    return (REPO_ROOT / "../shared/data/cdnow/CDNOW_master.txt").resolve()


def load_sample(path: Path = SAMPLE_PATH) -> list[Purchase]:
    """The sample: master_id, sample_id, date, number_of_cds, dollar_value; no header."""
    rows = _rows(path)
    return [_purchase(master_id, *rest) for master_id, _sample_id, *rest in rows]


def load_master(path: Path | None = None) -> list[Purchase]:
    """The master file: one header line, then customer_id, date, number_of_cds, dollar_value."""
    rows = _rows(path or master_path())[1:]
    return [_purchase(*row) for row in rows]


def _rows(path: Path) -> list[list[str]]:
    # split() with no argument also eats the files' CRLF endings and padding spaces.
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _purchase(master_id: str, yyyymmdd: str, cds: str, dollars: str) -> Purchase:
    return Purchase(
        customer_id=f"cdnow-{int(master_id)}",
        day=datetime.strptime(yyyymmdd, "%Y%m%d").date(),
        number_of_cds=int(cds),
        dollar_value=Decimal(dollars),
    )


def purchase_events(purchases: list[Purchase]) -> list[dict[str, Any]]:
    """The purchases as CloudEvents structured JSON, oldest first.

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
        "source": "cdnow",
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


def purchase_times_by_customer(
    purchases: list[Purchase], *, until: datetime | None = None
) -> dict[str, list[datetime]]:
    """Each customer's purchase times, oldest first, keeping only those at or before `until`."""
    times: dict[str, list[datetime]] = {}
    for purchase in purchases:
        if until is None or purchase.time <= until:
            times.setdefault(purchase.customer_id, []).append(purchase.time)
    return {customer: sorted(ts) for customer, ts in times.items()}
