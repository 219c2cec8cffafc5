"""Mean and spread over seeds of several ``run.py`` results, with the targets checked on the means.

Usage::

    python benchmarks/run.py --seed 1 --tag seed1      # and --seed 2 --tag seed2
    cd benchmarks/results
    python ../summarize.py reduced_cpu_all.json reduced_cpu_all_seed1.json \\
        reduced_cpu_all_seed2.json --out reduced_cpu_all_seeds.md

Rows are grouped by setting, boxes and method; every metric is given as mean ± SD (population
SD over the runs). The targets of the benchmark (``run.target_lines``) are checked on the means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from napari_mutualseg.files import write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import METHODS, METRIC_KEYS, SETTINGS
from run import target_lines

BOXES = ("exact", "jittered", "region")


def mean_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per (setting, boxes, method): each metric's mean, ``<key>_sd`` and the count."""
    groups: dict[tuple, list[dict]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r["setting"], r["boxes"], r["method"]), []).append(r)
    out = []
    for (setting, boxes, method), rows in groups.items():
        row = {"setting": setting, "boxes": boxes, "method": method, "n": len(rows)}
        for key in METRIC_KEYS:
            values = [r[key] for r in rows]
            row[key], row[f"{key}_sd"] = float(np.mean(values)), float(np.std(values))
        per_round = [np.mean(r["seconds_per_round"]) for r in rows if r.get("seconds_per_round")]
        row["seconds_per_round"] = float(np.mean(per_round)) if per_round else None
        out.append(row)
    return sorted(
        out,
        key=lambda r: (
            SETTINGS.index(r["setting"]),
            BOXES.index(r["boxes"]) if r["boxes"] in BOXES else 9,
            METHODS.index(r["method"]),
        ),
    )


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`mean_rows` output."""
    keys = ("f1_50", "ap_75", "map", "aji", "dice")
    lines = [
        "| setting | boxes | method | runs | F1@0.5 | AP@0.75 | mAP | AJI | Dice | s/round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[k]:.3f} ± {r[k + '_sd']:.3f}" for k in keys]
        spr = "–" if r["seconds_per_round"] is None else f"{r['seconds_per_round']:.1f}"
        lines.append(
            f"| {r['setting']} | {r['boxes']} | {r['method']} | {r['n']} | "
            + " | ".join(cells)
            + f" | {spr} |"
        )
    return "\n".join(lines)


def pivot(rows: list[dict], key: str = "map") -> str:
    """One metric as a compact table: a row per method, a column per setting and boxes mode."""
    columns = sorted(
        {(r["setting"], r["boxes"]) for r in rows},
        key=lambda c: (SETTINGS.index(c[0]), BOXES.index(c[1]) if c[1] in BOXES else 9),
    )
    cell = {(r["setting"], r["boxes"], r["method"]): r for r in rows}
    names = {"boxed": "boxed", "inductive": "new images"}
    lines = [
        f"| {key} | " + " | ".join(f"{names[s]}, {b}" for s, b in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method in METHODS:
        values = [cell.get((s, b, method)) for s, b in columns]
        if not any(values):
            continue
        text = [f"{v[key]:.3f} ± {v[key + '_sd']:.3f}" if v else "–" for v in values]
        lines.append(f"| {method} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Read the JSONs, write the markdown summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="result JSONs of run.py")
    p.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    rows = mean_rows(runs)
    first = runs[0][0]
    md = [
        f"**BBBC039, `{first['config']}` config, {first['device_name']}**, "
        f"{first['n_eval']} `{first['eval_split']}` images: mean ± SD over {len(runs)} runs "
        f"({', '.join(p.name for p in args.runs)}); targets checked on the means.",
        "",
        table(rows),
        "",
        pivot(rows, "map"),
        "",
        *target_lines(rows),
        "",
    ]
    text = "\n".join(md)
    if args.out:
        write_text(args.out, text, overwrite=True)
    print(text)


if __name__ == "__main__":
    main()
