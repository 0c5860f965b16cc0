"""The human-readable tables of the benchmark runs (the JSON files have everything)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROCESSES = ("contacts", "lifecycle", "scoring", "broker", "bench")


def num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators and `digits` decimals; `-` for None."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _row(label: str, count: Any, seconds: Any, rate: Any, ratio: Any) -> str:
    return f"  {label:<48} {num(count):>9} {num(seconds, 2):>9} {num(rate):>11} {ratio:>9}"


def _ratio(rate: float | None, baseline: float | None) -> str:
    return f"{100 * rate / baseline:.1f}%" if rate and baseline else "-"


def _folded_by(result: dict[str, Any]) -> str:
    """`lifecycle + scoring`: the services an end-to-end phase waited for."""
    phase = result.get("http") or result.get("kafka") or {}
    return " + ".join(phase.get("folds") or ["lifecycle"])


def throughput_lines(result: dict[str, Any]) -> list[str]:
    folded = _folded_by(result)
    base = result.get("baseline", {})
    produce, consume = base.get("produce", {}), base.get("consume", {})
    ref = produce.get("rate")
    lines = [f"  {'phase':<48} {'events':>9} {'seconds':>9} {'events/s':>11} {'vs raw':>9}"]
    if produce:
        lines.append(
            _row(
                "raw aiokafka produce (acks=all)",
                produce["messages"],
                produce["seconds"],
                ref,
                "100.0%",
            )
        )
    if consume:
        lines.append(
            _row(
                "raw aiokafka consume (fetch wait 10ms)",
                consume["messages"],
                consume["seconds"],
                consume["rate"],
                "-",
            )
        )
    http = result.get("http")
    if http:
        lines.append(
            _row(
                "HTTP: contacts ingestion only",
                http["events"],
                http["ingest_seconds"],
                http["ingest_rate"],
                _ratio(http["ingest_rate"], ref),
            )
        )
        lines.append(
            _row(
                f"HTTP: POST -> {folded} applied",
                http["events"],
                http["seconds"],
                http["rate"],
                _ratio(http["rate"], ref),
            )
        )
    kafka = result.get("kafka")
    if kafka:
        lines.append(
            _row(
                "Kafka: produce to crm.inbound",
                kafka["events"],
                kafka["produce_seconds"],
                kafka["produce_rate"],
                _ratio(kafka["produce_rate"], ref),
            )
        )
        lines.append(
            _row(
                f"Kafka: inbound -> {folded} applied",
                kafka["events"],
                kafka["seconds"],
                kafka["rate"],
                _ratio(kafka["rate"], ref),
            )
        )
    for name in ("http", "kafka"):
        phase = result.get(name)
        if phase and not phase["complete"]:
            expected = phase.get("lifecycle_expected", phase["events"])
            lines.append(f"  !! {name}: {folded} applied only {phase['applied']} of {expected}")
    return lines


def milestone_lines(result: dict[str, Any]) -> list[str]:
    warm = result.get("warm_up", {})
    per_customer = warm.get("http_applied_per_new_customer")
    lines = []
    if per_customer:
        lines.append(
            f"  (lifecycle applies {per_customer:g} events for the first purchase of a new "
            "customer: the purchase and what contacts adds; the phases wait for all of them)"
        )
    for name in ("http", "kafka"):
        phase = result.get(name)
        if not phase:
            continue
        first = "ingest" if name == "http" else "produce"
        parts = [f"{first} done {num(phase.get(first + '_seconds'), 2)} s"]
        if name == "kafka":
            parts.append(f"contacts consumed all {num(phase.get('contacts_consumed_at_s'), 2)} s")
        parts.append(f"contacts published all {num(phase.get('contacts_published_at_s'), 2)} s")
        folds = phase.get("folds") or {"lifecycle": {"seconds": phase.get("seconds")}}
        for service, fold in folds.items():
            parts.append(f"{service} applied all {num(fold.get('seconds'), 2)} s")
        lines.append(f"  {name:<6} " + ", ".join(parts))
    return lines


def server_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("http", "kafka", "latency"):
        server = (result.get(name) or {}).get("server")
        if not server:
            continue
        parts = []
        for service in ("contacts", "lifecycle", "scoring"):
            if f"{service}_batches" in server:
                parts.append(
                    f"{service} {server[f'{service}_batches']} batches of "
                    f"{server[f'{service}_events_per_batch']} events, "
                    f"{server[f'{service}_batch_ms_mean']} ms each"
                )
        if "contacts_posts" in server:
            parts.append(
                f"{server['contacts_posts']} POSTs, {server['contacts_post_server_ms_mean']} ms "
                "each in contacts"
            )
        lines.append(f"  {name:<8} " + "; ".join(parts))
    return lines


def latency_lines(result: dict[str, Any]) -> list[str]:
    lat = result.get("latency")
    if not lat:
        return []
    seen, ack = lat["post_to_stage_ms"], lat["post_ack_ms"]
    head = (
        f"  {lat['events']} single POSTs at {num(lat['target_rate'])}/s "
        f"(achieved {num(lat['achieved_send_rate'])}/s); every {lat.get('poll_every', 1)}"
        f" polled every {lat['poll_interval_ms']} ms, at most {num(lat.get('max_poll_rate'))} "
        f"GETs/s ({lat['stage_polls']} GETs); visible {lat['visible']} of "
        f"{lat.get('polled', lat['events'])}, errors {lat['errors']}"
    )
    lines = [
        head,
        f"  {'ms (- = never seen)':<28} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'max':>8}",
    ]
    rows = (
        ("POST -> lifecycle recorded", lat.get("post_to_recorded_ms")),
        ("POST -> stage read (polled)", seen),
        ("POST acknowledged", ack),
        ("one stage GET", lat.get("stage_get_ms")),
    )
    timeout = "-"
    for label, dist in rows:
        if dist:
            values = " ".join(
                f"{timeout if dist[k] is None else f'{dist[k]:.1f}':>8}"
                for k in ("p50", "p95", "p99", "mean", "max")
            )
            lines.append(f"  {label:<28} {values}")
    return lines


def cpu_lines(result: dict[str, Any]) -> list[str]:
    rows = [
        ("raw produce", result.get("baseline", {}).get("produce", {}).get("cpu")),
        ("raw consume", result.get("baseline", {}).get("consume", {}).get("cpu")),
        ("idle (nothing sent)", (result.get("idle") or {}).get("cpu")),
        ("HTTP end to end", (result.get("http") or {}).get("cpu")),
        ("Kafka end to end", (result.get("kafka") or {}).get("cpu")),
        ("latency", (result.get("latency") or {}).get("cpu")),
    ]
    return cpu_table(rows, PROCESSES) + cost_lines(result)


def cost_lines(result: dict[str, Any]) -> list[str]:
    """CPU ms per event of each process in the end-to-end phases: what a target rate needs
    (2 cores give 2,000 ms a second: 5,000 events/s is 0.4 ms an event, all included)."""
    lines = []
    for name, label in (("http", "HTTP"), ("kafka", "Kafka")):
        phase = result.get(name) or {}
        cpu, events = phase.get("cpu") or {}, phase.get("events")
        if not cpu or not events:
            continue
        ours = [p for p in PROCESSES if p in cpu]
        per_event = {p: 1000 * cpu[p]["cpu_s"] / events for p in ours}
        cells = "".join(
            f"{per_event[p]:>14.3f}" if p in per_event else f"{'-':>14}" for p in PROCESSES
        )
        total = sum(per_event.values())
        lines.append(f"  {label + ' CPU ms/event':<20}{cells}{'all ' + format(total, '.2f'):>14}")
    return lines


def cpu_table(
    rows: Sequence[tuple[str, dict[str, Any] | None]], processes: Sequence[str]
) -> list[str]:
    """% of one core each process used, a row per (label, CpuMeter.stop() result)."""
    # `others`: the rest of the machine (other work on a shared machine, py-spy).
    columns = [*processes, "others"]
    lines = [f"  {'% of one core':<20}" + "".join(f"{p:>14}" for p in columns)]
    for label, cpu in rows:
        if cpu:
            cells = "".join(f"{num(cpu.get(p, {}).get('core_pct')):>14}" for p in columns)
            lines.append(f"  {label:<20}{cells}")
    return lines


def memory_lines(
    result: dict[str, Any], processes: Sequence[str] = PROCESSES, *, earlier: str = ""
) -> list[str]:
    """Peak and current RSS at the end; with `earlier` (a key of the result holding an
    earlier reading), the peak by then too."""
    memory, before = result.get("memory", {}), result.get(earlier) or {}
    extra = f" {'peak by then':>13}" if before else ""
    lines = [f"  {'MiB':<20} {'peak RSS':>10} {'RSS now':>10}{extra}"]
    for name in processes:
        mem = memory.get(name)
        if mem:
            then = f" {num(before.get(name, {}).get('hwm_mib'), 1):>13}" if before else ""
            lines.append(
                f"  {name:<20} {num(mem.get('hwm_mib'), 1):>10} {num(mem.get('rss_mib'), 1):>10}"
                + then
            )
    return lines


def profile_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for phase, processes in (result.get("profile") or {}).items():
        for name, prof in processes.items():
            lines += profile_of(f"{phase} phase, {name}", prof)
    return lines


def profile_of(title: str, prof: dict[str, Any]) -> list[str]:
    if "error" in prof:
        return [f"  {title}: py-spy failed: {prof['error'][-200:]}"]
    packages = ", ".join(f"{k} {v}%" for k, v in prof["self_by_package"][:8])
    # `thread (123): Thread-2 (_connection_worker_thread)` -> `Thread-2 (_connection_...)`
    threads = ", ".join(f"{k.split(': ', 1)[-1]} {v}%" for k, v in prof.get("threads", [])[:4])
    project = [
        (k, v)
        for k, v in prof["inclusive_project_functions"]
        if not k.startswith(_ENTRY_POINTS)  # on every stack of the main thread
    ]
    return [
        f"  {title} ({prof['samples']} samples, {prof['file']})",
        f"    threads: {threads}",
        "    stacks starting at: " + ", ".join(f"{k} {v}%" for k, v in prof.get("roots", [])[:4]),
        f"    self time by package: {packages}",
        "    self time by function:",
        *(f"      {v:5.1f}%  {k}" for k, v in prof["self_by_function"][:10]),
        "    inclusive, project code:",
        *(f"      {v:5.1f}%  {k}" for k, v in project[:12]),
    ]


_ENTRY_POINTS = ("<module> (", "cli (", "service_cli (")


def print_report(result: dict[str, Any]) -> None:
    s = result.get("settings", {})
    sizes = result.get("event_bytes", {})
    print(
        f"\nCRM throughput ({result.get('machine', {}).get('cpus')} CPUs): {num(s.get('events'))} "
        f"events over {num(s.get('customers'))} customers, HTTP batches of {s.get('batch_size')} "
        f"x{s.get('concurrency')}, {s.get('partitions')} partitions; event "
        f"{sizes.get('http_json_bytes')} B posted, {sizes.get('published_bytes')} B published"
    )
    sections = [
        ("throughput", throughput_lines(result)),
        ("milestones (seconds after the first send)", milestone_lines(result)),
        ("server side (mean per consumed batch / per POST)", server_lines(result)),
        ("latency", latency_lines(result)),
        ("CPU per phase", cpu_lines(result)),
        (
            "memory (peak by then: after the HTTP and Kafka phases)",
            memory_lines(result, earlier="memory_after_throughput"),
        ),
        ("profile (share of samples)", profile_lines(result)),
    ]
    for title, lines in sections:
        if len(lines) > 1 or (lines and title.startswith(("milestones", "profile", "server"))):
            print(f"\n{title}\n" + "\n".join(lines))
    if "aborted" in result:
        print(f"\nABORTED: {result['aborted'][:500]}")
