"""Wall time and peak memory of ``fedcmr4d demo`` (issue 9 target: <= 10 min, <= 6 GiB).

Runs the command under ``/usr/bin/time -v`` and, meanwhile, samples the memory of the whole
process tree every 0.5 s. Three memory figures answer different questions: GNU time's "Maximum
resident set size" is the largest single process (the Flower Simulation Engine starts worker
processes, whose memory it does not add up); the tree's summed RSS counts every shared page
(torch's libraries, mapped by each worker) once per process; the tree's summed PSS splits shared
pages among the processes that map them, so it is what the machine must hold at once. The
target is checked against the tree's PSS (against its RSS where the kernel gives no PSS).

    python -m benchmarks.demo                 # the default demo (minutes); records its row
    python -m benchmarks.demo --quick         # times `fedcmr4d phantom` instead (seconds)
    python -m benchmarks.demo -- --config tiny --subjects 4   # extra demo arguments
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import benchmark_parser, context, emit, record

PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_S = 600.0
TARGET_GIB = 6.0


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants now (0 for processes gone).

    Pages shared between processes (torch's libraries, mapped by every worker) count once
    per process here, so this sum overstates what the tree holds; :func:`tree_pss_bytes`
    does not."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants (``/proc/<pid>/smaps_rollup``).

    Each shared page is split among the processes that map it, so the sum is the memory the
    whole tree holds at once (0 where the kernel gives no rollup)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            continue
    return total


class TreeSampler(threading.Thread):
    """Samples the tree's summed RSS and PSS every ``interval`` s; keeps both peaks."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.peak_pss = pid, interval, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            if ticks % 4 == 0:  # smaps_rollup walks page tables: every 4th sample is enough
                self.peak_pss = max(self.peak_pss, tree_pss_bytes(self.pid))
            ticks += 1
            self.stop.wait(self.interval)


def parse_time_v(text: str) -> dict[str, float]:
    """Wall seconds and max RSS (GiB) from GNU ``time -v`` output."""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if wall is None or rss is None:
        raise ValueError(f"no GNU time -v figures in: {text[-500:]!r}")
    hours, minutes, seconds = wall.groups()
    return {
        "time_wall_s": int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds),
        "time_max_rss_gib": int(rss.group(1)) / 1024**2,
    }


def measure(command: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``command`` under ``/usr/bin/time -v`` and sample its process tree."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    if not Path(time_bin).is_file():
        raise SystemExit(f"{time_bin}: GNU time is needed (apt-get install time)")
    log = cwd / "time-v.txt"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [time_bin, "-v", "-o", str(log), *command],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    figures = parse_time_v(log.read_text())
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "time_wall_s": round(figures["time_wall_s"], 1),
        "time_max_rss_gib": round(figures["time_max_rss_gib"], 2),
        # Sampling can miss a short command entirely; the tree's peak is at least the largest
        # single process's max RSS, which GNU time measures exactly.
        "tree_peak_rss_gib": round(max(sampler.peak / 1024**3, figures["time_max_rss_gib"]), 2),
        "tree_peak_pss_gib": round(sampler.peak_pss / 1024**3, 2),
        "output_tail": output.strip().splitlines()[-3:],
    }


def demo_figures(out: Path) -> dict[str, Any]:
    """The run's own verdicts and quality figures, read before its temporary folder goes."""
    import json

    found: dict[str, Any] = {}
    audit = out / "federation" / "audit.json"
    if audit.is_file():
        found["audit_passed"] = json.loads(audit.read_text()).get("passed")
    metrics = out / "evaluation" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        for key in ("fid_ratio", "ef_w1", "ef_std_ratio"):
            value = m.get(key)
            found[key] = round(value, 3) if isinstance(value, float) else value
        utility = m.get("utility") or {}
        for arm in ("real", "synthetic", "real+synthetic"):
            dice = (utility.get(arm) or {}).get("dice_mean")
            found[f"dice_{arm}"] = round(dice, 3) if isinstance(dice, float) else dice
    return found


def main() -> None:
    parser = benchmark_parser(__doc__, "time `fedcmr4d phantom` instead")
    parser.add_argument("demo_args", nargs="*", help="extra arguments for `fedcmr4d demo`")
    parser.add_argument("--keep", type=Path, help="run the demo in this new folder and keep it")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "fedcmr4d"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep.resolve() if args.keep else Path(tmp) / "out"
        if args.quick:
            command = [*cli, "phantom", "--out", str(out), "--subjects", "2", "--seed", "0"]
        else:
            command = [*cli, "demo", "--out", str(out), *args.demo_args]
        figures = measure(command, Path(tmp))
        figures.update(demo_figures(out))
    shown = " ".join(["fedcmr4d", *command[3:]]).replace(str(out), "OUT")
    result = {
        "benchmark": "demo",
        "command": shown,
        **figures,
        "target_s": TARGET_S,
        "target_gib": TARGET_GIB,
        "within_target": figures["returncode"] == 0
        and figures["time_wall_s"] <= TARGET_S
        and (figures["tree_peak_pss_gib"] or figures["tree_peak_rss_gib"]) <= TARGET_GIB,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record or figures["returncode"] != 0:
        if figures["returncode"] != 0:
            raise SystemExit(f"{shown}: exit {figures['returncode']}: {figures['output_tail']}")
        return
    columns = [
        "command", "returncode", "time_wall_s", "time_max_rss_gib", "tree_peak_rss_gib",
        "tree_peak_pss_gib", "within_target", "audit_passed", "fid_ratio", "ef_w1",
        "ef_std_ratio", "dice_real", "dice_synthetic", "dice_real+synthetic", "machine",
        "torch", "date",
    ]  # fmt: skip
    extra = " -- " + " ".join(args.demo_args) if args.demo_args else ""
    record("demo", shown, columns, result, "python -m benchmarks.demo" + extra)


if __name__ == "__main__":
    main()
