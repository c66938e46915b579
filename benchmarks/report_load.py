"""How fast a large run's report builds and opens: 10,000 eval items and 100,000 metric lines.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/report_load.py --record

Writes a synthetic run directory (tunesmith.testing.run_fixture: 8,000 task items and 2,000
IFEval-style items, each evaluated before and after; 100,000 training steps in metrics.jsonl plus
the evaluation lines; no model), builds its report.html, and opens it in headless Chromium
(tunesmith.testing.browser) several times, reading DOMContentLoaded and load from the page's own
Performance API (navigation timing: milliseconds from the start of navigation). Side by side, the
same page built without the two things that keep it fast: every curve point drawn (no min/max
bucketing) and every item rendered at once (no pagination). Prints the table and, with --record,
appends it to BENCHMARKS.md. Needs Debian's chromium (`make chromium`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from record import append_section

NAV = ("(function () { var n = performance.getEntriesByType('navigation')[0]; "
       "return [n.domContentLoadedEventEnd, n.loadEventEnd, document.querySelectorAll('#items .item').length]; })()")


def build(run: Path, out: Path, fast: bool) -> float:
    """Seconds to build and write the page; fast=False: no downsampling, no pagination."""
    import tunesmith.report.plots as plots
    import tunesmith.report.sec_eval as sec_eval
    from tunesmith.report.page import run_page

    saved = plots.downsample, sec_eval.PER_PAGE
    if not fast:
        plots.downsample = lambda x, y, max_points=0: (plots.np.asarray(x, float), plots.np.asarray(y, float))
        sec_eval.PER_PAGE = 10**9
    try:
        t0 = time.perf_counter()
        out.write_text(run_page(run, out))
        return time.perf_counter() - t0
    finally:
        plots.downsample, sec_eval.PER_PAGE = saved


def load(page: Path, repeats: int) -> list[tuple[float, float, int]]:
    from tunesmith.testing.browser import Chromium

    results = []
    with Chromium() as browser:
        for _ in range(repeats):
            loaded = browser.open(page, settle=0.1)
            if loaded.console_errors or loaded.requests:
                sys.exit(f"{page}: console errors {loaded.console_errors}, requests {loaded.requests}")
            dcl, onload, shown = browser.evaluate(NAV)
            results.append((dcl, onload, shown))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000, help="eval items (4/5 tasks, 1/5 IFEval-style)")
    ap.add_argument("--metric-lines", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from tunesmith.testing.browser import find_chromium
    from tunesmith.testing.run_fixture import write_run

    if find_chromium() is None:
        sys.exit("no Chromium: run `make chromium` (apt-get install -y chromium)")
    work = Path(tempfile.mkdtemp(prefix="report-load-"))
    t0 = time.perf_counter()
    n_if = args.items // 5
    run = write_run(work / "big", items=args.items - n_if, if_items=n_if, metric_lines=args.metric_lines)
    lines = sum(1 for _ in open(run / "metrics.jsonl"))
    print(f"run written in {time.perf_counter() - t0:.1f} s: {args.items} eval items, {lines} metric lines")
    rows = []
    for name, fast in (("tunesmith report (curves bucketed to <= 1,000 points, 50 items a page)", True),
                       ("same page, every point drawn and every item rendered", False)):
        page = work / ("report.html" if fast else "report-unbounded.html")
        builds = [build(run, page, fast) for _ in range(3)]
        timings = load(page, args.repeats)
        dcl = statistics.median(t[0] for t in timings)
        onload = statistics.median(t[1] for t in timings)
        rows.append((name, page.stat().st_size / 1e6, statistics.median(builds), dcl, onload,
                     max(t[1] for t in timings), timings[0][2]))
        print(f"{name}: {rows[-1]}")
    head = ["page", "size MB", "build s (median of 3)", f"DOMContentLoaded ms (median of {args.repeats})",
            "load ms (median)", "load ms (max)", "items in the DOM"]
    body = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    body += [f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:,} |" for r in rows]
    ratio = rows[1][4] / rows[0][4] if rows[0][4] else float("nan")
    body += ["", f"Synthetic run (tunesmith.testing.run_fixture): {args.items:,} eval items before and after, "
                 f"{lines:,} lines in metrics.jsonl. Load = navigation start to the end of the load event in "
                 f"headless Chromium (the item browser's first page is drawn before it). Unbounded / tunesmith "
                 f"load time: {ratio:.1f}x. Target: under 2,000 ms."]
    text = "\n".join(body)
    print(text)
    if args.record:
        import subprocess

        chromium = subprocess.run([find_chromium(), "--version"], capture_output=True, text=True).stdout.strip()
        append_section(f"Report load: 10,000 eval items and 100,000 metric lines ({chromium})",
                       "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/report_load.py --record`", text)


if __name__ == "__main__":
    main()
