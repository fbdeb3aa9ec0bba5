"""Turn the raw rows of a benchmark run into a CSV and a Markdown report.

A *row* is one measurement: the cell's fields, the round it ran in, and the
load generator's figures.  The Markdown shows, per group of comparable cells,
the median over rounds of each figure, ratios against the baselines, and the
issue's targets with the measured value and PASS/MISS.  Target ratios are the
median over rounds of the ratio measured within each round (servers of one
round ran minutes apart at most, interleaved), which cancels slow drifts in
machine load.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

FIGURES = ("rps", "p50_us", "p99_us", "p999_us", "max_us", "mean_us")
ERROR_KINDS = ("refused", "reset", "timeout", "closed", "bad", "other")
KEY_FIELDS = ("protocol", "server", "concurrency", "connection", "metrics", "loadgen")
CSV_FIELDS = (
    ("round",)
    + KEY_FIELDS
    + ("requests",)
    + FIGURES
    + tuple(f"errors_{kind}" for kind in ERROR_KINDS)
)


def flatten(round_: int, cell: object, figures: dict) -> dict:
    """One CSV row from a cell and the figures measured for it."""
    row = {"round": round_}
    row.update({field: getattr(cell, field) for field in KEY_FIELDS})
    row["requests"] = figures["requests"]
    row.update({figure: figures[figure] for figure in FIGURES})
    row.update({f"errors_{kind}": figures["errors"].get(kind, 0) for kind in ERROR_KINDS})
    return row


def write_csv(path: str, rows: Iterable[dict]) -> None:
    """All rows, one per measurement."""
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def key_of(row: dict) -> tuple:
    return tuple(row[field] for field in KEY_FIELDS)


def medians(rows: list[dict]) -> dict[tuple, dict]:
    """Per cell: the median of each figure over rounds, and total errors by kind."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by_key[key_of(row)].append(row)
    result = {}
    for key, group in by_key.items():
        summary = {figure: _median(r[figure] for r in group) for figure in FIGURES}
        summary["rounds"] = len(group)
        summary["errors"] = {k: sum(r[f"errors_{k}"] for r in group) for k in ERROR_KINDS}
        result[key] = summary
    return result


def paired_ratio(rows: list[dict], key: tuple, base: tuple, figure: str = "rps") -> float:
    """Median over rounds of figure(key) / figure(base), each pair from the same round."""
    by_round: dict[int, dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        by_round[row["round"]][key_of(row)] = row[figure]
    ratios = [
        values[key] / values[base]
        for values in by_round.values()
        if key in values and base in values and values[base]
    ]
    return statistics.median(ratios) if ratios else math.nan


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def _ms(us: float) -> str:
    return "–" if math.isnan(us) else f"{us / 1000:.2f}"


def _errors(errors: dict) -> str:
    shown = [f"{kind} {count}" for kind, count in errors.items() if count]
    return ", ".join(shown) or "0"


def table(rows: list[dict], protocol: str, loadgen: str, baselines: tuple[str, ...]) -> list[str]:
    """Markdown lines: one table per (connection mode, metrics off) of `protocol`."""
    summary = medians(rows)
    keys = [k for k in summary if k[0] == protocol and k[5] == loadgen and not k[4]]
    lines = []
    for connection in ("new", "keepalive"):
        cells = sorted(
            (k for k in keys if k[3] == connection), key=lambda k: (k[2], _order(rows, k))
        )
        if not cells:
            continue
        title = "new connection per request" if connection == "new" else "keep-alive"
        lines += [f"#### {protocol}, {title} ({loadgen})", ""]
        ratio_heads = " | ".join(f"× {base}" for base in baselines)
        lines.append(
            "| c | server | req/s | p50 ms | p99 ms | p99.9 ms | max ms | mean ms | errors | "
            + ratio_heads
            + " |"
        )
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(baselines))
        for key in cells:
            figures = summary[key]
            ratios = []
            for base in baselines:
                base_key = (key[0], base, key[2], key[3], False, key[5])
                ratio = paired_ratio(rows, key, base_key) if base_key in summary else math.nan
                ratios.append("–" if math.isnan(ratio) else f"{ratio:.2f}")
            lines.append(
                f"| {key[2]} | {key[1]} | {figures['rps']:.0f} | {_ms(figures['p50_us'])} | "
                f"{_ms(figures['p99_us'])} | {_ms(figures['p999_us'])} | "
                f"{_ms(figures['max_us'])} | {_ms(figures['mean_us'])} | "
                f"{_errors(figures['errors'])} | " + " | ".join(ratios) + " |"
            )
        lines.append("")
    return lines


def _order(rows: list[dict], key: tuple) -> int:
    """Servers in the order the runner measured them."""
    for index, row in enumerate(rows):
        if key_of(row) == key:
            return index
    return len(rows)


def metrics_table(rows: list[dict]) -> list[str]:
    """Markdown lines: requests/s with metrics off and on, per sockherd server."""
    summary = medians(rows)
    lines = [
        "| protocol | server | c | off req/s | on req/s | on/off |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key in summary:
        if not key[4]:
            continue
        off = (key[0], key[1], key[2], key[3], False, key[5])
        if off not in summary:
            continue
        ratio = paired_ratio(rows, key, off)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {summary[off]['rps']:.0f} | "
            f"{summary[key]['rps']:.0f} | {ratio:.3f} |"
        )
    return lines + [""]
