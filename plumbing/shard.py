"""Many workers over one list of photos. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) each process is
one worker, on its own GPU; `--shard K/N` makes one command the K-th of N (a Slurm array task, a shell
loop); both together split each of the N shares again among the torchrun workers.

Which worker takes a photo is decided by a SHA-256 hash of its file name, not by its place in the list:
a photo always goes to the same worker for a given number of workers, whatever other photos the folder
holds, so array tasks that start hours apart agree even if photos arrived in between. The shares are
even only on average (1000 photos on 8 workers: 125 ± 10 each, one standard deviation). A photo's
result does not depend on the worker that made it: every seed is per photo.
"""
import argparse
import datetime
import hashlib
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from plumbing.cli import FAILURE, fail, one_line

# Under torchrun the workers meet through torchrun's key-value store, counting themselves in and polling the
# count every POLL_S seconds from Python, so that Ctrl-C ends any wait: at the start, for at most
# --join-timeout seconds (JOIN_TIMEOUT_S by default: torchrun starts its workers together, a Slurm job's
# nodes may start minutes apart), and at the end, where a worker that finishes early waits this long for the
# slowest one.
JOIN_TIMEOUT_S = 600
FINISH_TIMEOUT_S = 7 * 24 * 3600
POLL_S = 0.5
STORE_OP_TIMEOUT = datetime.timedelta(seconds=60)  # one read or write of the store, once it is reached


def parse_shard(text):
    """A flag type: 'K/N' with 1 <= K <= N -> (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 2/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def share_of(name, count):
    """The worker (0 to count - 1) that takes the photo with this file name."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Worker:
    index: int  # 0 to count - 1, over every worker of the run
    count: int
    rank: int  # torchrun's RANK, 0 without torchrun
    world: int  # torchrun's WORLD_SIZE, 1 without torchrun
    store: object  # torchrun's store, where the workers meet; None without torchrun
    label: str  # how progress bars and messages name this worker
    meetings: itertools.count = field(default_factory=itertools.count, compare=False)

    def takes(self, photo):
        """Whether this photo (a path) is this worker's."""
        return share_of(photo.name, self.count) == self.index

    def wait_for_all(self):
        """Under torchrun, return once every worker has reached this point."""
        if self.store is not None:
            meet(self.store, f"meeting{next(self.meetings)}", self.world, FINISH_TIMEOUT_S,
                 "the other workers did not finish")

    def finish(self):
        """Wait for every worker, then leave: no worker's exit status ends the others' work. The worker that
        holds the store (rank 0, unless torchrun's agent holds it) leaves last, once every other has read it."""
        if self.store is not None:
            self.wait_for_all()
            self.store.add("left", 1)
            if self.rank == 0:
                meet(self.store, "left", self.world, STORE_OP_TIMEOUT.total_seconds(),
                     "the other workers did not leave", count_in=False)


def meet(store, key, world, timeout_s, problem, count_in=True):
    """Count this worker in at `key`, then wait until all `world` workers have, for at most `timeout_s`;
    polled from Python, so that Ctrl-C and SIGTERM end the wait."""
    if count_in:
        store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    while (present := store.add(key, 0)) < world:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{problem} within {timeout_s:g} s ({present} of {world} did)")
        time.sleep(POLL_S)


def reach_store(rank, world, timeout_s):
    """torchrun's store, at MASTER_ADDR:MASTER_PORT, tried every POLL_S seconds for at most `timeout_s`.
    torchrun's agent holds it (TORCHELASTIC_USE_AGENT_STORE), or else rank 0 does, as torch's env:// does."""
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        fail("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (a host and a port number): run under torchrun, "
             "which sets them")
    holds = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store = dist.TCPStore(host, port, world, is_master=holds, wait_for_workers=False,
                                  timeout=datetime.timedelta(seconds=POLL_S))
            break
        except RuntimeError as e:
            if holds or time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach the workers' store at {host}:{port} ({e})") from None
            time.sleep(POLL_S)
    store.set_timeout(STORE_OP_TIMEOUT)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"i2vguard/{restart}/", store)  # a restarted run's workers meet afresh


def join(shard, device, join_timeout_s=JOIN_TIMEOUT_S):
    """This process's Worker and device. Under torchrun, waits at most `join_timeout_s` for every worker to
    start, and a CUDA device given without an index becomes the GPU of this LOCAL_RANK."""
    k, n = shard or (1, 1)
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        fail(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be whole numbers "
             "(torchrun sets them)")
    if not 0 <= rank < world:
        fail(f"RANK={rank} with WORLD_SIZE={world}: a rank is 0 to WORLD_SIZE - 1 (torchrun sets them)")
    names = [f"shard {k}/{n}"] * (shard is not None) + [f"rank {rank} of {world}"] * (world > 1)
    label = ", ".join(names) or "photos"
    store = None
    if world > 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        store = reach_store(rank, world, join_timeout_s)
        store.add("joined", 1)
        if store.add("joined", 0) < world:
            print(f"{label}: waiting up to {join_timeout_s:g} s (--join-timeout) for the other workers to start",
                  file=sys.stderr)
        meet(store, "joined", world, join_timeout_s, "the other workers did not start", count_in=False)
    return Worker((k - 1) * world + rank, n * world, rank, world, store, label), device


def each_photo(worker, photos, done, work, what="protected"):
    """This worker's share of `photos`, one at a time, with a progress bar over several: a photo done(photo) says
    is done is skipped; work(photo) makes each other one and returns its line for stdout. A photo that fails is
    said in one line on stderr, and the others go on; then how many were made, and status 1 if any failed."""
    mine, failures = [photo for photo in photos if worker.takes(photo)], []
    with tqdm(mine, desc=worker.label, unit="photo", disable=len(photos) < 2) as bar:
        for photo in bar:
            if done(photo):
                bar.write(f"{photo}: done already, skipped", file=sys.stderr)
                continue
            try:
                bar.write(work(photo))
            except (ValueError, OSError, RuntimeError, MemoryError) as e:
                failures.append(photo)
                bar.write(f"{Path(sys.argv[0]).name}: error: {photo}: {one_line(e)}", file=sys.stderr)
    if len(photos) > 1:
        of_all = f" (this worker's share of {len(photos)}: {worker.label})" if worker.count > 1 else ""
        print(f"{len(mine) - len(failures)} of {len(mine)} photos {what}{of_all}", file=sys.stderr)
    worker.finish()
    if failures:
        sys.exit(FAILURE)
