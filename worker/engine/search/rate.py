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


def no_rate_reason(scored: int, seconds: float) -> str | None:
    """Why `candidates_per_minute` gave no rate, in words the dashboard shows beside its "—" (None when
    it gave one): too few candidates is the usual reason in a small search, not a short time."""
    if scored < MIN_CANDIDATES:
        return f"too few candidates to rate: {scored}, fewer than {MIN_CANDIDATES}"
    if not seconds >= MIN_SECONDS:
        return f"too quick to time: under {MIN_SECONDS:g} s of scoring"
    return None
