"""The paper's Table 1: metrics per data set (contrast), acceleration factor and method, mean +- std.

A row is dict(data="CORPD"|"CORPDFS"|"ALL", accel=4, method="SN", metrics={name: (mean, std)}).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dnirecon.errors import DataError
from dnirecon.files import replaced_on_success

# (metric key, column title, digits)
COLUMNS = [("nmse", "NMSE", 4), ("psnr", "PSNR", 2), ("ssim", "SSIM", 4)]
EXTRA = [("hfen", "HFEN", 4), ("hf_ratio", "HF ratio", 3)]


def _check_rows(rows: Sequence[Mapping]) -> None:
    for i, r in enumerate(rows):
        for key in ("data", "accel", "method", "metrics"):
            if key not in r:
                raise DataError(f"table row {i} has no {key!r}, expected keys data, accel, method, metrics")
        for name, value in r["metrics"].items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise DataError(f"table row {i} metric {name!r} is {value!r}, expected (mean, std)")


def _columns(rows: Sequence[Mapping]) -> list[tuple[str, str, int]]:
    present = {k for r in rows for k in r["metrics"]}
    return COLUMNS + [c for c in EXTRA if c[0] in present]


def _accel(a) -> str:
    return f"{float(a):g}x"


def _cell(row: Mapping, key: str, digits: int) -> str:
    if key not in row["metrics"]:
        return "-"
    mean, std = row["metrics"][key]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table1(rows: Sequence[Mapping]) -> str:
    """Markdown table: Data | AF | Method | NMSE | PSNR | SSIM [| HFEN | HF ratio]."""
    _check_rows(rows)
    cols = _columns(rows)
    head = ["Data", "AF", "Method"] + [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * 3 + [" ---: "] * len(cols)) + "|"]
    for r in rows:
        cells = [str(r["data"]), _accel(r["accel"]), str(r["method"])] + [_cell(r, k, d) for k, _, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[Mapping]) -> str:
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["data", "accel", "method"] + [f"{k}_{s}" for k, _, _ in cols for s in ("mean", "std")])
    for r in rows:
        vals = []
        for k, _, _ in cols:
            vals += list(r["metrics"].get(k, ("", "")))
        w.writerow([r["data"], float(r["accel"]), r["method"]] + vals)
    return buf.getvalue()


def atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    with replaced_on_success(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_table(rows: Sequence[Mapping], out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write `<stem>.md`, `<stem>.csv` and `<stem>.json` into out_dir, each atomically."""
    _check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = [dict(data=r["data"], accel=float(r["accel"]), method=r["method"],
                    metrics={k: {"mean": float(m), "std": float(s)} for k, (m, s) in r["metrics"].items()})
               for r in rows]
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    atomic_write_text(paths["md"], table1(rows))
    atomic_write_text(paths["csv"], _csv(rows))
    atomic_write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    return paths
