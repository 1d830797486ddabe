"""Progress for long work: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with ``\\r``; in a log file (stderr redirected, CI) that is one ever-growing line of
joined bars, or nothing at all with ``disable=None``. ``bar(...)`` gives tqdm when stderr is a terminal and
otherwise a ``PlainProgress``, which writes ``desc: 40% (1,234 / 3,085 tok)`` each time another ``EVERY``
percent is done, and a last line at the end.
"""

from __future__ import annotations

import sys

EVERY = 10  # percent between two plain lines


class PlainProgress:
    """The part of tqdm's interface sifirdan uses (update, close, set_postfix, write, clear, refresh, context
    manager), as plain lines on stderr."""

    def __init__(self, total: int | float | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self._next = EVERY
        self._closed = False

    def _line(self, pct: int) -> None:
        total = f"{self.total:,.0f}" if self.total else "?"
        print(f"{self.desc}: {pct}% ({self.n:,.0f} / {total} {self.unit})", file=sys.stderr, flush=True)

    def update(self, n: int | float = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = int(100 * self.n / self.total)
        if pct >= self._next and pct < 100:
            self._line(pct - pct % EVERY)
            self._next = pct - pct % EVERY + EVERY

    def close(self) -> None:
        if not self._closed and self.total and self.n > 0:
            self._line(min(100, int(100 * self.n / self.total)))
        self._closed = True

    def set_postfix(self, **kwargs) -> None:
        pass

    def write(self, msg: str, file=None) -> None:
        print(msg, file=file or sys.stderr, flush=True)

    def clear(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total=None, desc: str = "", unit: str = "it", enabled: bool = True, **tqdm_kwargs):
    """A progress bar for ``total`` units: tqdm on a terminal, ``PlainProgress`` lines otherwise; disabled (a
    tqdm that shows nothing) when ``enabled`` is False."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, **tqdm_kwargs)
    return PlainProgress(total, desc, unit)
