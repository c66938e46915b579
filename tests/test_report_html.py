"""The HTML report (report.page, report.compare_page, the `report` verb), built from run directories the
tests write (tunesmith.testing.run_fixture): no model, no training, no browser."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tunesmith.cli import main
from tunesmith.report.compare_page import comparison_page, config_diff
from tunesmith.report.page import run_page
from tunesmith.report.plots import MAX_POINTS, downsample
from tunesmith.report.rundir import read_run
from tunesmith.report.sec_data import funnel_steps
from tunesmith.report.tables import fmt
from tunesmith.testing.run_fixture import INJECTION, write_run

FULL = ["overview", "data", "selection", "training", "evaluation", "exports", "phases", "provenance"]


class Page(HTMLParser):
    """What the tests read from a page: sections (id -> text), tables (class -> rows of cells with their
    attributes), script blocks, and every <svg> with its data attributes."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.row_attrs: dict[str, list[dict]] = {}
        self.scripts: list[tuple[dict, str]] = []
        self.svgs: list[dict] = []
        self._section = self._table = self._cell = self._script = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = ""
        elif tag == "table":
            self._table = a.get("class") or f"table{len(self.tables)}"
            self.tables.setdefault(self._table, [])
            self.row_attrs.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_attrs[self._table].append(a)
        elif tag == "td" and self._table is not None:
            self._cell = (a, [])
        elif tag == "script":
            self._script = (a, [])
        elif tag == "svg":
            self.svgs.append(a)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "table":
            self._table = None
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell[1]).strip(), self._cell[0]))
            self._cell = None
        elif tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None

    def handle_data(self, data):
        if self._section is not None:
            self.sections[self._section] += data
        if self._cell is not None:
            self._cell[1].append(data)
        if self._script is not None:
            self._script[1].append(data)

    def items(self) -> list[dict]:
        block = [text for attrs, text in self.scripts if attrs.get("id") == "items-data"]
        return json.loads(block[0])["items"] if block else []


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "full", items=40)


@pytest.fixture(scope="module")
def full_page(full_run) -> Page:
    return Page(run_page(full_run))


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_section_of_a_full_run_is_present_and_not_empty(full_page):
    assert list(full_page.sections) == FULL
    for sid, text in full_page.sections.items():
        heading_only = text.strip() in ("", sid.capitalize())
        assert not heading_only, f"section {sid} is empty"


def test_every_number_in_the_eval_table_equals_the_eval_json(full_run, full_page):
    rows = full_page.tables["eval-table"]
    suites = [a["data-suite"] for a in full_page.row_attrs["eval-table"] if "data-suite" in a]
    assert sorted(suites) == ["ifeval", "loss", "tasks"]
    body = [r for r in rows if r]  # the header row has no <td>
    for suite, cells in zip(suites, body):
        before, after = (_json(full_run / "eval" / w / f"{suite}.json") for w in ("before", "after"))
        n, base, tuned = cells[1], cells[2], cells[3]
        assert n[0] == str(after["n"])
        assert base[0] == fmt(before["score"], suite) and float(base[1]["data-value"]) == before["score"]
        assert tuned[0] == fmt(after["score"], suite) and float(tuned[1]["data-value"]) == after["score"]
    tasks = body[suites.index("tasks")]
    before, after = (_json(full_run / "eval" / w / "tasks.json")["score"] for w in ("before", "after"))
    assert tasks[4][0] == f"{100 * (after - before):+.1f} pp"


def test_per_task_table_shows_the_json_per_task_scores(full_run, full_page):
    per = _json(full_run / "eval/after/tasks.json")["per_task"]
    rows = [r for r in full_page.tables["type-table"] if r and r[0][0] in per]
    assert {r[0][0] for r in rows} == set(per)
    for r in rows:
        assert r[3][0] == fmt(per[r[0][0]]["exact_match"], "tasks")


def test_the_item_browser_holds_every_item_with_the_right_category(full_run, full_page):
    items = full_page.items()
    for suite in ("tasks", "ifeval"):
        before = _json(full_run / "eval/before" / f"{suite}.json")["records"]
        after = _json(full_run / "eval/after" / f"{suite}.json")["records"]
        mine = [it for it in items if it["s"] == suite]
        assert len(mine) == len(after)
        key = "correct" if suite == "tasks" else "follow_all_strict"
        expected = [{(False, True): "fixed", (True, False): "broken", (False, False): "still-wrong",
                     (True, True): "still-right"}[(b[key], a[key])] for b, a in zip(before, after)]
        assert [it["c"] for it in mine] == expected
        assert [it["t"] for it in mine] == [a["output"] for a in after]
        assert [it["b"] for it in mine] == [b["output"] for b in before]
    assert not [it for it in items if it["s"] == "loss"]  # the loss suite has no outputs to show
    assert 'data-count="%d"' % len(items) in run_page(full_run)


