"""docs/benchmarks.md and its plots (docs/bench-*.svg, pygal) from the benchmarks' numbers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

import pygal
from pygal.style import CleanStyle

from .harness import Sizes, percentile

POINTS = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]
RATIO_TARGET = 0.6  # ingest (web alone) ÷ floor


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def _check(ok: bool) -> str:
    return "✅ met" if ok else "❌ missed"


def _plot(path: Path, title: str, series: dict[str, list[float]], y_title: str) -> str:
    """A percentile curve per series (log scale): where a distribution matters."""
    chart = pygal.Line(
        js=[], style=CleanStyle, logarithmic=True, title=title, x_title="percentile",
        y_title=y_title, width=800, height=400, show_dots=True, dots_size=2,
    )  # fmt: skip
    chart.x_labels = [str(p) for p in POINTS]
    for name, values in series.items():
        if values:
            chart.add(name, [max(percentile(values, p), 0.001) for p in POINTS])
    chart.render_to_file(str(path))
    return path.name


def write(
    results: dict[str, Any], machine: dict[str, str], sizes: Sizes, docs: Path, whole: bool = True
) -> Path:
    """`docs`/benchmarks.md from a run's figures; `whole`: every benchmark ran (else the
    hand-written reading of the last whole run is left out: it is not about these figures)."""
    out: list[str] = []
    add = out.append
    mode = "full sizes (`make bench FULL=1`)" if sizes.full else "quick pass (`make bench`)"
    add("# Benchmarks\n")
    add(
        f"Written by `bench/` ({mode}) on {machine['date']}. Every figure below comes from this "
        "one run, on the machine described here, with the load generator on the same cores. "
        "Rerun `make bench FULL=1` on an idle machine for figures to compare with the targets; "
        "the quick pass uses smaller sizes (stated in each section) and only checks the harness.\n"
    )
    if not whole:
        add(
            "> **Some of the benchmarks only.** docs/benchmarks.md keeps the last run of them "
            "all; compare with it only figures from the same hour of the same host.\n"
        )
    if not sizes.full:
        add(
            "> **Quick pass: not the targets' sizes.** Compare with the targets only after "
            "`make bench FULL=1`.\n"
        )
    add("## Machine\n")
    add("| | |\n| --- | --- |")
    for key, value in machine.items():
        add(f"| {key} | {value} |")
    add("")
    add(_summary(results))
    # The reading of the last full run's misses, kept by hand next to the harness.
    analysis = Path(__file__).with_name("analysis.md")
    if whole and sizes.full and analysis.exists():
        add(analysis.read_text(encoding="utf-8"))
    if "ingest" in results:
        add(_ingest(results["ingest"], docs))
    if "precision" in results:
        add(_precision(results["precision"], docs))
    if "storm" in results:
        add(_storm(results["storm"]))
    if "pages" in results:
        add(_pages(results["pages"]))
    add(_memory(results))
    add(
        "## Running them\n\n`make bench` (quick pass, under 5 minutes) or `make bench FULL=1`. "
        "They need PostgreSQL (`BENCH_DATABASE_URL`, default "
        "`postgresql+psycopg://postgres@127.0.0.1:5432/whatsdesk_bench`: the database is "
        "dropped and made again), `redis-server` (a private one is started on a unix socket) "
        "and `wrk` (`make bench` installs Debian's package). Logs and the raw numbers "
        "(`results.json`) land in `instance/bench/`.\n"
    )
    target = docs / "benchmarks.md"
    target.write_text("\n".join(out), encoding="utf-8")
    return target


def _summary(results: dict[str, Any]) -> str:
    rows = [
        "## Against the targets\n",
        "| what | measured | target | |",
        "| --- | --- | --- | --- |",
    ]
    if "ingest" in results:
        r = results["ingest"]
        for label, run in (("web alone, run as the floor", r["web"]),
                           ("web with worker and sweep", r["desk"])):  # fmt: skip
            rows.append(
                f"| inbound ingest ({label}) | {run['rate']:,.0f} msg/s, p99 "
                f"{_ms(run['p99_ms'])} | ≥ 800 msg/s, p99 < 50 ms | "
                f"{_check(run['rate'] >= 800 and run['p99_ms'] < 50)} |"
            )
        rows.append(
            f"| ingest (web alone) ÷ floor | {_ratio(r)} | ≥ {RATIO_TARGET} | "
            f"{_check(_checked_ratio(r) >= RATIO_TARGET)} |"
        )
    for run in results.get("precision", []):
        late = run["lateness_ms"]
        if run["exact"]:
            ok = late.get("p99", 1e9) <= 50 and late.get("max", 1e9) <= 250 and not run["early"]
            rows.append(
                f"| SLA precision (exact jobs) | p99 {_ms(late.get('p99'))}, max "
                f"{_ms(late.get('max'))}, {run['early']} early | p99 ≤ 50 ms, max ≤ 250 ms, none "
                f"early | {_check(ok)} |"
            )
        else:
            rows.append(
                f"| SLA precision (sweep alone) | p99 {_ms(late.get('p99'))}, max "
                f"{_ms(late.get('max'))} | peers: up to 300 s | "
                f"{_check(late.get('max', 1e9) <= 300_000)} |"
            )
    if "storm" in results:
        s = results["storm"]
        ok = (
            s["within_10s"]
            and s["messages_sent"] < s["alerts"]
            and (s["max_per_second"] <= s["rate_limit"])
        )
        rows.append(
            f"| alert storm | max lateness {_ms(s['lateness_ms'].get('max'))}; "
            f"{s['messages_sent']} messages for {s['alerts']} alerts; at most "
            f"{s['max_per_second']}/s | all within 10 s; digests; ≤ {s['rate_limit']:g}/s | "
            f"{_check(ok)} |"
        )
    if "pages" in results:
        p = results["pages"]
        for name in ("first page", "by stage", "mine"):
            q = p["queue"][name]
            rows.append(
                f"| `/queue` {name} | p95 {_ms(q.get('p95'))} | p95 < 50 ms | "
                f"{_check(q.get('p95', 1e9) < 50)} |"
            )
        for name, limit in (("dashboard", 200), ("30-day report", 1000)):
            b = p["boards"][name]
            if b.get("missing"):
                rows.append(
                    f"| {name} | not measured: the page does not exist yet | < {limit} ms | |"
                )
            else:
                rows.append(
                    f"| {name} | p50 {_ms(b['p50'])}, p95 {_ms(b['p95'])} | < {limit} ms | "
                    f"{_check(b['p95'] < limit)} |"
                )
        nothing = p["sweep_open"][-1]
        rows.append(
            f"| sweep, {nothing['open']:,} open, nothing due | p50 {_ms(nothing['p50'])} | "
            f"< 10 ms | {_check(nothing['p50'] < 10)} |"
        )
    return "\n".join(rows) + "\n"


# The ingest runs: results key, label.
INGEST_RUNS = (
    ("floor", "floor (one row, one job)"),
    ("web", "desk: web alone"),
    ("desk", "desk: web, worker and sweep"),
)


def _checked_ratio(r: dict[str, Any]) -> float:
    """The ratio checked against the target: the median of the rounds; results from before
    the rounds have the long runs' alone."""
    return median(x["ratio"] for x in r["rounds"]) if r.get("rounds") else float(r["ratio"])


