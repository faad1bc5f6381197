"""The README's command lines, as a newcomer types them in a fresh clone: every `python ...` line of its bash blocks
parses with its command's own flags and names files the repository ships (or an earlier line makes); a line that
needs the hub's weights says so beside it; and the cheap lines run as written.

Run as written here: poses.py (seconds), with --out in a temporary folder. The others are only parsed: the toy's
first-screen line takes about half a minute and its training an hour (tests/test_toy.py runs the toy's command at
a test's size), toy.quality minutes, the test suite is this, and the hub lines need weights no test may download.
"""
import re
import shlex
from pathlib import Path

import pytest

import poses
from plumbing.flags import attack_flags, evaluate_flags, sample_flags
from toy import quality, train

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PARSERS = {"attack.py": lambda: attack_flags(""), "sample.py": lambda: sample_flags(""),
           "evaluate.py": lambda: evaluate_flags("", ["i2vguard"], ["i2vguard"]), "poses.py": poses.flags,
           "toy.train": train.flags, "toy.quality": quality.flags}
LOCAL_MODELS = ("toy", "tiny", "tiny-controlnext", "tiny-cogvideox", "tiny-wan")
INPUTS = ("--image", "--body", "--pose", "--mask")


def readme_lines():
    """(command line, its comment) of every `python` line in the README's bash blocks, in order; a block whose first
    line's comment says "every line here" lends that comment to each of its lines."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    lines = []
    for block in blocks:
        shared = ""
        for k, line in enumerate(block.splitlines()):
            command, _, comment = line.partition("  #")
            shared = comment if k == 0 and "every line here" in comment else shared
            if command.startswith("python ") and " pytest " not in command:
                lines.append((command.strip(), (comment + " " + shared).strip()))
    return lines


def parsed(command):
    """A README line -> (its command's name, its parsed flags)."""
    words = shlex.split(command)[1:]
    name = words.pop(1) if words[0] == "-m" else words[0]
    return name, PARSERS[name]().parse_args(words[1:] if words[0] != "-m" else words[1:])


def test_the_readme_gives_command_lines():
    names = [parsed(command)[0] for command, _ in readme_lines()]
    assert {"attack.py", "sample.py", "evaluate.py", "toy.train", "toy.quality"} <= set(names), names


@pytest.mark.parametrize("command, comment", readme_lines(), ids=[c for c, _ in readme_lines()])
def test_each_line_parses_names_shipped_files_and_says_when_it_needs_the_hub(command, comment):
    _, args = parsed(command)
    made = {parsed(c)[1].out for c, _ in readme_lines() if parsed(c)[0] == "toy.train"}  # my_toy, after its line
    for flag in INPUTS:
        paths = getattr(args, flag.lstrip("-"), None) or []
        for path in [paths] if isinstance(paths, str) else paths:
            assert (ROOT / path).exists(), f"{command}: {flag} {path} is not in the repository"
    model = getattr(args, "model", None)
    if model is None:  # poses.py and the toy's own commands need no weights from the hub
        return
    hub = model not in LOCAL_MODELS and model not in made
    assert not hub or "hub" in comment, f"{command}: needs the hub's weights and does not say so"
    assert hub or "hub" not in comment, f"{command}: says it needs the hub, but {model} ships here"


def test_the_prose_poses_line_runs_as_written(tmp_path, capsys):
    """The README's `python poses.py --body ... --out poses.gif` (in its prose) draws the shipped body's poses."""
    line = re.search(r"`(python poses\.py[^`]*)`", README.read_text(encoding="utf-8").replace("\n", " ")).group(1)
    words = shlex.split(line)[2:]
    words[words.index("--out") + 1] = str(tmp_path / "poses.gif")
    poses.main([w if not w.startswith("examples/") else str(ROOT / w) for w in words])
    assert (tmp_path / "poses.gif").stat().st_size > 0
    assert "fitted to the body" in capsys.readouterr().err
