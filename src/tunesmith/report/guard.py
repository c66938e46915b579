"""Specialisation next to general change: what tuning gained on the run's own task, and what it did to
the general-ability guard (evaluate.guard), base vs tuned on the same items, with paired intervals.

The warning fires when the guard's prompt-level loose score dropped beyond its interval: the paired
95% bootstrap interval of (tuned - base) over the guard items lies wholly below 0. Its drift measure
(the loss on the base's own answers) is reported next to it but never warns on its own: any tuning
moves it.
"""

from __future__ import annotations

from typing import Any

from .compare import SUITE_NAMES, item_scores
from .stats import LEVEL, RESAMPLES, bootstrap_mean, paired_difference

SPECIALISATION_SUITES = ("data", "tasks", "ifeval", "ifbench", "humaneval")  # first one evaluated is the gain shown


def _paired(suite: str, metric: str, before: dict[str, Any], after: dict[str, Any], resamples: int, seed: int
            ) -> dict[str, Any]:
    a = item_scores(suite, before[suite])[metric]
    b = item_scores(suite, after[suite])[metric]
    return {"suite": suite, "metric": metric, "n": len(a),
            "before": bootstrap_mean(list(a.values()), resamples, seed).to_json(),
            "after": bootstrap_mean(list(b.values()), resamples, seed).to_json(),
            "change": paired_difference(a, b, resamples, seed, LEVEL, f"base and tuned ({suite})").to_json()}


def _drift(before: dict[str, Any], after: dict[str, Any], resamples: int, seed: int) -> dict[str, Any] | None:
    """The loss on the base's answers, base vs tuned, paired over the items both scored."""
    a = {r["key"]: r.get("reference_loss") for r in before["records"]}
    b = {r["key"]: r.get("reference_loss") for r in after["records"]}
    keys = [k for k in a if a[k] is not None and b.get(k) is not None]
    if not keys:
        return None
    return {"before": before.get("reference_loss"), "after": after.get("reference_loss"), "n": len(keys),
            "change": paired_difference({k: a[k] for k in keys}, {k: b[k] for k in keys}, resamples, seed,
                                        LEVEL, "base and tuned (guard loss)").to_json()}


def guard_verdict(before: dict[str, Any], after: dict[str, Any], resamples: int = RESAMPLES, seed: int = 0
                  ) -> dict[str, Any] | None:
    """{specialisation, general, drift, warning, message} from the base's and the tuned model's evaluations
    ({suite: result}); None when the guard did not run on both."""
    if "guard" not in before or "guard" not in after:
        return None
    general = _paired("guard", "prompt_level_loose", before, after, resamples, seed)
    spec_suite = next((s for s in SPECIALISATION_SUITES if s in before and s in after
                       and item_scores(s, before[s])), None)
    spec = None
    if spec_suite is not None:
        metric = next(iter(item_scores(spec_suite, before[spec_suite])))
        spec = _paired(spec_suite, metric, before, after, resamples, seed)
    change = general["change"]
    warning = change["high"] < 0
    return {"specialisation": spec, "general": general, "drift": _drift(before["guard"], after["guard"], resamples,
                                                                       seed),
            "warning": warning, "message": verdict_message(spec, general, warning)}


def _pp(iv: dict[str, Any]) -> str:
    return f"{100 * iv['mean']:+.1f} pp [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"


def verdict_message(spec: dict[str, Any] | None, general: dict[str, Any], warning: bool) -> str:
    """One sentence per axis, and what to do when the general score dropped."""
    g = general["change"]
    text = (f"general (guard, {general['n']} IFEval-style items, prompt-level loose): "
            f"{100 * general['before']['mean']:.1f}% -> {100 * general['after']['mean']:.1f}%, {_pp(g)}")
    if spec is not None:
        name = SUITE_NAMES.get(spec["suite"], spec["suite"])
        text = (f"specialisation ({name}, {spec['n']} items): {100 * spec['before']['mean']:.1f}% -> "
                f"{100 * spec['after']['mean']:.1f}%, {_pp(spec['change'])}; " + text)
    if warning:
        text += (". WARNING: the tuned model is worse than the base at general instruction following beyond the "
                 "95% interval; mix the base's own answers back in (replay.ratio, e.g. 0.25), lower train.lr or "
                 "train.epochs, or export with --to interpolate")
    return text


def verdict_markdown(v: dict[str, Any]) -> str:
    """The summary's and the model card's section."""
    rows = [("general guard (IFEval-style, prompt loose)", v["general"])]
    if v["specialisation"] is not None:
        s = v["specialisation"]
        rows.insert(0, (f"specialisation: {SUITE_NAMES.get(s['suite'], s['suite'])} ({s['metric']})", s))
    lines = ["| axis | n | base % [95% CI] | tuned % [95% CI] | change, pp [95% CI] |", "|---|---|---|---|---|"]
    for name, r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {name} | {r['n']} | {100 * b['mean']:.1f} [{100 * b['low']:.1f}, {100 * b['high']:.1f}] | "
                     f"{100 * a['mean']:.1f} [{100 * a['low']:.1f}, {100 * a['high']:.1f}] | {_pp(r['change'])} |")
    d = v.get("drift")
    if d is not None:
        c = d["change"]
        lines += ["", f"Drift: loss per token on the base's own answers to the guard prompts, {d['before']:.3f} (base) "
                      f"-> {d['after']:.3f} (tuned), paired change {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]."]
    lines += ["", ("**Warning:** " if v["warning"] else "") + v["message"]]
    return "\n".join(lines) + "\n"
