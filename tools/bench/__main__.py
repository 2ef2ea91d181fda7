"""`python -m tools.bench [--only SECTION,...]`: run the sections, print one table, write docs/benchmarks.md.

Every section runs by default (what `make bench` does) and the document is written only then;
`--only` runs some sections and prints their rows (for working on one section). A full run keeps
its results in build/bench-results.pickle; `--render` rewrites the document from them (after a
change to the report's text, without measuring again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pickle
import sys
import time
from typing import TextIO

from tools.bench import cold_start, package_size, spread
from tools.bench.common import DOC, PACKAGE_ZIP, RAW_PUTS, ROOT, log
from tools.bench.ingest_http import IngestResults, measure_http_ingest, measure_raw_puts
from tools.bench.pipeline import measure_cost
from tools.bench.queries import measure_summary
from tools.bench.report import Results, document, render_table, table_rows

SECTIONS = ("package", "cold_start", "ingest", "pipeline", "queries", "spread")
SAVED = ROOT / "build" / "bench-results.pickle"


def run(sections: set[str], results: Results) -> None:
    """Run the chosen sections in their order, filling `results`."""
    if "package" in sections:
        log("package: make package (chalice package, then tools/package.py slims and checks the zip)")
        results.package = package_size.measure()
    if "cold_start" in sections:
        log("cold start: import app and import boto3 in fresh interpreters, -X importtime")
        results.cold = cold_start.measure(PACKAGE_ZIP if "package" in sections else None)
    if "ingest" in sections:
        log("raw conditional puts on the emulator")
        raw_rate, raw_bytes = measure_raw_puts()
        single, batch, single_catch_up, batch_catch_up = measure_http_ingest()
        results.ingest = IngestResults(single, batch, single_catch_up, batch_catch_up, raw_rate, RAW_PUTS, raw_bytes)
    if "pipeline" in sections:
        results.single, results.batch = measure_cost()
    if "queries" in sections:
        results.summary = measure_summary()
    if "spread" in sections:
        results.spread = spread.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--render", action="store_true", help=f"rewrite {DOC.name} from {SAVED.name}")
    args = parser.parse_args(argv)
    if args.render:
        saved = pickle.loads(SAVED.read_bytes())  # our own file, written below
        results, started_at, runtime, load = saved
        table = render_table(table_rows(results))
        DOC.write_text(document(results, table, started_at, runtime, load), encoding="utf-8")
        print(table)
        return 0
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    load = os.getloadavg()
    results = Results()
    real_stdout: TextIO = sys.stdout
    # The app logs and emits metrics as JSON on stdout; the table is the only thing printed there.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (restored below)
    try:
        run(sections, results)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    table = render_table(table_rows(results))
    runtime = time.perf_counter() - started
    if sections == set(SECTIONS):
        SAVED.parent.mkdir(exist_ok=True)
        SAVED.write_bytes(pickle.dumps((results, started_at, runtime, load)))
        DOC.write_text(document(results, table, started_at, runtime, load), encoding="utf-8")
        log(f"wrote {DOC}; {runtime:.0f} s")
    print(table)
    return 0 if results.spread is None or results.spread.exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
