"""CSV import of contacts: upsert by email, phone or external id, one transaction per chunk.

The file is UTF-8 (a byte-order mark is allowed) with a header row naming profile fields;
`email`, `phone`, `tags` and `external_id` cells may hold several values separated by `;`,
and `attr.<name>` columns set custom attributes. A row updates the contact that already
holds one of its identifiers (only the columns given; lists are added to) or creates one;
rows naming the same person within the file land on one contact. A row that fails
validation is reported with its number and the other rows still import.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from contacts.domain.contact import Contact, DomainError, merge_patch
from contacts.domain.identity import external_id
from contacts.domain.profile import ATTRIBUTE_KEY, ProfileError, parse_profile
from contacts.handlers.records import ContactService, NewContact
from contacts.store import records
from crm_shared.store.eventstore import ConcurrencyError

CHUNK_ROWS = 500
MAX_LISTED_ERRORS = 1000
ATTEMPTS = 3
ATTRIBUTE_PREFIX = "attr."
SCALARS = (
    "first_name",
    "last_name",
    "birthday",
    "time_zone",
    "locale",
    "country",
    "region",
    "city",
    "age_band",
    "gender",
    "company",
    "source",
    "channel",
)
LISTS = {
    "email": "emails",
    "emails": "emails",
    "phone": "phones",
    "phones": "phones",
    "tags": "tags",
    "external_id": "external_ids",
    "external_ids": "external_ids",
}
COLUMNS = {**{name: name for name in SCALARS}, **LISTS}
# Leading zeros (zip codes, account numbers) keep a value text.
INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")

Status = Literal["created", "updated", "unchanged", "error"]
Source = Callable[[], AbstractContextManager[Iterable[str]]]
Progress = Callable[[int, int], None]


class ImportFileError(Exception):
    """The file as a whole cannot be imported (not UTF-8 CSV, no header, unknown columns)."""

    def __init__(self, reason: str, *, unknown_columns: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason, self.unknown_columns = reason, list(unknown_columns)


class RowError(Exception):
    """One row cannot be imported; `reason` reads `<field>: <why>`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Row:
    """A data row as a merge patch of normalised profile fields, and its external ids."""

    number: int
    profile: dict[str, Any]
    external_ids: list[str]

    @property
    def identifiers(self) -> list[str]:
        return (
            [f"email:{e}" for e in self.profile.get("emails", [])]
            + [f"phone:{p}" for p in self.profile.get("phones", [])]
            + [f"ext:{x}" for x in self.external_ids]
        )


@dataclass(frozen=True, slots=True, order=True)
class RowOutcome:
    row: int
    status: Status
    error: str | None = None


Parsed = tuple[list[Row], list[RowOutcome]]  # a chunk's valid rows, and the rows refused
Done = Callable[[list[RowOutcome]], None]


@dataclass
class ImportSummary:
    dry_run: bool = False
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[RowOutcome] = field(default_factory=list)
    more_errors: int = 0

    def count(self, outcomes: Iterable[RowOutcome]) -> None:
        for outcome in outcomes:
            self.rows += 1
            if outcome.status != "error":
                setattr(self, outcome.status, getattr(self, outcome.status) + 1)
                continue
            self.failed += 1
            if len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append(outcome)
            else:
                self.more_errors += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "errors": [{"row": e.row, "status": e.status, "error": e.error} for e in self.errors],
            "more_errors": self.more_errors,
        }


# --- reading the file (pure) -----------------------------------------------------------


