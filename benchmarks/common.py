"""Shared plumbing for benchmark scripts: machine description, JSON line, docs table rows.

Every script prints exactly one JSON line (its result) and, unless ``--quick`` or
``--no-record`` is given, replaces its own row in ``docs/benchmarks.md`` under a section named
after the script, so rerunning a benchmark updates its figures instead of appending stale ones.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """CPU model and core count, or the GPU name when CUDA is in use."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


def context() -> dict[str, Any]:
    import torch

    return {
        "machine": machine(),
        "torch": torch.__version__,
        "date": _dt.date.today().isoformat(),
    }


def benchmark_parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The options every recording benchmark shares: ``--quick`` (small sizes, never recorded;
    CI runs it) and ``--no-record`` (measure and print, leave docs/benchmarks.md alone)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-record", action="store_true")
    return parser


def peak_rss_gib() -> float:
    """Peak resident memory of this process (and finished children) in GiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / (1024**2)


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON line; a NaN or infinity is an error here (it is not JSON,
    and a reader would take it for a figure), so scripts report such values as None."""
    print(json.dumps(result, sort_keys=True, allow_nan=False))


def _with_header(body: str, columns: list[str]) -> str:
    """A section whose table has ``columns``: when the script's columns changed, the old header
    is replaced and the rows recorded under it (another layout) are dropped, not misaligned."""
    header = "| " + " | ".join(columns) + " |"
    lines = body.split("\n")
    tables = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not tables or lines[tables[0]] == header:
        return body
    first = tables[0]
    kept = [line for line in lines[first + 2 :] if not line.startswith("|")]
    separator = "|" + "---|" * len(columns)
    return "\n".join(lines[:first] + [header, separator] + kept)


def record(section: str, key: str, columns: list[str], row: dict[str, Any], command: str) -> None:
    """Insert or replace the row whose first cell is ``key`` in ``section`` of benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    intro = "# Benchmarks\n\nEvery row comes from a run of the named command.\n"
    text = DOC.read_text() if DOC.exists() else intro
    header = f"## {section}"
    cells = [key] + [str(row.get(c, "")) for c in columns[1:]]
    line = "| " + " | ".join(cells) + " |"
    if header not in text:
        table = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        text = text.rstrip("\n") + f"\n\n{header}\n\nCommand: `{command}`\n\n{table}{line}\n"
    else:
        start = text.index(header)
        end = text.find("\n## ", start + 1)
        end = len(text) if end == -1 else end
        body = _with_header(text[start:end], columns)
        body = re.sub(r"Command: `[^`]*`", f"Command: `{command}`", body, count=1)
        pattern = re.compile(r"^\| " + re.escape(key) + r" \|.*$", re.MULTILINE)
        if pattern.search(body):
            body = pattern.sub(line.replace("\\", "\\\\"), body, count=1)
        else:
            body = body.rstrip("\n") + "\n" + line + "\n"
        gap = "\n" if not body.endswith("\n\n") and end < len(text) else ""
        text = text[:start] + body + gap + text[end:]
    DOC.write_text(text)
