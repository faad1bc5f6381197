"""Bad input, as a careless user or an adversary gives it, through the three commands: each case ends
with its exit status (2 usage, 1 failure, 130 Ctrl-C), one error line on stderr and no traceback, and
every file already there byte-identical, with no file written but the intended outputs. Photos are
tiny and most cases are refused before the model loads, so the whole file runs in about a minute."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from safetensors.torch import save_file

import attack
import evaluate
import pipelines
import poses as poses_command
import sample
import weights
from pipelines import svd as svd_pipeline
from pipelines import wan
from plumbing.cli import signals_held, write_files
from plumbing.flags import AESTHETIC_SOURCE, DINO_SOURCE
from plumbing.photos import MAX_PIXELS, MIN_SIDE
from weights import WeightsError, tiny_svd

ROOT = Path(attack.__file__).parent
TINY = ["--model", "tiny", "--height", "64", "--width", "64", "--frames", "3", "--sample-steps", "2"]
ATTACK = TINY + ["--steps", "1"]
RANDOM = TINY + ["--method", "random-sign"]  # no optimisation: the file handling alone
EVALUATE = TINY + ["--steps", "1", "--methods", "random-sign"]


# ---------------------------------------------------------------- helpers
def noise_photo(path, size=(24, 32), mode="RGB"):
    g = np.random.default_rng(len(str(path)))
    format = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # pic.json: a photo by another name
    Image.fromarray((g.random((*size, 3)) * 255).astype(np.uint8)).convert(mode).save(path, format=format)
    return path


@pytest.fixture
def photo(tmp_path):
    return noise_photo(tmp_path / "photo.png")


def write_png(path, width, height, bits, colour, rows=b""):
    """A PNG written by hand (Pillow cannot write 16-bit RGB); without rows it declares its size and holds
    no pixels, so only a reader that decodes before checking the size would notice."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def png16(path, array):
    """(H,W,3) or (H,W) uint16 -> a 16-bit RGB or gray PNG."""
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)  # each row: filter 0, big-endian samples
    return write_png(path, array.shape[1], array.shape[0], 16, 2 if array.ndim == 3 else 0, rows)


def snapshot(folder):
    """Every file (its bytes) and folder (None) under `folder`, hidden ones included."""
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def run_both(main, args, capsys):
    """A command's main in-process -> (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run(main, args, capsys):
    """A command's main in-process -> (exit status, stderr)."""
    status, _, err = run_both(main, args, capsys)
    return status, err


def refused(main, args, tmp_path, capsys, status, new=()):
    """Run a command that must stop: exit `status`, one error line and no traceback, the files under tmp_path
    unchanged, and nothing new but `new` (paths relative to tmp_path). Returns the error line."""
    before = snapshot(tmp_path)
    code, err = run(main, args, capsys)
    print(f"\n[{main.__module__}] exit {code}: {err.strip().splitlines()[-1]}")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == status and len(errors) == 1 and "Traceback" not in err, err
    if status == 2:  # usage errors are refused before any work: nothing else is said
        assert [line for line in err.splitlines() if not line.startswith("WARNING")] == errors
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == set(map(Path, new))
    return errors[0]


def tiny_with_nan(*args, **kwargs):
    svd = tiny_svd(0)
    svd.vae.encoder.conv_in.weight.data[0, 0, 0, 0] = float("nan")
    return svd


# ---------------------------------------------------------------- 1. non-finite numbers
@pytest.mark.parametrize("main, flag, value", [
    (attack.main, "--step-size", "nan"), (attack.main, "--eps", "nan"), (attack.main, "--alpha", "inf"),
    (attack.main, "--tau1", "nan"), (sample.main, "--noise-aug", "nan"), (sample.main, "--max-guidance", "inf"),
    (evaluate.main, "--eps", "nan")])
def test_non_finite_flags_are_refused(photo, tmp_path, capsys, main, flag, value):
    args = ["--image", photo, "--out", tmp_path / ("v.gif" if main is sample.main else "o"), flag, value]
    assert "finite" in refused(main, args + TINY, tmp_path, capsys, 2)


@pytest.mark.parametrize("case", ["sign", "gradient", "sample"])
def test_nan_weights_fail_before_anything_is_written(photo, tmp_path, capsys, monkeypatch, case):
    """A NaN in the weights once gave a black photo or video, or an update that silently did nothing."""
    if case == "sample":
        monkeypatch.setattr(sample, "load_model", tiny_with_nan)
        args = ["--image", photo, "--out", tmp_path / "v.gif"] + TINY
        assert "NaN" in refused(sample.main, args, tmp_path, capsys, 1)
    else:
        monkeypatch.setattr(pipelines, "load_model", tiny_with_nan)
        args = ["--image", photo, "--update", case, "--no-temporal", "--no-diffusion"] + ATTACK
        assert "not finite" in refused(attack.main, args, tmp_path, capsys, 1)


