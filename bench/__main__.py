"""`python -m bench [--full] [names…]`: run the benchmarks, write docs/benchmarks.md (or,
for some of them, instance/bench/partial/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from whatsdesk.config import PROJECT_ROOT

from . import ingest, pages, report, timers
from .harness import WORK, Sizes, Stores, host_speed, machine

NAMES = ("ingest", "precision", "storm", "pages")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", default=os.environ.get("FULL") == "1")
    parser.add_argument(
        "--report",
        action="store_true",
        help="write docs/benchmarks.md again from the last run's figures (after editing "
        "bench/analysis.md), running nothing",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {NAMES}; default all")
    args = parser.parse_args()
    if args.report:
        return report_again()
    sizes = Sizes.pick(args.full)
    chosen = args.names or NAMES
    unknown = set(chosen) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}: choose from {NAMES}")
    facts = machine()
    results: dict[str, Any] = {}
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    with Stores() as stores:
        facts.update(host_speed(stores.database_url))
        for name in chosen:
            print(f"bench: {name}…", flush=True)
            if name == "ingest":
                results[name] = ingest.run(stores, sizes)
            elif name == "precision":
                results[name] = [timers.precision(stores, sizes, exact) for exact in (True, False)]
                results["redis_memory"] = timers.redis_memory(stores)
            elif name == "storm":
                results[name] = timers.storm(stores, sizes)
            elif name == "pages":
                results[name] = pages.run(stores, sizes)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["run took"] = f"{time.monotonic() - started:.0f} s"
    written = save(results, facts, sizes, every=set(chosen) == set(NAMES))
    print(f"bench: wrote {written} in {facts['run took']}")
    return 0


def save(
    results: dict[str, Any],
    facts: dict[str, Any],
    sizes: Sizes,
    every: bool,
    work: Path = WORK,
    docs: Path = PROJECT_ROOT / "docs",
) -> Path:
    """Keep a run's figures and write its report: a run of `every` benchmark in `work` and
    `docs` (docs/benchmarks.md, every figure from one run); a run of some of them in
    `work`/partial, its report beside them, leaving the last whole run's figures and
    document as they are."""
    if not every:
        work = docs = work / "partial"
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, default=str, indent=1), "utf-8")
    (work / "machine.json").write_text(json.dumps({"full": sizes.full, **facts}, indent=1), "utf-8")
    return report.write(results, facts, sizes, docs, whole=every)


def report_again(work: Path = WORK, docs: Path = PROJECT_ROOT / "docs") -> int:
    """docs/benchmarks.md from the figures and machine the last run saved in `work`."""
    try:
        results = json.loads((work / "results.json").read_text("utf-8"))
        facts = json.loads((work / "machine.json").read_text("utf-8"))
    except FileNotFoundError as exc:
        raise SystemExit(f"bench: no earlier run to report ({exc.filename} is missing)") from exc
    sizes = Sizes.pick(bool(facts.pop("full")))
    written = report.write(results, facts, sizes, docs)
    print(f"bench: wrote {written} from the run of {facts['date']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
