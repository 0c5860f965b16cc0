"""Reading an import file: columns, typed attributes, `;` lists, refused files and rows."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from contacts.handlers.imports import (
    MAX_LISTED_ERRORS,
    ImportFileError,
    ImportSummary,
    Row,
    RowError,
    RowOutcome,
    additive,
    count_rows,
    decode,
    parse_row,
    read_columns,
    read_csv,
    typed,
)


def text_source(text: str) -> Callable[[], io.StringIO]:
    return lambda: io.StringIO(text)


def test_header_names_map_to_profile_fields_whatever_their_case_or_plural() -> None:
    header = [" First_Name", "EMAIL", "emails", "Phone", "tags", "External_ID", "attr.plan"]
    assert read_columns(header) == [
        "first_name",
        "emails",
        "emails",
        "phones",
        "tags",
        "external_ids",
        "attr.plan",
    ]


def test_unknown_columns_refuse_the_whole_file_and_are_named() -> None:
    with pytest.raises(ImportFileError) as refused:
        read_columns(["email", "colour", "attr.Bad Name", "attr."])
    assert refused.value.unknown_columns == ["colour", "attr.Bad Name", "attr."]
    assert "'colour'" in refused.value.reason and "attr.<name>" in refused.value.reason


def test_a_single_value_column_given_twice_refuses_the_file() -> None:
    with pytest.raises(ImportFileError, match="more than once: city"):
        read_columns(["email", "city", "City"])


def test_attribute_cells_keep_numbers_and_booleans_typed() -> None:
    assert typed("5") == 5 and type(typed("5")) is int
    assert typed("-2.50") == -2.5
    assert typed("TRUE") is True and typed("false") is False
    # Leading zeros and exponents are not numbers someone typed as numbers.
    assert typed("007") == "007" and typed("1e3") == "1e3" and typed("gold") == "gold"


def test_a_row_becomes_a_normalised_patch_with_semicolon_lists() -> None:
    columns = ["emails", "phones", "tags", "external_ids", "attr.seats", "attr.plan"]
    cells = ["A@Example.com; b@example.com", "+44 20 7946 0958;", "vip; ;gold", "Shop:1;crm:2"]
    row = parse_row(columns, [*cells, "5", "gold"], 7)
    assert row == Row(
        7,
        {
            "emails": ["a@example.com", "b@example.com"],
            "phones": ["+442079460958"],
            "tags": ["vip", "gold"],
            "attributes": {"seats": 5, "plan": "gold"},
        },
        ["shop:1", "crm:2"],
    )
    assert row.identifiers == [
        "email:a@example.com",
        "email:b@example.com",
        "phone:+442079460958",
        "ext:shop:1",
        "ext:crm:2",
    ]


def test_empty_cells_change_nothing() -> None:
    row = parse_row(["emails", "first_name", "city", "attr.plan"], ["a@x.com", "", "  ", ""], 1)
    assert row.profile == {"emails": ["a@x.com"]}


def test_a_national_phone_is_read_in_the_rows_country() -> None:
    row = parse_row(["phones", "country"], ["020 7946 0958", "gb"], 1)
    assert row.profile == {"phones": ["+442079460958"], "country": "GB"}


@pytest.mark.parametrize(
    ("columns", "cells", "reason"),
    [
        (["emails"], ["nope"], "emails: 'nope' is not a valid email address"),
        (["emails", "time_zone"], ["a@x.com", "Mars/Olympus"], "time_zone: 'Mars/Olympus'"),
        (["external_ids"], ["noseparator"], "external_ids: 'noseparator' must read system:id"),
        (["first_name"], ["Ada"], "row: no email, phone or external_id"),
        (["emails"], ["a@x.com", "extra"], "row: 2 cells, but the header names 1 columns"),
        (["emails", "birthday"], ["a@x.com", "yesterday"], "birthday:"),
    ],
)
def test_a_bad_row_is_refused_naming_the_field(
    columns: list[str], cells: list[str], reason: str
) -> None:
    with pytest.raises(RowError) as refused:
        parse_row(columns, cells, 1)
    assert refused.value.reason.startswith(reason)


def test_a_byte_order_mark_does_not_hide_the_first_column() -> None:
    text = decode(b"\xef\xbb\xbfemail,city\r\na@x.com,Paris\r\n")
    columns, rows = read_csv(io.StringIO(text))
    assert columns == ["emails", "city"] and list(rows) == [(1, ["a@x.com", "Paris"])]
    # Read as plain UTF-8, the mark sticks to the first header cell; it is ignored there too.
    columns, _ = read_csv(io.StringIO("\ufeffemail\n"))
    assert columns == ["emails"]


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ImportFileError, match="not UTF-8"):
        decode("email\nzoë@example.com\n".encode("latin-1"))


def test_rows_are_numbered_from_the_first_data_row_and_blank_rows_are_skipped() -> None:
    text = 'email,city\na@x.com,"Paris\nCentre"\n\n,\nb@x.com,Lyon\n'
    _, rows = read_csv(io.StringIO(text))
    assert [n for n, _ in rows] == [1, 4]
    assert count_rows(text_source(text)) == 2


def test_an_empty_file_is_refused() -> None:
    for text in ("", "\n", ",,\n"):
        with pytest.raises(ImportFileError, match="first line must name the columns"):
            count_rows(text_source(text))


def test_lists_are_added_to_and_other_fields_replaced() -> None:
    profile = {"emails": ["a@x.com"], "tags": ["vip"], "city": "Paris", "phones": []}
    row = Row(1, {"emails": ["b@x.com", "a@x.com"], "tags": ["vip"], "city": "Lyon"}, [])
    assert additive(profile, row) == {
        "emails": ["a@x.com", "b@x.com"],
        "tags": ["vip"],
        "city": "Lyon",
    }


def test_the_summary_lists_at_most_1000_errors_and_counts_the_rest() -> None:
    summary = ImportSummary()
    summary.count([RowOutcome(1, "created"), RowOutcome(2, "unchanged")])
    summary.count(RowOutcome(n, "error", "emails: bad") for n in range(3, 3 + 1005))
    result = summary.as_json()
    assert (result["rows"], result["created"], result["unchanged"]) == (1007, 1, 1)
    assert result["failed"] == 1005 and len(result["errors"]) == MAX_LISTED_ERRORS
    assert result["more_errors"] == 5
    assert result["errors"][0] == {"row": 3, "status": "error", "error": "emails: bad"}
