"""submit's reading bar: how far a large file has been read, on stderr, and only on a terminal.

A script (stderr not a terminal) sees no bar at all, only submit's one summary line.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich.progress only draws on a terminal: a script's submit never imports it
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from csvembed.reader import Source


class ReadProgress:
    """Bytes read of the file's size (compressed bytes for a compressed file) and rows/s.

    Started by `start`, once the submission id is out, so that the bar never sits above it.
    """

    def __init__(self, console: Console, source: Source) -> None:
        self.source = source
        self._progress: Progress | None = None
        self._console = console
        self._task: TaskID | None = None
        self._started = 0.0

    def start(self) -> None:
        if not self._console.is_terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            # A file name is text, not rich markup: "[/x].csv" must not be read as a closing tag.
            TextColumn("reading {task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]:,} rows  {task.fields[rate]:,.0f} rows/s", markup=False),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
            # stdout carries the id: the bar must not take it over.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(
            self.source.name, total=self.source.size, completed=self.source.bytes_read, rows=0, rate=0.0
        )
        self._started = time.monotonic()
        self._progress.start()

    def update(self, rows: int) -> None:
        if self._progress is None or self._task is None:
            return
        rate = rows / max(time.monotonic() - self._started, 1e-3)
        self._progress.update(self._task, completed=self.source.bytes_read, rows=rows, rate=rate)

    def __enter__(self) -> ReadProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
