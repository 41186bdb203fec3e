"""Result tables (contender, median, ratio against a reference, goal) and their JSON.

A table's ratio is `value / reference value` for every row, so with "ours" as the reference a
ratio above 1 means ours is that many times faster (or smaller) than the row's contender.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.timing import Timing

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Goal:
    """A bound on a row's ratio; `text` is how the DESIGN states it."""

    text: str
    minimum: float | None = None
    maximum: float | None = None

    def met(self, ratio: float) -> bool:
        return (self.minimum is None or ratio >= self.minimum) and (
            self.maximum is None or ratio <= self.maximum
        )


def at_least(bound: float, text: str = "") -> Goal:
    return Goal(text or f">= {bound:g}", minimum=bound)


def at_most(bound: float, text: str = "") -> Goal:
    return Goal(text or f"<= {bound:g}", maximum=bound)


@dataclass(frozen=True)
class Row:
    name: str
    value: float  # in the table's unit
    spread: tuple[float, float] | None = None  # (q1, q3) in the table's unit
    goal: Goal | None = None
    note: str = ""
    samples: tuple[float, ...] = ()  # raw values in the table's unit (JSON only)


@dataclass
class Table:
    title: str
    unit: str  # "ms", "MB", ...
    reference: str  # the name of the row every ratio divides by
    ratio_label: str  # what the ratio means, e.g. "t / t(ours)"
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    value_label: str = ""  # the value column's header; "median <unit>" when empty

    def ratio(self, row: Row) -> float:
        ref = next(r for r in self.rows if r.name == self.reference)
        return row.value / ref.value if ref.value else float("nan")

    def goal_results(self) -> list[tuple[Row, float, bool]]:
        return [(r, self.ratio(r), r.goal.met(self.ratio(r))) for r in self.rows if r.goal]

    def render(self) -> str:
        name_w = max(len("contender"), *(len(r.name) for r in self.rows))
        value_label = self.value_label or f"median {self.unit}"
        head = (
            f"{'contender':<{name_w}}  {value_label:>11}  {'[q1 .. q3]':>17}  "
            f"{self.ratio_label:>13}  goal"
        )
        lines = [f"== {self.title} ==", head, "-" * len(head)]
        for row in self.rows:
            spread = f"[{row.spread[0]:.1f} .. {row.spread[1]:.1f}]" if row.spread else ""
            if row.name == self.reference:
                goal = "(reference)"
            elif row.goal:
                goal = f"{row.goal.text}  {'MET' if row.goal.met(self.ratio(row)) else 'MISSED'}"
            else:
                goal = "-"
            note = f"  ({row.note})" if row.note else ""
            lines.append(
                f"{row.name:<{name_w}}  {row.value:11.1f}  {spread:>17}  "
                f"{self.ratio(row):13.2f}  {goal}{note}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        for row, out in zip(self.rows, data["rows"]):
            out["ratio"] = self.ratio(row)
            out["goal_met"] = row.goal.met(self.ratio(row)) if row.goal else None
        return data


def time_rows(
    timings: Mapping[str, Timing],
    goals: Mapping[str, Goal] | None = None,
    notes: Mapping[str, str] | None = None,
) -> list[Row]:
    """Rows in milliseconds from interleaved timings, in the timings' order."""
    goals, notes = goals or {}, notes or {}
    return [
        Row(
            name,
            t.median * 1e3,
            (t.quartiles[0] * 1e3, t.quartiles[1] * 1e3),
            goals.get(name),
            notes.get(name, ""),
            tuple(s * 1e3 for s in t.seconds),
        )
        for name, t in timings.items()
    ]


def write_results(name: str, tables: list[Table], context: dict) -> Path:
    """bench/results/<name>.json with the tables and the run's context (machine, settings)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, **context, "tables": [t.to_dict() for t in tables]}
    path.write_text(json.dumps(payload, indent=1))
    return path
