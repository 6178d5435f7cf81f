"""How fast a search scores candidates, once that is worth saying.

A rate from the first candidates or the first second of scoring swings wildly (a warm cache, one slow
batch, a tiny sample decide it: "15600 per minute" from 30 candidates in 0.1 s), so it is given only
after both enough candidates and enough time; before that it is None and the dashboard shows "—".
"""

from __future__ import annotations

MIN_CANDIDATES = 10
MIN_SECONDS = 5.0


def candidates_per_minute(scored: int, seconds: float) -> float | None:
    """Candidates scored per minute over `seconds` of scoring; None until at least MIN_CANDIDATES were
    scored over at least MIN_SECONDS."""
    if scored < MIN_CANDIDATES or not seconds >= MIN_SECONDS:
        return None
    return round(60.0 * scored / seconds, 1)
