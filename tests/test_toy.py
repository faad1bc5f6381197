"""The trained toy SVD in toy/weights: it loads strictly through load_svd like the real model, the
commands take it with its own resolution and frames, and protection protects on it: on two held-out
photos, with videos made at a seed the attack never used, the video made from the i2vguard photo is
further from V_0 than the video made from random +-eps noise of the same L_inf."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import attack
from attack import protect
from pipelines.svd import SVDPipeline, generate, load_model
from plumbing.files import quantise
from plumbing.photos import model_input, read_photo
from weights import TOY_MODEL, load_svd

EXAMPLES = TOY_MODEL.parents[1] / "examples"
SIZE, STEPS, SAMPLE_STEPS = (64, 64), 20, 10
ATTACK_SEED, VIDEO_SEED = 0, 1  # the videos that judge are made with randomness the attack never saw
# Measured with these settings on the shipped toy (the test prints the figures): with the default perceptual
# budget i2vguard's video is 12.11 dB (astronaut_face: 34.12 against 46.23) and 10.12 dB (chelsea: 35.46 against
# 45.58) further from V_0 than random-sign's (16.39 and 16.09 dB with the paper's flat budget); the margin asked
# is 8 dB, four fifths of the smaller gap.
MARGIN_DB = 8.0


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", torch.device("cpu"), torch.float32)


def video_of(svd, rgb8):
    """The toy's video of an 8-bit photo, as the adversary makes it, at VIDEO_SEED."""
    return generate(svd, model_input(rgb8, SIZE), steps=SAMPLE_STEPS, seed=VIDEO_SEED,
                    clip_image=rgb8.float() / 127.5 - 1)


def mean_psnr(video, reference):
    mse = (video - reference).pow(2).mean(dim=(1, 2, 3))  # per frame, values in [-1, 1]
    return (10 * torch.log10(4 / mse)).mean().item()


def test_toy_is_the_official_layout_in_float16():
    svd = load_svd(TOY_MODEL, variant="fp16")
    assert svd.vae.config.sample_size == SIZE[0] and svd.unet.config.num_frames == 8
    size = sum(p.stat().st_size for p in TOY_MODEL.rglob("*.safetensors"))
    assert size < 10e6


@pytest.mark.parametrize("name", ["astronaut_face.png", "chelsea.png"])
def test_i2vguard_moves_the_video_further_than_random_noise(toy, name):
    rgb8, _, _ = read_photo(EXAMPLES / name)
    V_0 = video_of(toy, rgb8)
    psnr_to_V_0 = {}
    for method in ("i2vguard", "random-sign"):
        I_adv, _ = protect(SVDPipeline(toy), rgb8.float() / 255, method=method, steps=STEPS, size=SIZE,
                           sample_steps=SAMPLE_STEPS, seed=ATTACK_SEED)
        psnr_to_V_0[method] = mean_psnr(video_of(toy, quantise(rgb8, I_adv, 8 / 255, None)), V_0)
    print(f"\n{name}: video PSNR to V_0, " + ", ".join(f"{k} {v:.2f} dB" for k, v in psnr_to_V_0.items()))
    assert psnr_to_V_0["random-sign"] - psnr_to_V_0["i2vguard"] > MARGIN_DB


def test_a_larger_photo_keeps_its_protection_on_the_models_grid(toy):
    """The full-size result at a small size: the same photo at the toy's 64 pixels and upsampled to 256, guarded
    with the defaults (steps on the model's grid), give videos as far from their V_0 within 1 dB (measured: 35.23
    and 35.65 dB; README, Full-size photos: 0.04 dB at 1024 pixels with the paper's budget)."""
    rgb8, _, _ = read_photo(EXAMPLES / "64px" / "chelsea.png")
    distance = {}
    for side in (64, 256):
        photo = torch.nn.functional.interpolate(rgb8[None].float(), size=(side, side), mode="bicubic")[0]
        photo = photo.round().clamp(0, 255).to(torch.uint8)
        I_adv, _ = protect(SVDPipeline(toy), photo.float() / 255, steps=STEPS, size=SIZE, sample_steps=SAMPLE_STEPS,
                           seed=ATTACK_SEED)
        distance[side] = mean_psnr(video_of(toy, quantise(photo, I_adv, 8 / 255, None)), video_of(toy, photo))
    print(f"\nchelsea: video PSNR to V_0 at 64 px {distance[64]:.2f} dB, at 256 px {distance[256]:.2f} dB")
    assert abs(distance[256] - distance[64]) < 1


def test_attack_command_takes_the_toy_at_its_own_size(tmp_path):
    out = tmp_path / "face.guarded.png"
    args = ["--image", str(EXAMPLES / "astronaut_face.png"), "--out", str(out), "--model", "toy", "--steps", "2",
            "--sample-steps", "2", "--preview"]
    try:
        attack.main(args)
    except SystemExit as e:
        assert e.code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model"] == "toy" and report["untrained_model"] is False
    assert report["settings"]["height"] == 64 and report["settings"]["frames"] == 8
    assert report["settings"]["attn_blocks"] == ["down_blocks.1.attentions.0"]
    assert report["video_seed"] == 1  # the report's video check: a seed the attack (seed 0) did not use
    assert np.asarray(Image.open(out)).shape == (128, 128, 3)
    assert out.with_suffix(".attention.png").is_file()
