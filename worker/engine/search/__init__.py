"""Architecture search under budgets (issue 12): which student to cut the teacher to.

Modules, one job each: `budgets` (budget strings and the costs they limit, torch-free), `settings`
(the search's parameters, torch-free), `space` (the architectures and their plans, torch-free),
`latency` (measured shape speed with a file cache), `scoring` (held-out loss with shared work),
`runner` (`run_search`). API notes: /work/helper-notes/search-api.md and the docstrings.
"""

from __future__ import annotations

from worker.engine.search.budgets import Budget, parse_budget
from worker.engine.search.settings import SearchSettings


def run_search(*args, **kwargs):
    """See worker/engine/search/runner.py (imported lazily: it needs torch)."""
    from worker.engine.search.runner import run_search as _run

    return _run(*args, **kwargs)


__all__ = ["Budget", "SearchSettings", "parse_budget", "run_search"]
