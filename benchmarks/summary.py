"""Regenerate the summary table at the top of ``docs/benchmarks.md`` from its recorded rows.

The sections below the summary are written by the benchmark scripts (``benchmarks.common.record``);
this reads their tables back and writes, between two markers, one summary line per recorded row
of the issue's rows and targets: no figure in the summary is typed by hand. Rerun it after any
benchmark:

    python -m benchmarks.summary
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import DOC

START = "<!-- summary:start (python -m benchmarks.summary) -->"
END = "<!-- summary:end -->"

INTRO = f"""# Benchmarks

What fedcmr4d costs and what it gives, measured by scripts in `benchmarks/` that anyone can
rerun. Every figure below comes from a run of the command printed above its table; each row
names the machine (CPU model and cores, or GPU), and the torch version or the date of the run.
Ratios (tuned / plain, DP / non-DP, slice-wise / one-pass) are measured within ONE run of a
script, so that a busy machine slows both sides alike. How to run them, and what each figure
means and does not: [`benchmarks/README.md`](../benchmarks/README.md).

The development machine has 2 CPU cores and no GPU, and was shared by several jobs while some
rows were recorded (see each row's date; absolute times are only as good as that). The GPU
targets (tuned / plain >= 2x, DP / non-DP <= 1.5x) can only be judged on a GPU:
`benchmarks/gpu.sh` runs every GPU row and a short `paper` run in one go on a CUDA machine, but
no GPU has been available yet, so those rows say so instead of a verdict. The summary below is
generated from the recorded rows by `python -m benchmarks.summary`.

{START}
{END}
"""

Row = dict[str, str]


def parse_sections(text: str) -> dict[str, list[Row]]:
    """``## name`` sections -> their table rows as {column: cell} dicts."""
    sections: dict[str, list[Row]] = {}
    for block in re.split(r"\n(?=## )", text):
        if not block.startswith("## "):
            continue
        name = block.splitlines()[0][3:].strip()
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if len(lines) < 3:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = []
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append(dict(zip(header, cells, strict=False)))
        sections[name] = rows
    return sections


def _num(cell: str | None) -> float | None:
    try:
        return float(cell) if cell is not None else None
    except ValueError:
        return None


def _machine(row: Row) -> str:
    for key, cell in row.items():
        if key == "machine" or key.endswith("(machine)") or key.endswith("/ machine"):
            match = re.search(r"\((?:CPU|GPU)[^)]*\)", cell)
            if key == "machine":
                return cell
            if match:
                return match.group(0)[1:-1]
    return "?"


def _on_gpu(row: Row) -> bool:
    return _machine(row).startswith("GPU") or any("GPU" in c for c in row.values())


@dataclass(frozen=True)
class Item:
    """One issue row: where its figures live and how a recorded row is judged."""

    label: str
    section: str
    target: str
    figure: Callable[[Row], str]
    verdict: Callable[[Row], str]


def _gpu_target(value: float | None, ok: Callable[[float], bool], row: Row) -> str:
    if value is None:
        return "no figure"
    if not _on_gpu(row):
        return "target is for a GPU: not measured on one"
    return "met" if ok(value) else "NOT met"


def _first_cell(row: Row) -> str:
    return next(iter(row.values()), "")


def _sampling_figure(r: Row) -> str:
    triple = "one-pass / slice-wise / real"
    return (
        f"{_first_cell(r)}: {r.get('ratio')}x end to end, {r.get('denoise_ratio')}x denoising; "
        f"neighbouring-slice correlations ({triple}): temporal "
        f"{r.get(f'temporal_corr {triple}')}, spatial {r.get(f'spatial_corr {triple}')}, "
        f"LV area {r.get(f'lv_area_corr {triple}')}; DDIM {r.get('ddim_steps')} steps "
        f"{r.get('ddim_s_per_subject')} s/subject FID {r.get('ddim_fid')} vs DDPM "
        f"{r.get('ddpm_steps')} steps {r.get('ddpm_s_per_subject')} s/subject FID "
        f"{r.get('ddpm_fid')} (real-real {r.get('fid_real_real')})"
    )


ITEMS = [
    Item(
        "1. train step, tuned / plain",
        "train_step",
        ">= 2x on GPU",
        lambda r: (
            f"{_first_cell(r)}: best {r.get('best')} {r.get('best_speedup')}x "
            f"(plain {r.get('plain_s')} s/step, {r.get('plain_peak_gib')} GiB)"
        ),
        lambda r: _gpu_target(_num(r.get("best_speedup")), lambda v: v >= 2.0, r),
    ),
    Item(
        "2. DP step / non-DP step",
        "dp_step",
        "<= 1.5x on GPU",
        lambda r: f"{_first_cell(r)}: {r.get('dp_over_non_dp')}x",
        lambda r: _gpu_target(_num(r.get("dp_over_non_dp")), lambda v: v <= 1.5, r),
    ),
    Item(
        "3. sampling, slice-wise / one-pass time per subject",
        "sampling",
        ">= 5x",
        _sampling_figure,
        lambda r: "met" if (_num(r.get("ratio")) or 0) >= 5 else "NOT met",
    ),
    Item(
        "4. federated round: bytes per round vs model size",
        "federated",
        "(measured, no target)",
        lambda r: ", ".join(f"{k} {v}" for k, v in list(r.items())[:6]),
        lambda r: "-",
    ),
    Item(
        "4. federated round overhead vs local training",
        "round_overhead",
        "(measured, no target)",
        lambda r: (
            f"{_first_cell(r)}, {r.get('steps_per_round')} steps: "
            f"round {r.get('federated_round_s')} s vs local {r.get('local_s')} s = "
            f"{r.get('ratio')}x (overhead {r.get('overhead_s')} s, spread {r.get('spread_s')}; "
            f"first round {r.get('first_round_s')} s)"
        ),
        lambda r: "-",
    ),
    Item(
        "5. audit throughput",
        "audit",
        "(measured, no target)",
        lambda r: ", ".join(f"{k} {v}" for k, v in list(r.items())[:5]),
        lambda r: "-",
    ),
    Item(
        "6. preprocessing throughput",
        "preprocess",
        "(measured, no target)",
        lambda r: (
            f"{_first_cell(r)} -> {r.get('output')}: {r.get('total_s')} s, "
            f"{r.get('peak_rss_gib')} GiB"
        ),
        lambda r: "-",
    ),
    Item(
        "7. quality: FID across depth, EF W1",
        "quality",
        "(measured; FID should approach real-real)",
        lambda r: (
            f"{_first_cell(r)}: FID {r.get('fid_matched_mean')} at "
            f"{r.get('fid_matched_subjects')} subjects a side (real-real "
            f"{r.get('fid_real_real_mean')}, ratio {r.get('fid_ratio')}), EF W1 {r.get('ef_w1')}"
            " EF points"
        ),
        lambda r: "-",
    ),
    Item(
        "demo on 2 cores",
        "demo",
        "<= 10 min and <= 6 GiB",
        lambda r: (
            f"{r.get('time_wall_s')} s, {r.get('tree_peak_pss_gib')} GiB (process tree PSS; "
            f"summed RSS {r.get('tree_peak_rss_gib')} GiB), exit {r.get('returncode')}"
        ),
        lambda r: "met" if r.get("within_target") == "True" else "NOT met",
    ),
]


def summary_table(sections: dict[str, list[Row]]) -> str:
    lines = [
        "## Summary",
        "",
        "| row | target | figure | verdict | machine | date |",
        "|---|---|---|---|---|---|",
    ]
    for item in ITEMS:
        rows = sections.get(item.section, [])
        if not rows:
            lines.append(f"| {item.label} | {item.target} | not recorded yet | - | - | - |")
        for row in rows:
            figure = item.figure(row).replace("|", "/")
            date = row.get("date", "?")
            lines.append(
                f"| {item.label} | {item.target} | {figure} | {item.verdict(row)} | "
                f"{_machine(row)} | {date} |"
            )
    return "\n".join(lines)


def rewrite(doc: Path = DOC) -> str:
    """Rewrite the introduction and the summary between the markers; keep every section."""
    text = doc.read_text() if doc.exists() else ""
    if START in text:
        after = text.split(START, 1)[1].split(END, 1)[1]
    else:  # a document written by record() alone: keep its sections
        body = text.split("\n## ", 1)
        after = "\n\n## " + body[1] if len(body) == 2 else "\n"
    head = INTRO.split(START, 1)[0]
    table = summary_table(parse_sections(after))
    text = f"{head}{START}\n{table}\n{END}{after}"
    doc.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to rewrite")
    args = parser.parse_args()
    rewrite(args.doc)
    print(args.doc)


if __name__ == "__main__":
    main()
