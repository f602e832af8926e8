"""Progress lines for long stages. The math reports ``progress(done, total)`` through a callback it is handed; this
turns those calls into lines for whoever runs the stage (``say``: stderr at the CLI, a logger in the flow), at most
one every ``every_s`` seconds and none for work that ends sooner, each with the elapsed time and an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from optsteps.pipeline.plan import _eta

EVERY_S = 10.0  # seconds between two progress lines (and before the first)


class Progress:
    """``progress(done, total)`` after each unit of ``label``'s work (shards, iterations); says
    ``"<label>: <unit> done/total (p%), <elapsed> elapsed, ETA <t>"`` through ``say`` when ``every_s`` seconds have
    passed since the last line (the first after ``every_s``), and a last line when work that printed one ends.
    ``progress(0, total)`` marks the start of the work (after its checks): the clock starts, and ``intro(total)``, if
    given, is said. ``bound``: ``total`` is an upper bound (an optimiser's iteration budget), so the ETA is one too."""

    def __init__(
        self,
        label: str,
        say: Callable[[str], None],
        unit: str = "step",
        every_s: float = EVERY_S,
        bound: bool = False,
        clock: Callable[[], float] = time.monotonic,
        intro: Callable[[int], str] | None = None,
    ):
        self.label, self.say, self.unit, self.every_s, self.bound, self.clock = label, say, unit, every_s, bound, clock
        self.intro = intro
        self.t0 = self.last = clock()
        self.said = self.ended = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done == 0:
            self.t0 = self.last = now
            if self.intro is not None:
                self.say(f"{self.label}: {self.intro(total)}")
            return
        finished = done >= total
        if self.ended or not (now - self.last >= self.every_s or (finished and self.said)):
            return
        self.last, self.said, self.ended = now, True, finished
        elapsed = now - self.t0
        line = f"{self.label}: {self.unit} {done}/{total} ({100 * done / max(total, 1):.0f}%), {_eta(elapsed)} elapsed"
        if finished:
            line += ", done"
        elif done > 0:
            line += f", ETA {'≤ ' if self.bound else ''}{_eta(elapsed / done * (total - done))}"
        self.say(line)


def progress_for(
    label: str, say: Callable[[str], None] | None, unit: str, bound: bool = False, intro=None
) -> Progress | None:
    """A ``Progress`` for ``say``, or None when nobody listens."""
    return None if say is None else Progress(label, say, unit, every_s=EVERY_S, bound=bound, intro=intro)