def test_model_output_cannot_inject_markup(full_run):
    html = run_page(full_run)
    assert INJECTION in _json(full_run / "eval/after/tasks.json")["records"][3]["output"]
    assert "<script>window.pwned" not in html and "<img" not in html and "<b>bold?" not in html
    page = Page(html)
    assert [a.get("type") for a, _ in page.scripts] == ["application/json", None]  # the data and our script only
    assert any(it.get("t") == INJECTION for it in page.items())  # the text itself survives
    assert "&lt;i&gt;" in html  # a rejected row's text is escaped too


def test_a_run_without_selection_export_or_phases_has_no_such_sections(tmp_path):
    run = write_run(tmp_path / "lean", selection=False, exports=False, phases=False, rejects=False)
    page = Page(run_page(run))
    assert list(page.sections) == ["overview", "data", "training", "evaluation", "provenance"]
    assert "rejected rows" not in page.sections["data"]
    assert not (page.tables.keys() & {"export-table"})


def test_a_run_with_only_training_has_no_evaluation_or_browser(tmp_path):
    run = write_run(tmp_path / "t", selection=False, exports=False, phases=False)
    for sub in ("eval", "selection", "curation"):
        import shutil

        shutil.rmtree(run / sub, ignore_errors=True)
    (run / "data_report.json").unlink()
    (run / "summary.json").unlink()
    page = Page(run_page(run))
    assert list(page.sections) == ["overview", "training", "provenance"]
    assert page.items() == [] and not [a for a, _ in page.scripts if a.get("id") == "items-data"]


def test_the_funnel_adds_up_to_the_rows_read(full_run):
    steps = funnel_steps(_json(full_run / "data_report.json"))
    assert [(name, n) for name, n, _ in steps] == [("rows read", 120), ("valid rows", 114), ("deduplicated", 104),
                                                   ("decontaminated", 100), ("selected", 50), ("trained", 48)]
    report = _json(full_run / "data_report.json")
    assert report["kept"] + report["rejected"] + report["curation_and_selection"]["removed"] == report["total"]
    # replay rows (the demo's default) join after the funnel, with their count, tokens and store hits
    report["replay"] = {"rows": 12, "tokens": 3456, "store_hits": 5}
    last = funnel_steps(report)[-1]
    assert last[:2] == ("trained with replay", 60) and "+12 replay rows" in last[2] and "3,456 tokens" in last[2]


def test_long_curves_are_downsampled_keeping_extremes():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 500) + (x == 54_321) * 50 - (x == 77_777) * 40
    dx, dy = downsample(x, y)
    assert len(dx) <= MAX_POINTS and dy.max() == y.max() and dy.min() == y.min()
    assert np.all(np.diff(dx) > 0)


def test_a_run_with_many_metric_lines_draws_at_most_max_points(tmp_path):
    run = write_run(tmp_path / "long", items=8, metric_lines=5000, selection=False, exports=False, phases=False)
    page = Page(run_page(run))
    loss = [s for s in page.svgs if s.get("aria-label") == "loss"][0]
    assert int(loss["data-n"]) > 5000 and int(loss["data-points"]) <= 2 * MAX_POINTS + 10  # raw + smoothed + evals


def test_provenance_shows_the_recorded_command_and_hashes(tmp_path):
    run = write_run(tmp_path / "p", selection=False, exports=True, phases=False)
    (run / "provenance.json").write_text(json.dumps({"command": "tunesmith run r.yaml --train.lr 1e-4",
                                                     "versions": {"torch": "2.13.0"}, "python": "3.11.7",
                                                     "machine": "Linux x86_64, 2 cores", "at": "2026-11-30"}))
    text = Page(run_page(run)).sections["provenance"]
    assert "tunesmith run r.yaml --train.lr 1e-4" in text and "torch 2.13.0" in text
    assert "cd" * 32 in text and "ef" * 32 in text and "ab" * 32 in text


def test_a_broken_file_is_reported_on_the_page_not_raised(tmp_path):
    run = write_run(tmp_path / "b", selection=False, exports=False, phases=False)
    (run / "eval/after/tasks.json").write_text("{not json")
    html = run_page(run)
    assert "eval/after/tasks.json: cannot be read" in html


def test_comparison_page_diffs_configs_and_compares_evals(tmp_path):
    a = write_run(tmp_path / "a", selection=False, exports=False, phases=False, seed=0)
    b = write_run(tmp_path / "b", selection=False, exports=False, phases=False, seed=3)
    differ, same = config_diff([read_run(a), read_run(b)])
    assert differ == ["train.seed"] and same > 5
    page = Page(comparison_page([a, b], tmp_path / "cmp.html"))
    assert list(page.sections) == ["runs", "config", "curves", "evaluation"]
    assert [r[0][0] for r in page.tables["config-diff"] if r] == ["train.seed"]
    assert [r[0][0] for r in page.tables["runs-table"] if r] == ["a", "b"]
    rows = [r for r in page.tables["cmp-eval"] if r]
    tasks = [r for r in rows if r[1][0] == "b"][0]
    after_a, after_b = (_json(d / "eval/after/tasks.json")["score"] for d in (a, b))
    assert tasks[5][0] == f"{100 * (after_b - after_a):+.1f} pp"
    loss = [s for s in page.svgs if "training loss" in s.get("aria-label", "")]
    assert loss and "ci-table" in page.tables
    assert len(page.items()) == 40 + 10