def decode(data: bytes) -> str:
    """The text of an uploaded file: UTF-8, a leading byte-order mark dropped."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"the file is not UTF-8 text: {exc}") from None


def read_columns(header: Sequence[str]) -> list[str]:
    """The field each header cell names (`emails`, `attr.plan`, ...); unknown ones refused."""
    names = [h.strip().lstrip("\ufeff").strip().lower() for h in header]
    unknown = [h for h, n in zip(header, names, strict=True) if not _known(n)]
    if unknown:
        raise ImportFileError(
            f"unknown columns: {', '.join(repr(h) for h in unknown)}; known are "
            f"{', '.join(COLUMNS)} and attr.<name> (snake_case)",
            unknown_columns=unknown,
        )
    columns = [COLUMNS.get(n, n) for n in names]
    repeated = sorted({c for c in columns if columns.count(c) > 1 and c not in LISTS.values()})
    if repeated:
        raise ImportFileError(f"columns given more than once: {', '.join(repeated)}")
    return columns


def _known(name: str) -> bool:
    attribute = name.removeprefix(ATTRIBUTE_PREFIX)
    return name in COLUMNS or (name != attribute and bool(ATTRIBUTE_KEY.match(attribute)))


def read_csv(lines: Iterable[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The columns, and the data rows numbered from 1 (blank rows skipped)."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ImportFileError("the file is empty; its first line must name the columns")
    rows = ((n, cells) for n, cells in enumerate(reader, 1) if any(c.strip() for c in cells))
    return read_columns(header), rows


def count_rows(source: Source) -> int:
    """Read the whole file once: a bad file is refused before anything is written."""
    try:
        with source() as lines:
            _, rows = read_csv(lines)
            return sum(1 for _ in rows)
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"the file is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise ImportFileError(f"the file is not readable as CSV: {exc}") from None


def typed(value: str) -> str | int | float | bool:
    """An attribute cell as JSON: integers, decimals and true/false keep their type."""
    if INTEGER.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts: kept as written
            return value
    if DECIMAL.fullmatch(value):
        return float(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def parse_row(columns: Sequence[str], cells: Sequence[str], number: int) -> Row:
    """One data row as a validated, normalised patch; RowError names the field at fault."""
    if any(c.strip() for c in cells[len(columns) :]):
        raise RowError(f"row: {len(cells)} cells, but the header names {len(columns)} columns")
    patch: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=False):
        if cell.strip():
            _put(patch, column, cell.strip())
    external = patch.pop("external_ids", [])
    try:
        valid = parse_profile(patch).as_json()
        ids = list(dict.fromkeys(external_id(x) for x in external))
    except ProfileError as exc:
        raise RowError(exc.reason) from None
    except ValueError as exc:
        raise RowError(f"external_ids: {exc}") from None
    row = Row(number, {name: valid[name] for name in patch}, ids)
    if not row.identifiers:
        raise RowError("row: no email, phone or external_id to match it on")
    return row


def _put(patch: dict[str, Any], column: str, value: str) -> None:
    if column.startswith(ATTRIBUTE_PREFIX):
        patch.setdefault("attributes", {})[column.removeprefix(ATTRIBUTE_PREFIX)] = typed(value)
    elif column in LISTS.values():
        patch.setdefault(column, []).extend(v.strip() for v in value.split(";") if v.strip())
    else:
        patch[column] = value


def additive(profile: dict[str, Any], row: Row) -> dict[str, Any]:
    """The row's patch with emails, phones and tags added to the profile's, not replacing them."""
    patch = dict(row.profile)
    for name in ("emails", "phones", "tags"):
        if name in patch:
            patch[name] = list(dict.fromkeys([*profile.get(name, []), *patch[name]]))
    return patch


# --- importing -------------------------------------------------------------------------


class _Rollback(Exception):
    """Ends a dry run's transaction."""


@dataclass
class _Batch:
    """What one transaction has decided so far: who holds each identifier, what to create."""

    owners: dict[str, str]
    erased: set[str] = field(default_factory=set)  # identifiers erased contacts had
    new: dict[str, NewContact] = field(default_factory=dict)
    existing: dict[str, Contact] = field(default_factory=dict)

    def owner_of(self, row: Row) -> str | None:
        found = {i: self.owners[i] for i in row.identifiers if i in self.owners}
        gone = [i for i in row.identifiers if i in self.erased and i not in found]
        if gone:
            raise RowError(f"row: {gone[0]} belonged to a contact that was erased")
        if len(set(found.values())) > 1:
            held = ", ".join(f"{i} by contact {c}" for i, c in found.items())
            raise RowError(f"row: its identifiers are held by different contacts ({held})")
        return next(iter(found.values()), None)

    def claim(self, row: Row, contact_id: str) -> None:
        self.owners.update(dict.fromkeys(row.identifiers, contact_id))


