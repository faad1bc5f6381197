"""Many workers over one folder of photos (CPU, gloo, --model tiny): torchrun with 2 workers and
--shard 1/2 + 2/2 each protect every photo exactly once, with the bytes of a single-process run; an
interrupted sharded run resumes where it stopped (scripts/protect.slurm runs the second shard);
torchrun evaluate.py writes one table over all the photos, which --merge-only rebuilds."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_hardening import refused, run, run_both

import attack
import evaluate
from plumbing.shard import join, share_of

ROOT = Path(attack.__file__).parent
TINY = ["--model", "tiny", "--height", "64", "--width", "64", "--frames", "3", "--sample-steps", "2"]
ATTACK = TINY + ["--steps", "1"]
NAMES = ["a.png", "b.png", "c.png", "d.png", "e.png"]  # shares of 2: a, b, d to the first; c, e to the second


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one thread, as torchrun gives each of its workers: the random tiny network
    turns the last-bit differences of another thread count into other bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(script, args):
    """`script` under torchrun with 2 CPU workers -> the finished process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", script]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def outputs(folder):
    """{file name: bytes} of the guarded photos in `folder`."""
    return {p.name: p.read_bytes() for p in folder.glob("*.guarded.png")}


def protected(stdout):
    """The photos a run says it protected, one entry per time."""
    return sorted(Path(line.split(" -> ")[0]).name for line in stdout.splitlines() if " -> " in line)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        Image.fromarray((rng.random((24 + 4 * i, 32, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def single_process(photos, tmp_path_factory):
    """The guarded photos of one process protecting the whole folder."""
    out = tmp_path_factory.mktemp("single")
    assert attack.main(["--image", str(photos), "--out", str(out)] + ATTACK) is None
    return outputs(out)


def test_the_split_is_stable_and_shares_every_photo_once():
    names = [f"photo{i}.png" for i in range(1000)]
    for count in (2, 3, 8):
        shares = [share_of(name, count) for name in names]
        assert shares == [share_of(name, count) for name in reversed(names)][::-1]  # not by place in the list
        assert set(shares) == set(range(count)) and min(map(shares.count, range(count))) > 1000 / count * 0.8
    assert [share_of(name, 2) for name in NAMES] == [0, 0, 1, 0, 1]


def test_torchrun_protects_each_photo_once_with_single_process_bytes(photos, single_process, tmp_path):
    folder = shutil.copytree(photos, tmp_path / "photos")
    (folder / "broken.png").write_bytes(b"not an image")  # its worker goes on, and waits for the other
    result = torchrun("attack.py", ["--image", folder, "--out", tmp_path / "out"] + ATTACK)
    assert result.returncode != 0 and result.stderr.count("error: ") >= 1 and "broken.png" in result.stderr
    assert protected(result.stdout) == NAMES
    assert "rank 0 of 2" in result.stderr and "rank 1 of 2" in result.stderr  # each worker's bar names it
    assert outputs(tmp_path / "out") == single_process


def test_shards_resume_after_an_interruption_with_single_process_bytes(photos, single_process, tmp_path, capsys,
                                                                       monkeypatch):
    args = ["--image", photos, "--out", tmp_path / "out"] + ATTACK
    protect_file, calls = attack.protect_file, []

    def interrupted_at_the_second_photo(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return protect_file(*a, **kw)
    monkeypatch.setattr(attack, "protect_file", interrupted_at_the_second_photo)
    status, out, _ = run_both(attack.main, args + ["--shard", "1/2"], capsys)
    assert status == 130 and protected(out) == ["a.png"]
    first = (tmp_path / "out/a.guarded.png").stat().st_mtime_ns
    monkeypatch.undo()

    status, out, err = run_both(attack.main, args + ["--shard", "1/2"], capsys)
    assert status == 0 and protected(out) == ["b.png", "d.png"] and "a.png: done already, skipped" in err
    assert (tmp_path / "out/a.guarded.png").stat().st_mtime_ns == first
    env = os.environ | {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "PYTHON": sys.executable,
                        "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "scripts/protect.slurm", photos, tmp_path / "out"] + ATTACK, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # the second task of an array
    assert result.returncode == 0 and protected(result.stdout) == ["c.png", "e.png"], result.stderr
    assert "shard 2/2" in result.stderr
    assert outputs(tmp_path / "out") == single_process


def test_torchrun_evaluate_writes_one_table_that_merge_only_rebuilds(photos, tmp_path, capsys):
    out = tmp_path / "out"
    result = torchrun("evaluate.py", ["--image", photos, "--out", out, "--methods", "random-sign"] + ATTACK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Table 1") == 1 and "5 of 5 photos evaluated" in result.stderr
    assert "| Random ±eps noise image | 5 |" in (out / "tables.md").read_text()
    assert sorted(r["photo"] for r in json.loads((out / "results.json").read_text())) == NAMES
    tables = {name: (out / name).read_bytes() for name in evaluate.RUN_FILES}
    for name in evaluate.RUN_FILES:
        (out / name).unlink()
    assert run(evaluate.main, ["--merge-only", "--out", out], capsys)[0] == 0
    assert {name: (out / name).read_bytes() for name in evaluate.RUN_FILES} == tables


@pytest.mark.parametrize("rank, world, message", [("5", "2", "a rank is 0 to WORLD_SIZE - 1"),
                                                  ("x", "2", "must be whole numbers")])
def test_a_rank_outside_the_world_is_refused_at_once(monkeypatch, capsys, rank, world, message):
    """RANK=5 WORLD_SIZE=2 would wait for peers that never come: refused in one line, status 2."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(SystemExit) as e:
        join(None, torch.device("cpu"))
    assert e.value.code == 2 and message in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_rank_0_ends_the_wait_at_the_join_timeout(photos, tmp_path, monkeypatch, capsys):
    """Rank 1 of 2 with no rank 0 to hold the store: after --join-timeout, one line, status 1, nothing written."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    start = time.monotonic()
    error = refused(attack.main, ["--image", photos, "--out", tmp_path / "out", "--join-timeout", "2"] + ATTACK,
                    tmp_path, capsys, 1)
    assert "cannot reach the workers' store" in error and time.monotonic() - start < 30


def test_ctrl_c_ends_the_wait_for_a_missing_peer(photos, tmp_path):
    """Rank 0 of 2 holds the store and waits for a rank 1 that never starts: Ctrl-C ends the wait at once
    (status 130, one error line, no traceback, nothing written), long before the join timeout."""
    env = os.environ | {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                        "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "attack.py", "--image", str(photos), "--out", str(out)]
                               + [str(a) for a in ATTACK], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting up to 600 s (--join-timeout)" in process.stderr.readline()
        process.send_signal(signal.SIGINT)
        status, err = process.wait(timeout=30), process.stderr.read()
    finally:
        process.kill()
    assert status == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "attack.py: error: interrupted (Ctrl-C); the outputs finished before it are complete, nothing else was written"]
    assert not out.exists()