def _ratio(r: dict[str, Any]) -> str:
    if not r.get("rounds"):
        return f"{r['ratio']:.2f}"
    return (
        f"{_checked_ratio(r):.2f} (median of {len(r['rounds'])} rounds; long runs {r['ratio']:.2f})"
    )


def _rounds(r: dict[str, Any]) -> list[str]:
    if not r.get("rounds"):
        return []
    rows = [
        "",
        f"The ratio in rounds: the floor and the desk's web both up, {r['round_seconds']} s "
        "of each in turn (the side that goes first alternates), each round's ratio from two "
        "runs seconds apart, so the host's drift within the run weighs less. The median is "
        "the ratio checked against the target.\n",
        "| round | first | floor, req/s | desk, msg/s | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, x in enumerate(r["rounds"], 1):
        rows.append(
            f"| {n} | {x['first']} | {x['floor']:,.0f} | {x['desk']:,.0f} | {x['ratio']:.2f} |"
        )
    return rows


def _ingest(r: dict[str, Any], docs: Path) -> str:
    plot = _plot(
        docs / "bench-ingest.svg",
        "Webhook latency (ms) under load",
        {label: [ms for _p, ms in r[key]["percentiles_ms"]] for key, label in INGEST_RUNS},
        "ms",
    )
    statements = r["statements_per_message"]
    rows = [
        "## Inbound ingest\n",
        f"`wrk -t1 -c{r['connections']} -d{r['seconds']}s` replaying pre-signed webhooks (each "
        "a distinct message; one in five from a new number, opening a conversation, the other "
        "four from customers whose conversation is open, drawn at random — at every point of "
        "the run) into the Procfile's `web` (gunicorn, 2 workers × 4 threads, access log on), "
        "on PostgreSQL. The floor is a bare Flask endpoint under the same gunicorn command line "
        "that inserts one row and enqueues one RQ job, which no worker takes. The desk runs "
        "twice: its `web` alone, measured as the floor is (the jobs it queues wait in Redis), "
        "then with the Procfile's `worker` and `sweep` carrying them out (sending each "
        "acknowledgement, firing timers) on the same cores. The floor and the desk's `web` "
        "alone are up together, each idle while the other is measured. Each server has a "
        "3-second warm-up from numbers of its own first.\n",
        "| | requests | msg/s | p50 | p99 | max | errors | stored | cards |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in INGEST_RUNS:
        x = r[key]
        counts = f"{x['stored']:,} | {x['cards']:,}" if "stored" in x else "– | –"
        rows.append(
            f"| {label} | {x['requests']:,} | {x['rate']:,.0f} | {_ms(x['p50_ms'])} | "
            f"{_ms(x['p99_ms'])} | {_ms(x['max_us'] / 1000)} | {x['errors']} | {counts} |"
        )
    rows += _ingest_cpu(r)
    rows += _rounds(r)
    rows += _kinds(r)
    kind_runs = [x for name in KIND_LABELS for x in r.get("kinds", {}).get(name, [])]
    repeated = sum(x["repeated"] for x in (r["web"], r["desk"], *r.get("rounds", []), *kind_runs))
    rows += [
        "",
        f"Ratio desk (web alone) ÷ floor: **{_ratio(r)}**, both measured alike; with "
        f"the worker and sweep on the same cores the desk does "
        f"{r['desk']['rate'] / r['floor']['rate'] if r['floor']['rate'] else 0:.2f} of the "
        f"floor. {repeated} requests repeated an earlier message. One inbound message costs "
        f"**{statements['new']:.1f} SQL statements** when it opens a conversation and "
        f"**{statements['open']:.1f}** on an open one, besides BEGIN and COMMIT (counted "
        "in-process): one read of whether the sid is stored, whether the sender is staff "
        "or a known number, and their open card, locked; on an open conversation then the "
        "contact's latest and the message (a one-word message, which may be a command, "
        "also reads its pipeline); for a new conversation the contact, the pipeline, the "
        "team menu setting, the card, its stage visit, the customer's place and wait, then "
        "the message and the bot's answer.\n",
        f"![latency percentiles]({plot})\n",
    ]
    return "\n".join(rows)


# The desk's kinds of message measured alone (`ingest.by_kind`), in the table's order.
KIND_LABELS = {"open": "a message on an open conversation", "new": "a message opening one"}


def _kinds(r: dict[str, Any]) -> list[str]:
    """Each kind of message alone against the floor: the rounds' medians, and what the two
    costs mean for the mix's ratio."""
    kinds = r.get("kinds")
    if not kinds:
        return []
    floor = kinds["floor"]
    groups = [g for g in CPU_GROUPS if any(g in x["cpu_ms"] for x in floor)]
    rows = [
        "",
        f"By kind of message: the floor, then messages on the conversations the mix opened, "
        f"then messages from numbers never seen before, each opening a conversation — each "
        f"alone for {r['round_seconds']} s, in {len(floor)} rounds (the order reversed every "
        "other round). Each figure is the median of its rounds (the total, the sum of the "
        "medians before it); a kind's ratio is the median of its rounds' ratios to the floor "
        "of the same round. CPU per request in milliseconds, as above.\n",
        "| | msg/s | ÷ floor | p99 | errors | " + " | ".join(groups) + " | total | cores busy |",
        "| --- " * (len(groups) + 7) + "|",
    ]
    totals: dict[str, float] = {}
    for name, label in (("floor", dict(INGEST_RUNS)["floor"]), *KIND_LABELS.items()):
        runs = kinds[name]
        spent = {g: median(x["cpu_ms"].get(g, 0.0) for x in runs) for g in groups}
        totals[name] = sum(spent.values())
        pairs = zip(runs, floor, strict=True)
        ratio = median(x["rate"] / f["rate"] if f["rate"] else 0.0 for x, f in pairs)
        rows.append(
            f"| {label} | {median(x['rate'] for x in runs):,.0f} | {ratio:.2f} | "
            f"{_ms(median(x['p99_ms'] for x in runs))} | {sum(x['errors'] for x in runs)} | "
            + _cpu_cells(spent, groups)
            + f" | {totals[name]:.2f} | {median(x['cpu_busy'] for x in runs):.0%} |"
        )
    share = 1 / r["new_every"]
    rows += ["", _mix_needs(totals["floor"], totals["open"], totals["new"], share)]
    return rows


def _mix_needs(floor: float, open_: float, new: float, share: float) -> str:
    """What the kinds' CPU per request means, by CPU, for the mix (`share` of messages
    opening a conversation) against the target ratio: where the cores are the limit, the
    ratio of the rates is the ratio of the CPU per request."""
    mix = (1 - share) * open_ + share * new
    budget = floor / RATIO_TARGET
    said = (
        f"By CPU, at the runs' mix (one message in {round(1 / share)} opens a conversation), "
        f"these costs come to {mix:.2f} ms a message, a ratio of {floor / mix:.2f}. "
        f"{RATIO_TARGET} of the floor's CPU is {budget:.2f} ms a message on average"
    )
    if open_ > budget:
        return (
            f"{said}; a message on an open conversation alone costs {open_:.2f} ms, so the "
            f"target is out of reach at this mix even were opening a conversation to cost no "
            "more than joining one."
        )
    new_budget = (budget - (1 - share) * open_) / share
    return (
        f"{said}: with messages on open conversations at {open_:.2f} ms, one opening a "
        f"conversation may cost at most {new_budget:.2f} ms (it costs {new:.2f})."
    )


def _cpu_cells(cpu: dict[str, float], groups: Iterable[str]) -> str:
    """A row's CPU per request by process group, "–" for a group not in the run."""
    return " | ".join(f"{cpu[g]:.2f}" if g in cpu else "–" for g in groups)


# Who spends the CPU of an ingest run, in the table's order.
CPU_GROUPS = ("web", "worker", "sweep", "PostgreSQL", "Redis", "load generator")


def _ingest_cpu(r: dict[str, Any]) -> list[str]:
    """CPU per request by process group, measured from /proc around each run."""
    if not all("cpu_ms" in r[key] for key, _label in INGEST_RUNS):
        return []
    rows = [
        "",
        "CPU per request, by process (milliseconds of CPU time over the run ÷ requests "
        "served, read from /proc before and after it). PostgreSQL is the whole local "
        "server, otherwise idle during a run; the load generator is wrk. The worker's "
        "figure counts the jobs it carried out during the run: some of the warm-up's, and "
        "not those still queued when wrk stopped. The last column is the share of the "
        "cores' time these processes used: near 100 %, the cores are the limit, and the "
        "rate is what the machine has divided by the total.\n",
        "| | " + " | ".join(CPU_GROUPS) + " | total | cores busy |",
        "| --- " * (len(CPU_GROUPS) + 3) + "|",
    ]
    for key, label in INGEST_RUNS:
        cpu = r[key]["cpu_ms"]
        rows.append(
            f"| {label} | " + _cpu_cells(cpu, CPU_GROUPS) + f" | {sum(cpu.values()):.2f} | "
            f"{r[key]['cpu_busy']:.0%} |"
        )
    return rows


def _precision(runs: list[dict[str, Any]], docs: Path) -> str:
    plot = _plot(
        docs / "bench-sla-lateness.svg",
        "SLA event lateness (ms): recorded − due",
        {("exact jobs" if r["exact"] else "sweep alone"): r["distribution_ms"] for r in runs},
        "ms",
    )
    first = runs[0]
    rows = [
        "## SLA precision\n",
        f"{first['deadlines']:,} cards whose breach deadlines fall within {first['window_s']} s "
        f"({first['arriving_per_s']:.0f} per second), each telling three supervisors (through "
        f"their digests); the Procfile's worker × {first['workers']} and sweep. Lateness = "
        "`fired_at − due_at` of each recorded event. *Exact jobs*: the desk's clock jobs, one per "
        "second of deadlines, each firing its events at their instants. *Sweep alone*: the "
        "same run with no timer job scheduled at "
        "all (`bench/sweep_only.py` switches them off, including the sweep's re-arming), so the "
        "sweep (every 5 s) fires everything.\n",
        "| | recorded | early | p50 | p95 | p99 | max | events/s kept up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        late = r["lateness_ms"]
        rows.append(
            f"| {'exact jobs' if r['exact'] else 'sweep alone'} | {r['recorded']:,} | "
            f"{r['early']} | {_ms(late.get('p50'))} | {_ms(late.get('p95'))} | "
            f"{_ms(late.get('p99'))} | {_ms(late.get('max'))} | {r['events_per_s']:.0f} |"
        )
    rows += [
        "",
        "When the workers record fewer events per second than arrive, a backlog builds and "
        "lateness grows with it: the last column is what the workers sustained over the run.\n",
        f"![lateness percentiles]({plot})\n",
    ]
    return "\n".join(rows)


def _storm(s: dict[str, Any]) -> str:
    late = s["lateness_ms"]
    per = ", ".join(f"{to.removeprefix('whatsapp:')}: {n}" for to, n in s["per_supervisor"].items())
    return "\n".join(
        [
            "## Alert storm\n",
            f"{s['deadlines']:,} breach deadlines within one second, three supervisors, "
            "digest window 30 s, `SEND_RATE_LIMIT` 80; messages go to a Twilio-compatible "
            "server on this machine (`tests/twilio_server.py`) that notes when each arrives.\n",
            "| | |\n| --- | --- |",
            f"| events recorded | {s['recorded']:,} of {s['deadlines']:,} |",
            f"| lateness p50 / p99 / max | {_ms(late.get('p50'))} / {_ms(late.get('p99'))} / "
            f"{_ms(late.get('max'))} |",
            f"| alerts recorded | {s['alerts']:,} ({s['bundled']:,} went out inside digests) |",
            f"| WhatsApp messages sent | {s['messages_sent']} ({per}) |",
            f"| most messages in any second | {s['max_per_second']} (limit {s['rate_limit']:g}) |",
            f"| all sent, after the last event | {s['settled']} ({s['seconds_to_settle']:.0f} s) |",
            "",
        ]
    )


def _pages(p: dict[str, Any]) -> str:
    rows = [
        "## Queue page, dashboard and reports\n",
        f"{p['open_cards']:,} open cards, {p['messages']:,} messages and {p['history_days']} days "
        f"of history ({p['history_visits']:,} finished stage visits) on PostgreSQL (loaded in "
        f"{p['loaded_in_s']:.0f} s with COPY). Sequential GETs by a logged-in agent (the "
        "dashboard and report by a supervisor) through the Procfile's `web`, after two warm-up "
        "requests; times measured by the client, whole round trip.\n",
        "| page | n | p50 | p95 | p99 | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, q in [*p["queue"].items(), *p["boards"].items()]:
        if q.get("missing"):
            rows.append(f"| {name} | – | not measured: the page does not exist yet | | | |")
            continue
        rows.append(
            f"| {name} | {q['n']} | {_ms(q['p50'])} | {_ms(q['p95'])} | {_ms(q['p99'])} | "
            f"{_ms(q['max'])} |"
        )
    rows += ["", "### Query plans of the queue\n",
             "`EXPLAIN (ANALYZE)` of each statement `desk.queue_page` runs, with the same "
             "parameters.\n"]  # fmt: skip
    for name, plans in p["plans"].items():
        uses = all("Seq Scan on cards" not in plan for plan in plans)
        rows.append(
            f"<details><summary>{name}: "
            f"{'index scans on cards' if uses else 'a sequential scan on cards'}</summary>\n"
        )
        for plan in plans:
            rows.append("```\n" + plan + "\n```\n")
        rows.append("</details>\n")
    rows += [
        "## Sweep\n",
        "`jobs.reconcile` in-process, 20 times after one that re-arms what Redis lacks. First "
        "with nothing due as the open cards grow, then with timers due within the five-minute "
        "look-ahead (each checked against Redis):\n",
        "| open cards | due soon | p50 | p95 | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in [*p["sweep_open"], *p["sweep_due"]]:
        rows.append(
            f"| {row['open']:,} | {row['due_soon']:,} | {_ms(row['p50'])} | {_ms(row['p95'])} | "
            f"{_ms(row['max'])} |"
        )
    rows += ["", "Plan of the due-events query:\n", "```\n" + p["sweep_plan"] + "\n```\n"]
    return "\n".join(rows)


def _memory(results: dict[str, Any]) -> str:
    rows = ["## Memory\n", "| what | value |", "| --- | --- |"]
    if "ingest" in results:
        d = results["ingest"]["desk"]
        rows.append(
            f"| RSS of a web worker (gunicorn), after the ingest run | {d['rss_web_mib']:.0f} MiB |"
        )
        rows.append(
            f"| RSS of an RQ worker, after the ingest run | {d['rss_worker_mib']:.0f} MiB |"
        )
    for run in results.get("precision", []):
        if run["exact"]:
            rows.append(
                "| RSS of an RQ worker, after the precision run | "
                f"{run['rss_worker_mib']:.0f} MiB |"
            )
    if "redis_memory" in results:
        m = results["redis_memory"]
        for name, row in (("each in a second of its own", "one per second"),
                          ("all within one minute", "within a minute")):  # fmt: skip
            r = m[row]
            rows.append(
                f"| Redis bytes per scheduled deadline, {m['deadlines']:,} deadlines {name} "
                f"({r['jobs']:,} clock jobs) | {r['bytes'] / m['deadlines']:,.0f} B "
                f"({r['bytes'] / r['jobs']:,.0f} B per clock job) |"
            )
    if "pages" in results:
        rows.append(
            "| RSS of a web worker, after the page runs | "
            f"{results['pages']['rss_web_mib']:.0f} MiB |"
        )
    return "\n".join(rows) + "\n"
