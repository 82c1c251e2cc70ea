"""A driver's steps applied one by one: each step's outcome, a failing one not stopping the
others (the next resync plans again). Shared by the host halves of the drivers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from splice.agents.netns import NetnsError

from .nftables.apply import NftError

# What a failing host step raises: the kernel (netlink, /proc), a command, a value refused.
STEP_ERRORS: tuple[type[BaseException], ...] = (
    OSError, NetlinkError, NetnsError, NftError, subprocess.SubprocessError, ValueError)


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Any
    ok: bool
    reason: str = ""


def apply_each(ops: Iterable[Any], step: Callable[[Any], None]) -> list[Outcome]:
    """`step` on every op in order; its outcome, failed with the error's words if it raised."""
    out = []
    for op in ops:
        try:
            step(op)
            out.append(Outcome(op, True))
        except STEP_ERRORS as e:
            out.append(Outcome(op, False, str(e)))
    return out
