"""The `splice` command's entry point: a stop signal during start-up is never lost.

Importing the CLI (typer, rich, the verbs and what they import) takes a second or more on a
busy machine, and a library that guards an optional import with a bare ``except:`` would swallow
the KeyboardInterrupt of a Ctrl-C landing there: `splice up` would then go on and serve. So
until the imports are done a stop signal is only recorded; then a recorded one ends the process
the shell's way (128 + the signal: nothing of Splice exists yet), and the verbs install their
own handling.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main() -> None:
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # an ignored signal (nohup) stays ignored
            signal.signal(sig, record)
    from splice.cli import main as run_cli  # the slow part

    if received:
        sys.stderr.write(f"splice: {signal.Signals(received[0]).name} while starting\n")
        os._exit(128 + received[0])
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    run_cli()


if __name__ == "__main__":
    main()
