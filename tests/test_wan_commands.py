"""The commands with Wan as its users run it, on the tiny random Wan: attack.py and sample.py take --prompt and
--negative-prompt; a portrait photo gives a portrait video (the release's frame for the photo's shape); sample.py
writes the release's 24 fps; without --prompt each says in one line what it assumes; the flags are refused for other
models in one line."""
import json

import pytest
from PIL import Image

import attack
import sample
from test_hardening import run  # a command's main in-process -> (exit status, stderr)

pytestmark = pytest.mark.filterwarnings("ignore:tiny_wan:UserWarning")
FAST = ["--model", "tiny-wan", "--frames", "5", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "portrait.png"
    Image.radial_gradient("L").resize((60, 80)).convert("RGB").save(path)  # 3:4, 60 wide and 80 high
    return path


def test_sample_with_a_prompt_makes_a_portrait_video_at_24_fps(portrait, tmp_path, capsys):
    out = tmp_path / "video.gif"
    status, err = run(sample.main, ["--image", portrait, "--out", out, *FAST, "--prompt", "a cat walks",
                                    "--negative-prompt", "blurry"], capsys)
    assert status == 0, err
    with Image.open(out) as gif:
        # 24 fps is 41.7 ms a frame; GIF keeps hundredths of a second
        assert gif.size == (96, 128) and gif.n_frames == 5 and gif.info["duration"] == 40
    status, err = run(sample.main, ["--image", portrait, "--out", tmp_path / "example.gif", *FAST], capsys)
    assert status == 0 and "the release's example prompt" in err


def test_attack_with_a_prompt_and_without(portrait, tmp_path, capsys):
    out = tmp_path / "with.png"
    status, err = run(attack.main, ["--image", portrait, "--out", out, *FAST, "--steps", "2", "--prompt",
                                    "a cat walks", "--no-video-check"], capsys)
    assert status == 0, err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model_size"] == [128, 96] and report["settings"]["prompt"] == "a cat walks"
    assert "assumes" not in err
    out = tmp_path / "without.png"
    status, err = run(attack.main, ["--image", portrait, "--out", out, *FAST, "--steps", "1", "--no-video-check"],
                      capsys)
    assert status == 0 and "the attack assumes one of 3 plain prompts" in err
    assert "prompt" not in json.loads(out.with_suffix(".json").read_text())["settings"]


@pytest.mark.parametrize("main, args, message", [
    (attack.main, ["--model", "tiny", "--negative-prompt", "x"], "--negative-prompt: only for Wan"),
    (sample.main, ["--model", "tiny", "--negative-prompt", "x"], "--negative-prompt: only for Wan"),
    (attack.main, ["--model", "tiny-wan", "--height", "64"], "--height and --width: give both for Wan"),
])
def test_wan_flags_elsewhere_are_one_line_errors(portrait, tmp_path, capsys, main, args, message):
    out = ["--out", tmp_path / "o.gif"] if main is sample.main else ["--out", tmp_path / "o.png"]
    status, err = run(main, ["--image", portrait, *out, *args], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
    assert status == 2 and len(lines) == 1 and message in lines[0], err
