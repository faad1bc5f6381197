"""Shared test setup: no network, repo root importable, a fixed seed for every test."""
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests must never reach the hub; set before any HF import
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402
import torch  # noqa: E402

from plumbing.cli import choose_threads  # noqa: E402

# As the commands do: a thread per free core, one when the machine is busy, where threads waiting for each
# other made the suite several times slower. Under pytest-xdist (-n) the cores are shared among its workers, and
# the commands the tests run (in this process or their own) keep that share: they leave OMP_NUM_THREADS's alone,
# where a look at the cores busy now could catch the other workers idle for a moment.
workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
if workers > 1:
    os.environ["OMP_NUM_THREADS"] = str(choose_threads(max(1, len(os.sched_getaffinity(0)) // workers)))
else:
    choose_threads()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    # tiny_svd warns loudly that it is untrained; tests use it on purpose
    config.addinivalue_line("filterwarnings", "ignore:tiny_svd:UserWarning")
