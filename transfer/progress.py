"""Progress for people: a live bar on a terminal; where output goes to a file or a
pipe, one plain line when a long step ends, with no escape codes or carriage
returns."""

import logging
import os
import sys
import time

from transfer.lazy import keras

logger = logging.getLogger("transfer")


def seconds_since_start():
    """Wall seconds since this process started (Linux reads it from /proc, so imports
    count; elsewhere, since transfer was imported)."""
    try:
        with open("/proc/self/stat") as f:  # field 22: start time, clock ticks after boot
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return round(float(f.read().split()[0]) - started, 2)
    except (OSError, ValueError, IndexError):
        return round(time.monotonic() - _IMPORTED, 2)


_IMPORTED = time.monotonic()


def interactive():
    """Whether standard output is a terminal that can redraw a bar in place."""
    stream = sys.stdout
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def fit_verbosity():
    """Keras' `fit(verbose=...)`: its bar on a terminal, one line per epoch elsewhere."""
    return 1 if interactive() else 2


class Progress:
    """Counts steps of one long task: `update(done)` as it goes, `done()` at the end."""

    def __init__(self, description, total=None, unit="step"):
        self.description, self.total, self.unit = description, total, unit
        self.started = time.monotonic()
        self.count = 0
        self.bar = keras.utils.Progbar(total, unit_name=unit) if interactive() else None

    def update(self, count):
        self.count = count
        if self.bar is not None:
            self.bar.update(count)

    def done(self):
        if self.bar is not None:
            if self.total is None or self.count < self.total:  # else the bar has ended
                self.bar.update(self.count, finalize=True)
            return
        plural = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        logger.info(
            "%s: %d %s in %.1f s.",
            self.description,
            self.count,
            self.unit if self.count == 1 else plural,
            time.monotonic() - self.started,
        )
