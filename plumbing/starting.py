"""A command's first second or two, while its modules import (torch above all): Ctrl-C or SIGTERM there ends in
one line and status 130 or 143, as it does once the command runs, not in Python's traceback or a silent -15.
Imports only the standard library, so that a command can call it before it imports anything else:

    if __name__ == "__main__":
        from plumbing.starting import quiet_start
        quiet_start()

Once main() runs, the command's wrapper (cli.py: command) puts its own handlers in place of these.
"""
import os
import signal
import sys
from pathlib import Path

# signal: (what the line calls it, the exit status: cli.INTERRUPTED and cli.TERMINATED)
STOPS = {signal.SIGINT: ("interrupted (Ctrl-C)", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}


def quiet_start():
    for signum in STOPS:
        signal.signal(signum, stopped_while_starting)


def stopped_while_starting(signum, frame):
    """Nothing has been written yet, so the process ends at once, without unwinding half-made imports."""
    what, status = STOPS[signum]
    print(f"{Path(sys.argv[0]).name}: error: {what} while starting; nothing was written", file=sys.stderr, flush=True)
    os._exit(status)
