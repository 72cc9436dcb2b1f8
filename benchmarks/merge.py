"""Several runs of benchmarks.run as one report: `--report-only a.json b.json`.

On a shared machine a measurement can be disturbed by other processes (the runner records
how much, `other_cpu_pct`); a run at a quieter time, given first, keeps its cells, and an
earlier run fills in what it lacks (e.g. a peer it skipped) or measured while disturbed.
Runs of different software (kiln commit, peer versions) are refused.
"""

from __future__ import annotations

NOISY = 10.0  # percent of the CPUs taken by other processes: a disturbed measurement


def _quieter(new: dict, old: dict | None) -> bool:
    """Whether measurement `new` should replace `old`: old is missing or failed, or was
    disturbed (over NOISY) and new less so."""
    if old is None or not old.get("ok"):
        return bool(new.get("ok")) or old is None
    if not new.get("ok"):
        return False
    old_pct, new_pct = old.get("other_cpu_pct") or 0, new.get("other_cpu_pct") or 0
    return old_pct > NOISY and new_pct < old_pct


def merge_runs(runs: list[dict]) -> dict:
    """Several runs' results as one: the first run's, with each measurement that is missing,
    failed or disturbed there taken from a later run where it is better; the machine's
    peaks the best measured."""
    base = runs[0]
    for other in runs[1:]:
        if other["versions"] != base["versions"]:
            changed = sorted(k for k in base["versions"]
                             if other["versions"].get(k) != base["versions"][k])
            raise SystemExit(f"cannot merge runs of different software: {changed} differ")
        base["command"] += "` and `" + other["command"]
        for t, widths in other["machine"]["measured"].items():
            mine = base["machine"]["measured"].setdefault(t, {})
            for w, v in widths.items():
                mine[w] = max(v, mine.get(w, 0.0))
            base["machine"]["peak"][t] = max(other["machine"]["peak"][t],
                                             base["machine"]["peak"].get(t, 0.0))
        for section in ("models", "micro"):
            for name, entry in other[section].items():
                mine = base[section].setdefault(name, entry)
                if mine is entry or "runs" not in entry:
                    continue
                if "runs" not in mine:
                    base[section][name] = entry
                    continue
                for engine, build in entry.get("builds", {}).items():
                    if not mine["builds"].get(engine, {}).get("ok"):
                        mine["builds"][engine] = build
                for t, cells in entry["runs"].items():
                    target = mine["runs"].setdefault(t, {})
                    for engine, cell in cells.items():
                        if _quieter(cell, target.get(engine)):
                            target[engine] = cell
    return base
