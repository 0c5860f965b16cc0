"""Parts of the `crm` ops tool that need no service: progress output, reading /metrics,
where the configuration comes from."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from crm_shared.ops.cli import build_parser
from crm_shared.ops.command import UsageError
from crm_shared.ops.config import resolve
from crm_shared.ops.metrics import Lag, parse
from crm_shared.ops.progress import Bar
from crm_shared.ops.tail import _quote

METRICS = """\
# TYPE crm_consumer_lag gauge
crm_consumer_lag{consumer="customer-events",partition="1",topic="p.crm.customer-events"} 7.0
crm_consumer_lag{consumer="customer-events",partition="0",topic="p.crm.customer-events"} 0.0
# TYPE crm_outbox_backlog gauge
crm_outbox_backlog 12.0
# TYPE crm_outbox_parked gauge
crm_outbox_parked 1.0
# TYPE crm_outbox_published_position gauge
crm_outbox_published_position 40.0
# TYPE crm_events_published counter
crm_events_published_total{topic="p.crm.lifecycle"} 30.0
crm_events_published_total{topic="p.crm.heartbeat"} 3.0
# TYPE crm_relay_parked counter
crm_relay_parked_total 4.0
# TYPE crm_relay_failures counter
crm_relay_failures_total 2.0
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_metrics_give_lag_per_partition_and_the_outbox_figures() -> None:
    snapshot = parse("lifecycle", METRICS)

    assert snapshot.lags == (
        Lag("customer-events", "p.crm.customer-events", 0, 0),
        Lag("customer-events", "p.crm.customer-events", 1, 7),
    )
    assert (snapshot.outbox_backlog, snapshot.outbox_parked) == (12, 1)
    assert snapshot.published_position == 40
    assert (snapshot.published_total, snapshot.parked_total, snapshot.relay_failures) == (33, 4, 2)


def test_a_bar_off_a_terminal_prints_whole_lines_and_only_now_and_then() -> None:
    out = io.StringIO()
    bar = Bar(100, label="work", out=out, plain_every_s=3600)

    for done in range(0, 101, 10):
        bar.update(done)
    bar.finish()

    assert "\r" not in out.getvalue()
    [only] = out.getvalue().splitlines()
    assert only.startswith("work [" + "#" * Bar.WIDTH + "] 100/100 100%")


def test_a_bar_on_a_terminal_redraws_in_place_and_ends_the_line() -> None:
    out = Terminal()
    bar = Bar(10, label="work", out=out)

    bar.update(5)
    bar.finish()

    assert out.getvalue().startswith("\rwork [" + "#" * 15)
    assert out.getvalue().count("\n") == 1 and out.getvalue().endswith("\n")


def parsed(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([*argv, "lag"])


def test_options_win_over_the_environment_which_wins_over_the_token_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-token").write_text("from-file\n")
    env = {"CRM_TOKEN": "from-env", "CRM_LIFECYCLE_URL": "http://life:1/", "CRM_TOPIC_PREFIX": "e."}

    given = resolve(parsed("--token", "given", "--topic-prefix", "o."), env, tmp_path)
    from_env = resolve(parsed(), env, tmp_path)
    from_file = resolve(parsed(), {}, tmp_path)

    assert (given.token, given.topic_prefix) == ("given", "o.")
    assert (from_env.token, from_env.topic_prefix) == ("from-env", "e.")
    assert from_env.url("lifecycle") == "http://life:1"
    assert from_env.url("scoring") == "http://127.0.0.1:8003"
    assert from_file.token == "from-file"
    assert from_file.token_source == str(tmp_path / "var" / "dev-token")


def test_an_option_after_the_command_counts_too() -> None:
    args = build_parser().parse_args(["--bootstrap", "a:1", "lag", "--topic-prefix", "x."])

    config = resolve(args, {}, Path("/nonexistent"))

    assert (config.bootstrap, config.topic_prefix, config.token) == ("a:1", "x.", None)
    with pytest.raises(UsageError, match="no bearer token"):
        config.require_token()


def test_tail_quotes_only_values_that_would_not_read_as_one_word() -> None:
    assert _quote("cust-42") == "cust-42"
    assert _quote("not valid JSON") == '"not valid JSON"'
    assert _quote("") == '""'
