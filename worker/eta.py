"""A job's time left, from how fast it is moving now.

Not elapsed x (1 - f) / f since the process started: a resumed distillation starts at step 150 of 200
(f = 0.75 after a few seconds, so that rule promised seconds for minutes of work), and a job whose model
took a minute to load would carry that minute into every later estimate. Here the rate is measured
over the current phase only (loading, calibration, training...: `restart` at each phase), over its last
`window_s` seconds, so a resume, a slow start or a change of pace shows in the ETA within one window.
"""

from __future__ import annotations

from collections import deque


class RateEta:
    def __init__(self, window_s: float = 60.0, min_span_s: float = 1.0):
        self.window_s = window_s
        self.min_span_s = min_span_s  # below this, one report's jitter would be the whole rate
        self._points: deque[tuple[float, float]] = deque()

    def restart(self) -> None:
        """A new phase: its rate is measured from its own first report on."""
        self._points.clear()

    def update(self, t: float, fraction: float) -> float | None:
        """Record progress `fraction` (0..1 of the whole job) at time `t` (seconds); the seconds left at
        the current rate, or None while the rate is not known yet (one report, or no progress)."""
        if self._points and fraction < self._points[-1][1]:
            self._points.clear()  # went backwards (a retried phase): the old points say nothing
        if len(self._points) >= 2 and t - self._points[-2][0] < 0.5:
            self._points[-1] = (t, fraction)  # a fast loop: one point per half second is plenty
        else:
            self._points.append((t, fraction))
        # Keep the newest point at or before the window's start, so the span covers the whole window.
        while len(self._points) > 2 and t - self._points[1][0] >= self.window_s:
            self._points.popleft()
        t0, f0 = self._points[0]
        if t - t0 < self.min_span_s or fraction <= f0:
            return None
        rate = (fraction - f0) / (t - t0)
        return (1.0 - fraction) / rate
