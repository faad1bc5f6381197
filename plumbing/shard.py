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
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from plumbing.cli import fail

# A worker that finishes early waits this long at the end for the slowest one.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


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
    distributed: bool  # joined to the other torchrun workers
    label: str  # how progress bars and messages name this worker

    def takes(self, photo):
        """Whether this photo (a path) is this worker's."""
        return share_of(photo.name, self.count) == self.index

    def wait_for_all(self):
        """Under torchrun, return once every worker has reached this point."""
        if self.distributed:
            dist.barrier()

    def finish(self):
        """Wait for every worker, then leave the group: no worker's exit status ends the others' work."""
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def join(shard, device):
    """This process's Worker and device. Under torchrun, joins the other workers (nccl on CUDA, gloo
    elsewhere), and a CUDA device given without an index becomes the GPU of this LOCAL_RANK."""
    k, n = shard or (1, 1)
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        fail(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be whole numbers "
             "(torchrun sets them)")
    if not 0 <= rank < world:
        fail(f"RANK={rank} with WORLD_SIZE={world}: a rank is 0 to WORLD_SIZE - 1 (torchrun sets them)")
    distributed = world > 1
    if distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    names = [f"shard {k}/{n}"] * (shard is not None) + [f"rank {rank} of {world}"] * distributed
    label = ", ".join(names) or "photos"
    return Worker((k - 1) * world + rank, n * world, rank, distributed, label), device
