"""A command's first second or two, while its modules import (torch above all): Ctrl-C there ends in one line
and status 130, as it does once the command runs, not in Python's traceback. Imports only the standard
library, so that a command can call it before it imports anything else:

    if __name__ == "__main__":
        from plumbing.starting import quiet_start
        quiet_start()

Once main() runs, the command's wrapper (cli.py: command) gives Ctrl-C back to Python's own handler.
"""
import os
import signal
import sys
from pathlib import Path


def quiet_start():
    signal.signal(signal.SIGINT, interrupted_while_starting)


def interrupted_while_starting(signum, frame):
    """Nothing has been written yet, so the process ends at once, without unwinding half-made imports."""
    print(f"{Path(sys.argv[0]).name}: error: interrupted (Ctrl-C) while starting; nothing was written",
          file=sys.stderr, flush=True)
    os._exit(130)  # cli.INTERRUPTED
