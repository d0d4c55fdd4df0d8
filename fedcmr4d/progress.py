"""The one progress-bar factory (rich) for training, sampling and data commands.

Bars go to stderr, so a command's machine-read line on stdout (e.g. ``sample``'s JSON) stays
clean. ``progress_bar(False)`` is a context that yields ``None``: callers write
``with progress_bar(enabled) as bar:`` and skip updates when ``bar is None``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(*, item: bool = False, console: Console | None = None) -> Progress:
    """A bar: description, bar, done/total, elapsed and remaining time.

    Args:
        item: also show the task's ``current`` field (e.g. the subject being written); tasks
            must then be added with ``current=...``.
        console: where to draw (default: a stderr console).
    """
    columns: list[str | ProgressColumn] = [
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if item:
        columns.append(TextColumn("{task.fields[current]}"))
    return Progress(*columns, console=console or Console(stderr=True), transient=False)


def progress_bar(
    enabled: bool, *, item: bool = False, console: Console | None = None
) -> AbstractContextManager[Progress | None]:
    """:func:`make_progress` when ``enabled``, else a context that yields ``None``."""
    if not enabled:
        return nullcontext(None)
    return make_progress(item=item, console=console)
