"""The garbage-collector settings `serve` applies once a service has started."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from crm_shared.app.settings import ServiceSettings

# In a child process: freezing and thresholds are process-wide, and this test process
# hosts many apps.
SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib, gc, json
    from fastapi import FastAPI
    from crm_shared.app import heap

    seen = {}

    @contextlib.asynccontextmanager
    async def starting(app):
        seen["threshold during start-up"] = gc.get_threshold()[0]
        seen["frozen during start-up"] = gc.get_freeze_count()
        yield

    async def main():
        app = FastAPI(lifespan=starting)
        heap.settle_after_startup(app, 12345)
        async with app.router.lifespan_context(app):
            seen["threshold after"] = gc.get_threshold()
            seen["frozen after"] = gc.get_freeze_count()

    gc.set_threshold(700, 10, 10)
    asyncio.run(main())
    print(json.dumps(seen))
    """
)


def test_serve_freezes_the_heap_and_sets_thresholds_once_started() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    seen = json.loads(out)
    assert seen["threshold during start-up"] == 700
    assert seen["frozen during start-up"] == 0
    assert seen["threshold after"] == [12345, 20, 100]
    assert seen["frozen after"] > 1000


def test_the_young_generation_threshold_is_a_setting() -> None:
    assert ServiceSettings(gc_gen0_threshold=0).gc_gen0_threshold == 0
    with pytest.raises(ValidationError):
        ServiceSettings(gc_gen0_threshold=-1)