class Importer:
    def __init__(self, contacts: ContactService, *, chunk_rows: int = CHUNK_ROWS) -> None:
        self._contacts = contacts
        self._chunk_rows = chunk_rows

    async def run(
        self,
        source: Source,
        *,
        dry_run: bool = False,
        actor: str | None = None,
        on_progress: Progress | None = None,
    ) -> ImportSummary:
        """Import the file `source` opens; with `dry_run`, validate and count, write nothing."""
        total = count_rows(source)
        summary = ImportSummary(dry_run=dry_run)

        def done(outcomes: list[RowOutcome]) -> None:
            summary.count(outcomes)
            if on_progress is not None:
                on_progress(summary.rows, total)

        with source() as lines:
            columns, rows = read_csv(lines)
            chunks = (_parsed(columns, chunk) for chunk in _chunked(rows, self._chunk_rows))
            if dry_run:
                await self._rehearse(chunks, actor, done)
            else:
                await self._commit(chunks, actor, done)
        return summary

    async def _commit(self, chunks: Iterable[Parsed], actor: str | None, done: Done) -> None:
        for rows, failed in chunks:
            done(sorted(failed + await self._commit_chunk(rows, actor)))
            self._contacts.wake()

    async def _rehearse(self, chunks: Iterable[Parsed], actor: str | None, done: Done) -> None:
        # One transaction for the whole file, so later rows see what earlier chunks did.
        with contextlib.suppress(_Rollback):
            async with self._contacts.db.transaction() as conn:
                for rows, failed in chunks:
                    done(sorted(failed + await self._apply(conn, rows, actor)))
                raise _Rollback

    async def _commit_chunk(self, rows: list[Row], actor: str | None) -> list[RowOutcome]:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._contacts.db.transaction() as conn:
                    return await self._apply(conn, rows, actor)
            except ConcurrencyError:
                # Another writer changed one of these contacts meanwhile; decide again.
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _apply(
        self, conn: AsyncConnection, rows: list[Row], actor: str | None
    ) -> list[RowOutcome]:
        identifiers = [i for r in rows for i in r.identifiers]
        owners = await records.resolve(conn, identifiers)
        unknown = [i for i in identifiers if i not in owners]
        erased = await self._contacts.vault.erased_identifiers(conn, unknown)
        batch = _Batch(owners, erased=set(erased))
        outcomes = []
        for row in rows:
            try:
                outcomes.append(RowOutcome(row.number, await self._upsert(conn, row, batch, actor)))
            except RowError as exc:
                outcomes.append(RowOutcome(row.number, "error", exc.reason))
        new = list(batch.new.values())
        await self._contacts.create_many(conn, new, origin="import", actor=actor)
        return outcomes

    async def _upsert(
        self, conn: AsyncConnection, row: Row, batch: _Batch, actor: str | None
    ) -> Status:
        owner = batch.owner_of(row)
        if owner is None:
            owner = self._contacts.new_id()
            batch.new[owner] = NewContact(owner, row.profile, row.external_ids)
            status: Status = "created"
        elif owner in batch.new:
            batch.new[owner], status = _merged(batch.new[owner], row)
        else:
            status = await self._update(conn, owner, row, batch, actor)
        batch.claim(row, owner)
        return status

    async def _update(
        self, conn: AsyncConnection, contact_id: str, row: Row, batch: _Batch, actor: str | None
    ) -> Status:
        state = batch.existing.get(contact_id) or await self._load(conn, contact_id)
        patch = {**additive(state.profile, row), "external_ids": row.external_ids}
        try:
            after = await self._contacts.update_in(conn, state, patch, actor=actor)
        except DomainError as exc:
            raise RowError(exc.reason) from None
        batch.existing[contact_id] = after
        return "unchanged" if after.version == state.version else "updated"

    async def _load(self, conn: AsyncConnection, contact_id: str) -> Contact:
        state = await records.current(conn, contact_id)
        assert state is not None, f"an identifier names the unknown contact {contact_id}"
        return state


def _merged(pending: NewContact, row: Row) -> tuple[NewContact, Status]:
    """A contact this batch creates, with a later row of the same person applied."""
    profile = merge_patch(pending.profile, additive(pending.profile, row))
    try:
        parse_profile(profile)
    except ProfileError as exc:
        raise RowError(exc.reason) from None
    external = list(dict.fromkeys([*pending.external_ids, *row.external_ids]))
    merged = NewContact(pending.contact_id, profile, external)
    return merged, "unchanged" if merged == pending else "updated"


def _parsed(columns: list[str], chunk: list[tuple[int, list[str]]]) -> Parsed:
    rows: list[Row] = []
    failed: list[RowOutcome] = []
    for number, cells in chunk:
        try:
            rows.append(parse_row(columns, cells, number))
        except RowError as exc:
            failed.append(RowOutcome(number, "error", exc.reason))
    return rows, failed


def _chunked(
    rows: Iterator[tuple[int, list[str]]], size: int
) -> Iterator[list[tuple[int, list[str]]]]:
    while chunk := list(islice(rows, size)):
        yield chunk