def test_report_of_an_unchanged_photo_is_strict_json(photo, tmp_path, capsys):
    """An all-black mask leaves the photo unchanged: its PSNR is infinite, written as null, not Infinity."""
    Image.new("L", (32, 24)).save(tmp_path / "mask.png")
    status, _ = run(attack.main, ["--image", photo, "--mask", tmp_path / "mask.png"] + RANDOM, capsys)
    assert status == 0
    report = json.loads((tmp_path / "photo.guarded.json").read_text(), parse_constant=pytest.fail)
    assert report["psnr_db"] is None and report["linf_8bit_levels"] == 0


# ---------------------------------------------------------------- 2. image modes
@pytest.mark.parametrize("bits", ["gray16", "rgb16"])
def test_16_bit_photos_are_scaled_not_clipped(tmp_path, capsys, bits):
    values = np.random.default_rng(0).integers(0, 65536, (24, 32) if bits == "gray16" else (24, 32, 3))
    path = png16(tmp_path / "deep.png", values.astype(np.uint16))
    assert run(attack.main, ["--image", path] + RANDOM, capsys)[0] == 0
    guarded = np.asarray(Image.open(tmp_path / "deep.guarded.png").convert("RGB")).astype(int)
    expected = values / 257 if bits == "gray16" else values >> 8  # gray scaled; RGB: Pillow keeps the high byte
    assert np.abs(guarded - (expected[..., None] if bits == "gray16" else expected)).max() <= 9  # 8 levels + rounding


@pytest.mark.parametrize("case", ["float", "int32", "animated"])
def test_unusable_modes_are_refused(tmp_path, capsys, case):
    if case == "animated":
        frames = [Image.new("RGB", (32, 24), c) for c in ("red", "blue")]
        frames[0].save(tmp_path / "x.gif", save_all=True, append_images=frames[1:])
        path = tmp_path / "x.gif"
    else:
        values = np.full((24, 32), 0.5, np.float32) if case == "float" else np.full((24, 32), 2**20, np.int32)
        path = tmp_path / "x.tif"
        Image.fromarray(values).save(path)
    message = refused(attack.main, ["--image", path] + RANDOM, tmp_path, capsys, 1)
    assert {"float": "floating-point", "int32": "32-bit", "animated": "2 frames"}[case] in message


@pytest.mark.parametrize("mode, space, kept", [("RGB", b"RGB ", True), ("L", b"GRAY", False), ("CMYK", b"CMYK", False)])
def test_colour_profile_is_kept_only_when_it_describes_rgb(tmp_path, capsys, mode, space, kept):
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[16:20] = space  # the profile's colour space, as a gray or CMYK profile declares it
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.open(noise_photo(tmp_path / "src.png")).convert(mode).save(path, icc_profile=bytes(profile))
    assert run(attack.main, ["--image", path] + RANDOM, capsys)[0] == 0
    with Image.open(tmp_path / "x.guarded.png") as guarded:
        assert guarded.mode == "RGB" and ("icc_profile" in guarded.info) == kept


# ---------------------------------------------------------------- 3. temporary files
def test_a_symlink_planted_at_a_temporary_name_is_not_followed(photo, tmp_path, capsys):
    out = tmp_path / "photo.guarded.png"
    os.symlink(photo, tmp_path / f".{out.name}.{os.getpid()}.tmp")  # the name temporary files once had
    before = photo.read_bytes()
    assert run(attack.main, ["--image", photo] + RANDOM, capsys)[0] == 0
    assert photo.read_bytes() == before and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [photo.name, out.name, "photo.guarded.json", f".{out.name}.{os.getpid()}.tmp"])


