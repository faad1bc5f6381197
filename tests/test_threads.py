"""The CPU threads a command takes by default (plumbing/cli.py): one per core that other work leaves free now, read
from the CPUs' busy and idle ticks over a moment, not from the load average, which still counts a command that
ended a minute ago."""
import itertools

import pytest
import torch

from plumbing import cli

STAT = """cpu  4000 0 400 1800 80 0 10 5 0 0
cpu0 1000 0 100 900 40 0 5 2 0 0
cpu1 3000 0 300 900 40 0 5 3 0 0
intr 14165984 0 0
ctxt 123
"""


def test_cpu_ticks_reads_the_cores_of_this_process(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    assert cli.cpu_ticks({0}, stat) == (1107, 2047)  # idle (900) and iowait (40) are not busy
    assert cli.cpu_ticks({0, 1}, stat) == (1107 + 3308, 2047 + 4248)
    with pytest.raises(ValueError):
        cli.cpu_ticks({5}, stat)


@pytest.mark.parametrize("busy_now, threads", [(0, 2), (1, 1), (2, 1)])
def test_threads_follow_the_cores_busy_now_not_the_last_minute(monkeypatch, busy_now, threads):
    """Two cores whose load average still reads 2 (a command just ended): both free now, two threads; one or two
    kept busy now, one thread."""
    ticks = itertools.count(step=100)  # each read 100 ticks on: busy_now of the two cores busy all the while
    monkeypatch.setattr(cli, "cpu_ticks", lambda cores: ((t := next(ticks)) * busy_now / 2, t))
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    cli.busy_cores.cache_clear()
    try:
        cli.choose_threads()
    finally:
        cli.busy_cores.cache_clear()
    assert chosen == [threads]


def test_without_proc_stat_the_load_average_decides(monkeypatch):
    def unreadable(cores):
        raise OSError("no /proc/stat")
    monkeypatch.setattr(cli, "cpu_ticks", unreadable)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    cli.busy_cores.cache_clear()
    try:
        assert cli.busy_cores(frozenset({0, 1})) == 1.2
    finally:
        cli.busy_cores.cache_clear()
