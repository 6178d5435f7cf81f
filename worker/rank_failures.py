"""Which rank ended a torchrun launch, in one line, from the failure summary torchrun prints.

torchrun's "Root Cause (first observed failure)" is the failure with the earliest timestamp; a rank
killed from outside (SIGKILL: the kernel's out-of-memory killer, an operator) writes no error file, so
its timestamp is when the agent noticed, and a rank that failed because of it (gloo: "Connection closed
by peer" in its collective) is often named as the root cause instead, by the same second. So the cause
read here is a rank ended by a signal the agent does not send (it stops the others with SIGTERM); with
none, every failed rank and its exit code, and whether a collective timed out (a rank that hangs, alive
and silent, shows only as the others failing in a collective after PRUNESCOPE_DIST_TIMEOUT_S).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

_FAILURE = re.compile(
    r"host\s*:\s*(?P<host>\S+)\s+rank\s*:\s*(?P<rank>\d+) \(local_rank: (?P<local>\d+)\)\s+"
    r"exitcode\s*:\s*(?P<code>-?\d+) \(pid: (?P<pid>\d+)\)"
)

# What the ranks' own command says when it refuses its input (worker.cli.main: "prunescope distill: error: ...").
_CLI_ERROR = re.compile(r"^prunescope [\w-]+: error: .+$", re.MULTILINE)

# gloo: "Timed out waiting 5000ms for send operation to complete"; NCCL's watchdog: "WorkNCCL(...) ran
# for 600123 milliseconds before timing out".
_TIMEOUT = re.compile(r"Timed out waiting (?P<a>\d+)\s*ms|ran for (?P<b>\d+) milliseconds before timing out")


@dataclass(frozen=True)
class RankFailure:
    rank: int
    local_rank: int
    host: str
    exit_code: int  # negative: killed by that signal
    pid: int

    def describe(self) -> str:
        where = f"rank {self.rank} (local rank {self.local_rank} on {self.host}, pid {self.pid})"
        if self.exit_code >= 0:
            return f"{where} exited with code {self.exit_code}"
        try:
            name = signal.Signals(-self.exit_code).name
        except ValueError:
            name = f"signal {-self.exit_code}"
        why = " (out of memory, or killed from outside)" if name == "SIGKILL" else ""
        return f"{where} was killed by {name}{why}"


def rank_failures(log: str) -> list[RankFailure]:
    """The failures of torchrun's last summary in `log`, each rank once, in rank order."""
    found = {}
    for m in _FAILURE.finditer(log):
        found[int(m["rank"])] = RankFailure(
            int(m["rank"]), int(m["local"]), m["host"], int(m["code"]), int(m["pid"])
        )
    return [found[r] for r in sorted(found)]


def failure_reason(log: str) -> str | None:
    """One line naming the rank that ended the launch, or None when torchrun printed no summary."""
    failures = rank_failures(log)
    if not failures:
        return None
    killed = [f for f in failures if f.exit_code < 0 and f.exit_code != -signal.SIGTERM]
    if not killed:
        return "; ".join(f.describe() for f in failures) + _timed_out(log)
    after = [f"rank {f.rank}" for f in failures if f not in killed]
    then = f"; {', '.join(after)} ended after it" if after else ""
    return "; ".join(f.describe() for f in killed) + then


def command_error(log: str) -> str | None:
    """The first error line the ranks' command printed (every rank prints the same one for bad input),
    or None: the cause a user acts on, which would otherwise sit somewhere in the ranks' output."""
    m = _CLI_ERROR.search(log)
    return m[0] if m else None


def whole_lines(text: str) -> str:
    """`text` from its first line start: a tail cut at a byte count begins mid-word."""
    start = text.find("\n")
    return text if start < 0 else text[start + 1 :]


def _timed_out(log: str) -> str:
    """ ", after a collective timed out (...)" when a rank's error says so, else ""."""
    m = _TIMEOUT.search(log)
    if m is None:
        return ""
    seconds = int(m["a"] or m["b"]) / 1000
    return (
        f", after a collective timed out ({seconds:.0f} s, PRUNESCOPE_DIST_TIMEOUT_S): a rank stopped "
        "answering (hung, or far behind the others)"
    )
