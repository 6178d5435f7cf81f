"""Which device a worker serves, checked once at start so a worker never accepts work it cannot run."""

from __future__ import annotations

import re


class DeviceUnavailable(RuntimeError):
    pass


def check_device(device: str) -> str:
    """Return the canonical device name, or raise `DeviceUnavailable` with the reason."""
    if device == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise DeviceUnavailable(f"unknown device {device!r}: use cpu or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device} requested but CUDA is not available on this machine")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"device {device} requested but this machine has {count} CUDA device(s)")
    return f"cuda:{index}"
