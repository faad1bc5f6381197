"""Every small file the project reads (a body's keypoints, a config.json, a safetensors index, a tokenizer, a
report of an earlier run) is read here, and only if it is a regular file no larger than its kind may be: a FIFO
would block the read forever, /dev/zero or a file of gigabytes would fill the memory. Photos go through
photos.py and weights through safetensors. Imports only the standard library, so that weights.py may use it.
"""
import json
import os
import stat

MiB = 2**20
# The most bytes a file of each kind may hold: far above the releases' own (a config.json or a body holds a few
# KiB, Wan's umT5 tokenizer.json 16 MiB, a report of many steps a few MiB).
LIMITS = {"body": MiB, "config": MiB, "index": 16 * MiB, "tokenizer": 64 * MiB, "report": 64 * MiB}


def read_bytes(path, kind):
    """The bytes of a regular file of `kind` (a key of LIMITS); anything else is a ValueError that says why (the
    caller names the file), or an OSError for a file that cannot be opened. The file is checked before it is
    opened, and the open file again (it may have been replaced in between)."""
    check_regular(os.stat(path), kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO put there since the check does not block
    with os.fdopen(fd, "rb") as f:
        check_regular(os.fstat(fd), kind)
        data = f.read(LIMITS[kind] + 1)
    if len(data) > LIMITS[kind]:  # it grew since
        raise ValueError(too_large(kind))
    return data


def check_regular(status, kind):
    if not stat.S_ISREG(status.st_mode):
        raise ValueError("not a regular file (a folder, a FIFO or a device)")
    if status.st_size > LIMITS[kind]:
        raise ValueError(too_large(kind))


def too_large(kind):
    return f"larger than a {kind} file may be ({LIMITS[kind] // MiB} MiB)"


def read_json(path, kind):
    """The value a JSON file of `kind` holds (read_bytes; UTF-8, with or without a byte order mark). Any problem is a
    ValueError, or an OSError for a file that cannot be opened."""
    try:
        return json.loads(read_bytes(path, kind).decode("utf-8-sig"))
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON text ({type(e).__name__})") from None
