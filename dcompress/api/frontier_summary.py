"""The end of a frontier (api/frontier.py): the final report from its points, what they
shared, the best choice per budget, where random is as good, and the gates (exit 9); status
ok | gate_failed | incomplete (exit 1, a failed point wins over a missed gate).
"""
from __future__ import annotations

from .. import __version__


def finish(ident: dict, points: list[dict], gates: tuple) -> dict:
    """The final report: the points, what they share, the best choice per budget, the places
    where random is as good, the gates; status ok | gate_failed (9) | incomplete (1)."""
    from ..errors import GateFailed

    ok = [p for p in points if p["status"] == "ok"]
    keys = {p["random_side"] for p in ok}
    report = {**ident, "dcompress": __version__, "status": "ok", "points": points,
              "shared": {"random_sides": len(keys), "points_using_them": len(ok),
                         "per_budget_labels": sides_per(ok)},
              "best": best_per_budget(ok, ident["settings"]["budgets"]),
              "random_as_good": [p["name"] for p in ok if random_as_good(p)],
              "seconds": {k: round(sum(p["seconds"][k] for p in ok), 1)
                          for k in ("distill", "compressed", "random", "full_data", "total", "standalone_evaluation")}}
    min_acc, min_gain = gates
    rows = []
    for p in ok:
        if min_acc is not None:
            rows.append({"gate": "min_accuracy", "point": p["name"], "measured": p["accuracy"]["mean"],
                         "threshold": min_acc, "passed": p["accuracy"]["mean"] >= min_acc})
        if min_gain is not None:
            rows.append({"gate": "min_gain_over_random", "point": p["name"], "measured": p["gain"],
                         "threshold": min_gain, "passed": p["gain"] >= min_gain})
    if rows:
        report["gates"] = rows
    missed = [g for g in rows if not g["passed"]]
    bad = [p for p in points if p["status"] != "ok"]
    if bad:
        report.update(status="incomplete", exit_code=1,
                      error=f"{len(bad)} of {len(points)} points failed: " + "; ".join(
                          f"{p['name']}: {p['error']}" for p in bad))
    elif missed:
        report.update(status="gate_failed", exit_code=GateFailed.exit_code, failed=missed,
                      error="gate failed: " + "; ".join(f"{g['gate']}: {g['measured']} < {g['threshold']} "
                                                       f"({g['point']})" for g in missed))
    return report


def sides_per(ok: list[dict]) -> dict:
    """`budget/labels` -> the number of distinct random sides its points used (1 when shared)."""
    per: dict[str, set] = {}
    for p in ok:
        per.setdefault(f"{p['budget']}/{p['labels']}", set()).add(p["random_side"])
    return {k: len(v) for k, v in per.items()}


def random_as_good(p: dict) -> bool:
    """Random's mean within the spread: the set beats it by no more than the larger std."""
    return p["gain"] <= max(p["accuracy"]["std"], p["random"]["std"])


def best_per_budget(ok: list[dict], budgets: list[str]) -> list[dict]:
    """The most accurate method x labels at each budget (the fewer bytes on a tie)."""
    rows = []
    for b in budgets:
        at = [p for p in ok if p["budget"] == b]
        if at:
            p = max(at, key=lambda q: (q["accuracy"]["mean"], -(q["bytes"] or 0)))
            rows.append({"budget": b, "point": p["name"], "method": p["method"], "labels": p["labels"],
                         "accuracy": p["accuracy"]["mean"], "random": p["random"]["mean"], "bytes": p["bytes"],
                         "random_as_good": random_as_good(p)})
    return rows