def test_report_verb_writes_the_page_and_the_comparison(tmp_path, capsys):
    a = write_run(tmp_path / "a", selection=False, exports=False, phases=False)
    b = write_run(tmp_path / "b", selection=False, exports=False, phases=False, seed=1)
    assert main(["report", str(a)]) == 0
    assert (a / "report.html").is_file() and "tunesmith run: a" in (a / "report.html").read_text()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "ab.html")]) == 0
    assert "tunesmith comparison: a vs b" in (tmp_path / "ab.html").read_text()
    assert "ab.html" in capsys.readouterr().out


@pytest.mark.parametrize("args, code, message", [
    (["{missing}"], 1, "no such run directory"),
    (["{empty}"], 1, "is not a run directory"),
    (["{run}", "--out", "{tmp}"], 2, "is a folder"),
    (["{run}", "--out", "{tmp}/r.txt"], 2, "ending in .html"),
    (["{run}", "--out", "{tmp}/no/such/r.html"], 1, "does not exist"),
    (["{run}", "--bogus", "1"], 2, "unrecognized arguments"),
    (["{run}", "--out", "/proc/r.html"], 1, "cannot be written"),
])
def test_report_verb_errors_are_one_clear_message(tmp_path, capsys, args, code, message):
    run = write_run(tmp_path / "run", items=4, selection=False, exports=False, phases=False)
    (tmp_path / "empty").mkdir()
    fill = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"), "run": str(run),
            "tmp": str(tmp_path)}
    assert main(["report", *(a.format(**fill) for a in args)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_report_at_end_records_provenance_and_survives_a_failure(tmp_path, monkeypatch, capsys):
    import tunesmith.stages.report as stage

    run = write_run(tmp_path / "r", items=4, selection=False, exports=False, phases=False)
    assert stage.report_at_end(run) == run / "report.html"
    prov = _json(run / "provenance.json")
    assert prov["versions"]["tunesmith"] and prov["command"]
    monkeypatch.setattr(stage, "run_page", lambda *a, **k: 1 / 0)
    (run / "report.html").unlink()
    assert stage.report_at_end(run) is None
    out = capsys.readouterr().out
    assert "could not build" in " ".join(out.split()) and "ZeroDivisionError" in out
    assert not (run / "report.html").exists()


def test_the_page_loads_nothing_from_the_network(full_run):
    html = run_page(full_run)
    assert "default-src 'none'" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "<img" not in html and "@import" not in html


def test_a_run_with_synthetic_data_shows_its_acceptance(tmp_path):
    run = write_run(tmp_path / "s", selection=False, exports=False, phases=False, synth=True)
    page = Page(run_page(run))
    assert list(page.sections)[:3] == ["overview", "synth", "data"]
    rows = [r for r in page.tables["synth-table"] if r]
    assert [c[0] for c in rows[0][:4]] == ["ifeval", "50", "48", "80 of 192 (42%)"]
    assert any(s.get("aria-label") == "ifeval: samples accepted per constraint or task type" for s in page.svgs)


def test_robustness_per_task_is_the_mean_over_phrasings():
    from tunesmith.report.sec_eval import per_type

    result = {"phrasings": 3, "per_task": {"uppercase": {"per_phrasing": [1.0, 0.5, 0.0], "spread": 1.0}},
              "records": [{"task": "uppercase"}] * 6}
    assert per_type("robustness", result) == {"uppercase": (2, 0.5)}


def test_a_skipped_non_finite_step_is_shown_with_its_samples(tmp_path):
    run = write_run(tmp_path / "nan", items=4, metric_lines=20, selection=False, exports=False, phases=False)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 21, "nonfinite": True, "action": "skipped", "loss": "nan", "grad_norm": "inf",
                             "samples": [{"origin": "data/train.jsonl:7", "loss_alone": "nan"},
                                         {"origin": "data/train.jsonl:8", "loss_alone": 1.5}]}) + "\n")
    page = Page(run_page(run))
    rows = [r for r in page.tables["nonfinite-table"] if r]
    assert [c[0] for c in rows[0]] == ["21", "skipped", "nan", "inf", "data/train.jsonl:7"]
    loss = [s for s in page.svgs if s.get("aria-label") == "loss"][0]
    assert int(loss["data-n"]) >= 20  # the non-finite line is not a point of the curve


def test_the_guard_verdict_of_the_summary_is_shown_as_a_warning(tmp_path):
    run = write_run(tmp_path / "g", items=4, selection=False, exports=False, phases=False)
    summary = _json(run / "summary.json")
    summary["guard"] = {"warning": True, "message": "general ability dropped: -12.0 pp [-20.0, -4.0] <on guard>"}
    (run / "summary.json").write_text(json.dumps(summary))
    html = run_page(run)
    assert '<p class="warn">general ability dropped: -12.0 pp [-20.0, -4.0] &lt;on guard&gt;</p>' in html