def test_files_are_written_all_or_nothing(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        write_files({tmp_path / "a.txt": b"a", tmp_path / "file" / "b.txt": b"b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # every target is checked before any is replaced: a folder in a later target's place spares the first
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(OSError, match="not a file; nothing was written"):
        write_files({tmp_path / "a.txt": b"new", tmp_path / "b.txt": b"b"})
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.txt", "b.txt", "file"]


def test_a_signal_while_writing_waits_until_every_file_is_written(tmp_path):
    # as a command sets it (cli.command): a process started in the background inherits Ctrl-C ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle: held
            write_files({tmp_path / "a.txt": b"a", tmp_path / "b.txt": b"b"})
            written = sorted(p.name for p in tmp_path.iterdir())
    signal.signal(signal.SIGINT, previous)
    assert written == ["a.txt", "b.txt"]


# ---------------------------------------------------------------- 4. overwrites and 5. collisions
@pytest.mark.parametrize("case", ["out is the mask", "output is a later input", "report is an input",
                                  "preview is an input", "out is not a png", "frame is the input",
                                  "evaluate table is an input"])
def test_no_output_lands_on_an_input(photo, tmp_path, capsys, case):
    mask = noise_photo(tmp_path / "mask.png")
    later = noise_photo(tmp_path / "photo.guarded.png")
    main, args = attack.main, {
        "out is the mask": ["--image", photo, "--mask", mask, "--out", mask],
        "output is a later input": ["--image", photo, later],
        "report is an input": ["--image", noise_photo(tmp_path / "pic.json"), "--out", tmp_path / "pic.png"],
        "preview is an input": ["--image", photo, noise_photo(tmp_path / "photo.guarded.after.gif"), "--preview"],
        "out is not a png": ["--image", photo, "--out", tmp_path / "x.json"],
        "frame is the input": ["--image", noise_photo(tmp_path / "frame_001.png"), "--out", tmp_path / "v.gif",
                               "--frames-dir", tmp_path],
        "evaluate table is an input": ["--image", photo, noise_photo(tmp_path / "tables.md"), "--out", tmp_path],
    }[case]
    main = {"frame is the input": sample.main, "evaluate table is an input": evaluate.main}.get(case, main)
    extra = ["--methods", "random-sign"] if main is evaluate.main else []
    refused(main, args + TINY + extra, tmp_path, capsys, 2)


@pytest.mark.parametrize("case", ["same stem, one folder", "same name, two folders", "evaluate, same stem"])
def test_two_photos_never_share_an_output(tmp_path, capsys, case):
    for path in ("in/x.png", "in/x.bmp", "A/p.png", "B/p.png"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        noise_photo(tmp_path / path)
    args = {"same stem, one folder": ["--image", tmp_path / "in"],
            "same name, two folders": ["--image", tmp_path / "A/p.png", tmp_path / "B/p.png", "--out", tmp_path / "o"],
            "evaluate, same stem": ["--image", tmp_path / "in", "--out", tmp_path / "o"]}[case]
    main = evaluate.main if case.startswith("evaluate") else attack.main
    assert "both be written" in refused(main, args + TINY, tmp_path, capsys, 2)


# ---------------------------------------------------------------- 6. small and huge
def test_a_too_small_photo_fails_alone_and_the_folder_goes_on(photo, tmp_path, capsys):
    noise_photo(tmp_path / "dot.png", size=(1, 1))
    noise_photo(tmp_path / "thin.png", size=(MIN_SIDE - 1, 40))
    before = snapshot(tmp_path)
    status, err = run(attack.main, ["--image", tmp_path, "--out", tmp_path / "out"] + RANDOM, capsys)
    assert status == 1 and err.count("error:") == 2 and "Traceback" not in err
    assert f"at least {MIN_SIDE} pixels" in err and "1 of 3 photos protected" in err
    assert set(snapshot(tmp_path)) - set(before) == {Path(p) for p in (
        "out", "out/photo.guarded.png", "out/photo.guarded.json")}


@pytest.mark.parametrize("side", [8000, 20000])  # above our limit; above Pillow's decompression-bomb guard
def test_a_huge_photo_is_refused_from_its_header(tmp_path, capsys, side):
    path = write_png(tmp_path / "huge.png", side, side, 8, 2)
    assert side * side > MAX_PIXELS
    assert "megapixels" in refused(attack.main, ["--image", path] + RANDOM, tmp_path, capsys, 1)


@pytest.mark.parametrize("main, flag, value", [(attack.main, "--frames", 1000000), (sample.main, "--frames", 1000000),
                                               (evaluate.main, "--height", 100000),
                                               (attack.main, "--sample-steps", 10**9)])
def test_sizes_beyond_the_limits_are_refused(photo, tmp_path, capsys, main, flag, value):
    out = tmp_path / ("v.gif" if main is sample.main else "o")
    assert "at most" in refused(main, ["--image", photo, "--out", out] + TINY + [flag, value], tmp_path, capsys, 2)


# ---------------------------------------------------------------- 7. weights configs and --variant
UNET = {"_class_name": "UNetSpatioTemporalConditionModel"}


@pytest.mark.parametrize("config", [[], "unet", None, "deep", UNET | {"num_attention_heads": 0},
                                    UNET | {"block_out_channels": "wide"}, UNET | {"layers_per_block": True},
                                    UNET | {"num_frames": -3}, UNET | {"num_attention_heads": [1, 2]},
                                    UNET | {"block_out_channels": [30, 30, 30, 30]}],
                         ids=["list", "string", "null", "deep", "0 heads", "wrong type", "bool", "negative",
                              "short tuple", "not a multiple of 32"])
def test_a_bad_config_is_one_weights_error(photo, tmp_path, capsys, config):
    (tmp_path / "svd/unet").mkdir(parents=True)
    text = "[" * 100000 + "]" * 100000 if config == "deep" else json.dumps(config)
    (tmp_path / "svd/unet/config.json").write_text(text)
    message = refused(attack.main, ["--image", photo] + ATTACK + ["--model", tmp_path / "svd"], tmp_path, capsys, 1)
    assert "unet/config.json" in message


def test_a_null_sample_size_is_read_as_diffusers_writes_it(tmp_path):
    """diffusers writes "sample_size": null when none is given; no layer uses it, so it is accepted. A null
    where a layer needs the value is still refused."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/config.json").write_text(json.dumps(UNET | {"sample_size": None}))
    assert weights.build_network(str(tmp_path), "unet").config.sample_size is None
    (tmp_path / "unet/config.json").write_text(json.dumps(UNET | {"num_frames": None}))
    with pytest.raises(WeightsError, match="num_frames = None: expected a positive integer"):
        weights.build_network(str(tmp_path), "unet")


def test_clip_heads_must_divide_its_width(tmp_path):
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"architectures": ["CLIPVisionModelWithProjection"], "hidden_size": 64, "num_attention_heads": 3}))
    with pytest.raises(WeightsError, match="not divisible"):
        weights.build_network(str(tmp_path), "image_encoder")


def test_variant_none_loads_plain_safetensors(photo, tmp_path, capsys):
    svd = tiny_svd(0)
    for folder, (_, _, class_name, stem) in weights.COMPONENTS.items():
        network, path = getattr(svd, folder), tmp_path / "svd" / folder
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"_class_name": class_name} | asdict(network.config)))
        save_file(network.state_dict(), path / f"{stem}.safetensors")
    args = ["--image", photo, "--out", tmp_path / "v.gif", "--model", tmp_path / "svd", "--height", 64, "--width", 64,
            "--frames", 2, "--sample-steps", 1]
    assert "fp16.safetensors" in refused(sample.main, args, tmp_path, capsys, 1)
    assert run(sample.main, args + ["--variant", "none"], capsys)[0] == 0
    assert Image.open(tmp_path / "v.gif").n_frames == 2


def test_what_is_not_a_file_is_skipped_in_a_folder_and_never_read(photo, tmp_path, capsys):
    """A folder or a FIFO named *.png among the photos is passed over; a FIFO where the report goes is
    neither read (resume) nor replaced: that photo fails in one line, status 1, without blocking."""
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    assert run(attack.main, ["--image", tmp_path, "--out", tmp_path / "out/"] + RANDOM, capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.guarded.json", "photo.guarded.png"]
    os.mkfifo(tmp_path / "p.guarded.json")
    assert "not a file" in refused(attack.main, ["--image", photo, "--out", tmp_path / "p.guarded.png"] + RANDOM,
                                   tmp_path, capsys, 1)


# ---------------------------------------------------------------- 8. other uncaught errors
@pytest.mark.parametrize("case", ["out folder is a file", "sample out is a folder", "frames-dir is a file",
                                  "seed too big", "negative seed", "meta device", "evaluate out is a file",
                                  "mask is a fifo", "output name too long"])
def test_other_bad_paths_and_values(photo, tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    (tmp_path / "v.gif").mkdir()
    os.mkfifo(tmp_path / "fifo.png")  # reading it would block forever
    two = [photo, noise_photo(tmp_path / "second.png")]
    main, args = {
        "out folder is a file": (attack.main, ["--image", *two, "--out", tmp_path / "file"]),
        "sample out is a folder": (sample.main, ["--image", photo, "--out", tmp_path / "v.gif"]),
        "frames-dir is a file": (sample.main, ["--image", photo, "--out", tmp_path / "w.gif",
                                               "--frames-dir", tmp_path / "file"]),
        "seed too big": (attack.main, ["--image", photo, "--seed", 2**63]),
        "negative seed": (sample.main, ["--image", photo, "--out", tmp_path / "w.gif", "--seed", -1]),
        "meta device": (attack.main, ["--image", photo, "--device", "meta"]),
        "evaluate out is a file": (evaluate.main, ["--image", photo, "--out", tmp_path / "file"]),
        "mask is a fifo": (attack.main, ["--image", photo, "--mask", tmp_path / "fifo.png"]),
        "output name too long": (attack.main, ["--image", photo, "--out", tmp_path / ("a" * 252 + ".png")]),
    }[case]
    refused(main, args + TINY, tmp_path, capsys, 2)


@pytest.mark.parametrize("case", ["trailing slash", "folder of one photo"])
def test_out_folder_for_one_photo(photo, tmp_path, capsys, case):
    source = photo if case == "trailing slash" else photo.parent
    out = str(tmp_path / "new") + ("/" if case == "trailing slash" else "")
    assert run(attack.main, ["--image", source, "--out", out] + RANDOM, capsys)[0] == 0
    assert (tmp_path / "new/photo.guarded.png").is_file() and (tmp_path / "new/photo.guarded.json").is_file()


# ---------------------------------------------------------------- 9. Ctrl-C
@pytest.mark.parametrize("main", [attack.main, sample.main])
def test_ctrl_c_is_one_line_and_leaves_nothing_half_written(photo, tmp_path, capsys, monkeypatch, main):
    """Interrupted while making the second preview video: the guarded photo was ready, and is not written alone."""
    calls, generate = [], sample.generate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 or main is sample.main:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(svd_pipeline if main is attack.main else sample, "generate", interrupted)
    args = ["--image", photo] + (RANDOM + ["--preview"] if main is attack.main else
                                 ["--out", tmp_path / "v.gif"] + TINY)
    assert "interrupted" in refused(main, args, tmp_path, capsys, 130)


@pytest.mark.parametrize("stop, said, status", [(signal.SIGINT, "interrupted (Ctrl-C)", 130),
                                                (signal.SIGTERM, "terminated (SIGTERM)", 143)])
@pytest.mark.parametrize("command", ["attack.py", "sample.py", "evaluate.py", "poses.py"])
def test_ctrl_c_while_the_modules_import_is_one_line(command, stop, said, status):
    """Ctrl-C or SIGTERM during the first second, while torch imports: status 130 or 143 and one line, not a
    traceback or a silent -15. Python's -X importtime names each module as it is imported, so the signal is sent
    once torch's begin."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", command, "--help"], cwd=ROOT, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in process.stderr:
            if line.split("|")[-1].strip() == "torch._utils_internal":  # among torch's first modules
                break
        process.send_signal(stop)
        code, err = process.wait(timeout=60), process.stderr.read()
    finally:
        process.kill()
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert code == status and lines == [f"{command}: error: {said} while starting; nothing was written"]


def test_sigterm_ends_a_command_as_ctrl_c_does(photo, tmp_path, capsys, monkeypatch):
    """Slurm's SIGTERM (at a cancel or the time limit): one line, status 143, nothing half written, and the
    handler the command found is back afterwards."""
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sample, "generate", terminated)
    assert "terminated (SIGTERM" in refused(sample.main, ["--image", photo, "--out", tmp_path / "v.gif"] + TINY,
                                            tmp_path, capsys, 143)
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- 10. evaluate.py
def test_evaluate_goes_on_past_a_bad_photo_and_remakes_a_corrupt_record(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    noise_photo(photos / "a.png")
    (photos / "b.png").write_bytes(b"not an image")
    (tmp_path / "out/a").mkdir(parents=True)
    (tmp_path / "out/a/metrics.json").write_text('{"videos": ')  # a run killed mid-write, by another tool
    status, err = run(evaluate.main, ["--image", photos, "--out", tmp_path / "out"] + EVALUATE, capsys)
    assert status == 1 and err.count("error:") == 1 and "b.png" in err and "Traceback" not in err
    assert "1 of 2 photos evaluated" in err
    record = json.loads((tmp_path / "out/a/metrics.json").read_text())
    assert record["settings"]["frames"] == 3 and record["settings"]["dtype"] == "float32"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"a", "tables.md", "results.csv", "results.json"}


def test_evaluate_refuses_to_resume_with_other_settings(photo, tmp_path, capsys):
    settings = dict(model="tiny", victim="tiny", variant="fp16", dtype="float32", eps=8 / 255, steps=1, seed=0,
                    video_seeds=[1, 2, 3], frames=3, sample_steps=2, height=64, width=64, decode_chunk=None,
                    no_judges=False, dino=DINO_SOURCE, aesthetic=AESTHETIC_SOURCE)
    (tmp_path / "out/photo").mkdir(parents=True)
    videos = {"original": [{"static": True}] * 3, "random-sign": [{"static": True}] * 3}
    (tmp_path / "out/photo/metrics.json").write_text(json.dumps({"photo": "photo.png", "video_seeds": [1, 2, 3],
                                                                 "videos": videos, "settings": settings}))
    args = ["--image", photo, "--out", tmp_path / "out"] + EVALUATE
    assert "eps" in refused(evaluate.main, args + ["--eps", "4/255", "--paper"], tmp_path, capsys, 2)
    # a record made before the budget could be chosen was made with the paper's
    assert "budget 'flat' there, 'perceptual' now" in refused(evaluate.main, args, tmp_path, capsys, 2)
    assert run(evaluate.main, args + ["--paper"], capsys)[0] == 0  # same settings: done already


def test_evaluate_creates_nothing_when_the_model_fails(photo, tmp_path, capsys):
    args = ["--image", photo, "--out", tmp_path / "out", "--model", tmp_path / "no-such-model"]
    refused(evaluate.main, args, tmp_path, capsys, 1)


# ---------------------------------------------------------------- 11. a newcomer's path
def test_offline_without_weights_fails_fast_and_says_what_to_do(photo, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing answers there
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "attack.py", "--image", photo], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    print(f"\n[offline] {time.perf_counter() - start:.1f} s: {result.stderr.strip()}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    for hint in ("--model toy", "--model tiny", "hf auth login", "licence"):
        assert hint in result.stderr
    assert time.perf_counter() - start < 60  # the hub's retries took about 25 s on their own


@pytest.mark.parametrize("main", [attack.main, sample.main, evaluate.main])
def test_help_says_each_default_once(capsys, main):
    with pytest.raises(SystemExit):
        main(["-h"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in text.split(" --")[1:]:
        assert flag.count("default") <= 1, flag
    assert "(default: None)" not in text and "(default: False)" not in text
    assert main is sample.main or "--eps EPS L_inf budget in [0,1] pixel units (default: 8/255" in text


def test_report_records_the_values_used_and_progress_is_labelled(photo, tmp_path, capsys):
    args = ["--image", photo, "--model", "tiny", "--height", 64, "--width", 64, "--sample-steps", 1, "--steps", 1,
            "--preview"]
    status, err = run(attack.main, args, capsys)
    assert status == 0
    settings = json.loads((tmp_path / "photo.guarded.json").read_text())["settings"]
    assert settings["frames"] == 6 and settings["dtype"] == "float32" and settings["low_memory"] is False
    assert "V_0" in err and "video of the guarded photo" in err and "total=" not in err


# ---------------------------------------------------------------- 12. one vocabulary
def test_image_and_sample_steps_mean_the_same_everywhere(photo, tmp_path, capsys):
    args = ["--image", photo, "--out", tmp_path / "v.gif", "--sample-steps", 1] + TINY[:-2]
    assert run(sample.main, args, capsys)[0] == 0
    for main in (attack.main, sample.main, evaluate.main):
        with pytest.raises(SystemExit):
            main(["-h"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--image" in text and "--sample-steps" in text and "bfloat16 on CUDA" in text
        assert "--seed SEED" in text and "(default: 0)" in text.split("--seed SEED")[-1][:80]
    assert "--photos" in text  # evaluate keeps its old name for --image


# ---------------------------------------------------------------- 13. inputs beyond the photos, and stale results
def test_outputs_never_touch_a_model_folder_or_a_pose_sequence(photo, tmp_path, capsys):
    """Every input, not only the photos: the files of a local model folder and of a pose sequence."""
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text("{}")
    args = ["--image", photo, "--model", model, "--out", model / "unet" / "config.png"] + RANDOM[2:]
    assert "inside the input folder" in refused(attack.main, args, tmp_path, capsys, 2)
    poses = tmp_path / "poses.gif"
    Image.new("RGB", (16, 16)).save(poses, save_all=True, append_images=[Image.new("RGB", (16, 16))] * 3)
    args = ["--image", photo, "--model", "tiny-controlnext", "--pose", poses, "--out", poses]
    assert "would overwrite the input" in refused(sample.main, args, tmp_path, capsys, 2)


def test_evaluate_keeps_every_photo_inside_out(tmp_path, capsys):
    """A photo named '...png' has the stem '..': its results stay in OUT/...png/, not in OUT's parent."""
    photos = tmp_path / "photos"
    photos.mkdir()
    noise_photo(photos / "...png")
    out = tmp_path / "runs" / "out"
    assert run(evaluate.main, ["--image", photos, "--out", out] + EVALUATE + ["--video-seeds", "1"], capsys)[0] == 0
    assert (out / "...png" / "metrics.json").is_file()
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"out"}


def test_resume_needs_the_same_inputs_and_the_outputs_still_there(photo, tmp_path, capsys):
    out = tmp_path / "g.png"
    args = ["--image", photo, "--out", out] + RANDOM + ["--no-video-check"]
    assert run(attack.main, args, capsys)[0] == 0
    assert "done already, skipped" in run(attack.main, args, capsys)[1]
    first = out.read_bytes()
    noise_photo(tmp_path / "another-picture.png").replace(photo)  # another picture, same name
    status, err = run(attack.main, args, capsys)
    assert status == 0 and "skipped" not in err and out.read_bytes() != first
    out.unlink()  # the guarded photo deleted, its report left
    status, err = run(attack.main, args, capsys)
    assert status == 0 and "skipped" not in err and out.is_file()


# ---------------------------------------------------------------- 14. body keypoints, poses.py, model folders
# A body in the pixels of a 32x64 photo (x, y), as a detector gives it
BODY = [[16, 8], [16, 16], [12, 16], [10, 24], [9, 30], [20, 16], [22, 24], [23, 30], [14, 34], [14, 46], [14, 58],
        [18, 34], [18, 46], [18, 58], [15, 7], [17, 7], [14, 8], [18, 8]]
CONTROLNEXT = ["--model", "tiny-controlnext", "--height", 64, "--width", 64, "--frames", 2, "--sample-steps", 1]
POSES = ["--height", 64, "--width", 64, "--frames", 2]


def body_file(path, points=BODY, start=b""):
    path.write_bytes(start + json.dumps(points).encode())
    return path


@pytest.fixture
def person(tmp_path):
    """A 32x64 photo and its body's keypoints."""
    return noise_photo(tmp_path / "ph.png", size=(64, 32)), body_file(tmp_path / "body.json")


class Hung(BaseException):
    """A command still blocked after the time allowed (not an Exception: the commands turn those into one line)."""


@pytest.fixture
def no_hang():
    """A command that blocks (reading a FIFO, say) fails its test after 60 s instead of hanging the suite."""
    def hung(signum, frame):
        raise Hung
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def save_tiny_svd(folder):
    """tiny_svd's networks in the official layout, plain *.safetensors (--variant none)."""
    svd = tiny_svd(0)
    for name, (_, _, class_name, stem) in weights.COMPONENTS.items():
        network, path = getattr(svd, name), folder / name
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"_class_name": class_name} | asdict(network.config)))
        save_file(network.state_dict(), path / f"{stem}.safetensors")
    return folder


@pytest.mark.parametrize("case", ["poses.py onto its --image", "poses.py onto its --body", "attack.py onto its --body",
                                  "attack.py into its --pose folder", "evaluate.py into its --victim folder"])
def test_no_command_writes_onto_or_into_any_input(person, tmp_path, capsys, case):
    """One list of inputs for every command (files.inputs_of): the photos, --mask, --pose, --body and the model
    folders; no output overwrites one of them, nor lands in a folder of them, where the next run would read it."""
    photo, body = person
    gif = noise_photo(tmp_path / "p.gif", size=(64, 32))
    (tmp_path / "D").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "D/000.png")
    (tmp_path / "M/unet").mkdir(parents=True)
    (tmp_path / "M/unet/config.json").write_text("{}")
    main, args = {
        "poses.py onto its --image": (poses_command.main, ["--body", body, "--image", gif, "--out", gif]),
        "poses.py onto its --body": (poses_command.main, ["--body", body_file(tmp_path / "b.gif"), "--out",
                                                          tmp_path / "b.gif"]),
        "attack.py onto its --body": (attack.main, ["--image", photo, "--body", body_file(tmp_path / "ph.guarded.json")]
                                      + CONTROLNEXT),
        "attack.py into its --pose folder": (attack.main, ["--image", photo, "--pose", tmp_path / "D", "--out",
                                                           f"{tmp_path / 'D'}/"] + CONTROLNEXT),
        "evaluate.py into its --victim folder": (evaluate.main, ["--image", photo, "--victim", tmp_path / "M", "--out",
                                                                 tmp_path / "M"] + EVALUATE),
    }[case]
    message = refused(main, args + (POSES if main is poses_command.main else []), tmp_path, capsys, 2)
    assert "would overwrite the input" in message or "inside the input folder" in message


def test_resume_sees_a_model_folders_weights_replaced(photo, tmp_path, capsys):
    """What is done already is compared on the model's files too (their names, sizes and modification times):
    new weights under the same folder name are not taken for the old ones, by attack.py (which makes the photo
    again) nor by evaluate.py (which refuses to mix them, as any other change of settings)."""
    folder = save_tiny_svd(tmp_path / "svd")
    small = ["--model", folder, "--variant", "none", "--height", 64, "--width", 64, "--frames", 3, "--sample-steps", 1]
    args = ["--image", photo, "--out", tmp_path / "g.png", "--method", "random-sign", "--no-video-check"] + small
    assert run(attack.main, args, capsys)[0] == 0
    assert "done already, skipped" in run(attack.main, args, capsys)[1]
    evaluate_args = ["--image", photo, "--out", tmp_path / "e", "--model", "tiny", "--victim", folder, "--steps", 1,
                     "--methods", "random-sign", "--video-seeds", 1] + small[2:]
    assert run(evaluate.main, evaluate_args, capsys)[0] == 0
    weights_file = folder / "unet/diffusion_pytorch_model.safetensors"
    os.utime(weights_file, ns=(0, weights_file.stat().st_mtime_ns + 10**9))  # new weights, copied in a second later
    status, err = run(attack.main, args, capsys)
    assert status == 0 and "skipped" not in err
    assert "model_files" in refused(evaluate.main, evaluate_args, tmp_path, capsys, 2)


@pytest.mark.parametrize("case", ["--body is a FIFO: attack.py", "--body is a FIFO: sample.py",
                                  "--body is a FIFO: poses.py", "--body is /dev/zero", "--body of 2 MiB",
                                  "a model's config.json is a FIFO", "a model's config.json is /dev/zero",
                                  "a FIFO where evaluate.py's metrics.json goes"])
def test_every_file_read_is_a_regular_file_of_bounded_size(person, tmp_path, capsys, no_hang, case):
    """Every small file is read through plumbing/reading.py: a FIFO is not opened for reading (it would block),
    a device or a file larger than its kind may be is not read (it would fill the memory). One line each."""
    photo, _ = person
    fifo, zero, big = tmp_path / "fifo.json", tmp_path / "zero.json", tmp_path / "big.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    big.write_text(json.dumps(BODY) + " " * 2**21)
    model = tmp_path / "M"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer/config.json").symlink_to(zero if case.endswith("/dev/zero") else fifo)
    (tmp_path / "e/ph").mkdir(parents=True)
    os.mkfifo(tmp_path / "e/ph/metrics.json")
    poses_args = ["--out", tmp_path / "p.gif"] + POSES
    main, args, status = {
        "--body is a FIFO: attack.py": (attack.main, ["--image", photo, "--body", fifo] + CONTROLNEXT, 2),
        "--body is a FIFO: sample.py": (sample.main, ["--image", photo, "--body", fifo, "--out", tmp_path / "v.gif"]
                                        + CONTROLNEXT, 2),
        "--body is a FIFO: poses.py": (poses_command.main, ["--body", fifo] + poses_args, 2),
        "--body is /dev/zero": (poses_command.main, ["--body", zero] + poses_args, 2),
        "--body of 2 MiB": (poses_command.main, ["--body", big] + poses_args, 2),
        "a model's config.json is a FIFO": (attack.main, ["--image", photo, "--model", model] + RANDOM[2:], 1),
        "a model's config.json is /dev/zero": (attack.main, ["--image", photo, "--model", model] + RANDOM[2:], 1),
        "a FIFO where evaluate.py's metrics.json goes": (evaluate.main, ["--image", photo, "--out", tmp_path / "e",
                                                                         "--video-seeds", 1] + EVALUATE, 1),
    }[case]
    message = refused(main, args, tmp_path, capsys, status)
    assert message.split("error: ")[1].startswith("--body") == (status == 2)
    if "metrics.json" in case:  # said once, not also as unreadable first
        assert "unreadable" not in run(main, args, capsys)[1]


@pytest.mark.parametrize("value", ["9" * 400, "1e308", "-1e6", "NaN", "Infinity", "true", '"1"'])
def test_keypoints_are_numbers_in_or_near_the_photo(person, tmp_path, capsys, value):
    """Checked where the JSON is parsed: a number (not a boolean or a string), within the photo or outside it by
    less than its size, so that no value overflows, warns or makes the drawing slow."""
    photo, _ = person
    text = json.dumps(BODY).replace("[16, 8]", f"[16, {value}]", 1)
    (tmp_path / "body.json").write_text(text)
    start = time.perf_counter()
    args = ["--body", tmp_path / "body.json", "--image", photo, "--out", tmp_path / "p.gif"] + POSES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "--body" in refused(poses_command.main, args, tmp_path, capsys, 2)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("case", ["num_layers 100000", "flow_shift 1e-300"])
def test_a_wan_config_out_of_range_is_one_error_at_once(photo, tmp_path, capsys, case):
    """Sizes in a config.json are bounded (model/config.py), so that a typo's 100000 layers is refused before
    anything is built; the sampler's flow_shift is refused before it is used, with no warning first."""
    key, value = case.split()
    configs = {"transformer": {"_class_name": "WanTransformer3DModel"} | asdict(wan.TINY_TRANSFORMER),
               "vae": {"_class_name": "AutoencoderKLWan", "is_residual": True} | asdict(wan.TINY_VAE),
               "scheduler": {"_class_name": "UniPCMultistepScheduler"}}
    configs["transformer" if key == "num_layers" else "scheduler"][key] = json.loads(value)
    for folder, config in configs.items():
        (tmp_path / "wan" / folder).mkdir(parents=True)
        name = "scheduler_config.json" if folder == "scheduler" else "config.json"
        (tmp_path / "wan" / folder / name).write_text(json.dumps(config))
    start = time.perf_counter()
    args = ["--image", photo, "--model", tmp_path / "wan", "--height", 64, "--width", 64, "--frames", 5,
            "--sample-steps", 1, "--method", "random-sign"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert key in refused(attack.main, args, tmp_path, capsys, 1)
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("case", ["a body with no point seen: attack.py", "a body with no point seen: poses.py",
                                  "a body at one height: poses.py", "a broken photo with --body",
                                  "--body '': attack.py", "--body '': sample.py", "--body '': poses.py", "--mask ''",
                                  "poses.py's --out is a folder"])
def test_each_error_names_the_flag_that_carries_it(person, tmp_path, capsys, case):
    """A body no motion can be fitted to is a --body error (status 2) in every command, found when it is read; a
    photo that cannot be read is an --image error; an empty path is refused, not taken for none; poses.py says
    nothing but the error when it refuses (its informational line comes after every check)."""
    photo, body = person
    nobody = body_file(tmp_path / "nobody.json", [None] * 18)
    flat = body_file(tmp_path / "flat.json", [[16, 8], [20, 8]] + [None] * 16)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    (tmp_path / "folder.gif").mkdir()
    poses_args = ["--out", tmp_path / "p.gif"] + POSES
    main, args, flag, status = {
        "a body with no point seen: attack.py": (attack.main, ["--image", photo, "--body", nobody] + CONTROLNEXT,
                                                 "--body", 2),
        "a body with no point seen: poses.py": (poses_command.main, ["--body", nobody] + poses_args, "--body", 2),
        "a body at one height: poses.py": (poses_command.main, ["--body", flat] + poses_args, "--body", 2),
        "a broken photo with --body": (attack.main, ["--image", broken, "--body", body] + CONTROLNEXT, "--image", 1),
        "--body '': attack.py": (attack.main, ["--image", photo, "--body", ""] + CONTROLNEXT, "argument --body", 2),
        "--body '': sample.py": (sample.main, ["--image", photo, "--body", "", "--out", tmp_path / "v.gif"]
                                 + CONTROLNEXT, "argument --body", 2),
        "--body '': poses.py": (poses_command.main, ["--body", ""] + poses_args, "argument --body", 2),
        "--mask ''": (attack.main, ["--image", photo, "--mask", ""] + RANDOM, "argument --mask", 2),
        "poses.py's --out is a folder": (poses_command.main, ["--out", tmp_path / "folder.gif"] + POSES, "--out", 2),
    }[case]
    assert refused(main, args, tmp_path, capsys, status).split("error: ")[1].startswith(flag)


def test_a_body_file_with_a_byte_order_mark_is_read(person, tmp_path, capsys):
    photo, _ = person
    body = body_file(tmp_path / "bom.json", start=b"\xef\xbb\xbf")  # as some Windows editors save UTF-8
    args = ["--body", body, "--image", photo, "--out", tmp_path / "p.gif"] + POSES
    assert run(poses_command.main, args, capsys)[0] == 0 and Image.open(tmp_path / "p.gif").n_frames == 2
