"""svd_pipeline.generate is diffusers' StableVideoDiffusionPipeline: on a tiny random SVD whose weights are
copied into the reference models, the same image and the same initial noise give the same final
latents and the same frames to 1e-3 (float32), with guidance on and off, and a seed gives the
reference's video for the same CPU generator seed. The CLI writes a playable GIF and turns bad input
into a one-line error."""
import json
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from oracles import max_abs_diff, oracle_clip, oracle_unet, oracle_vae
from PIL import Image
from test_edm import OFFICIAL_SCHEDULER
from transformers import CLIPImageProcessor

import sample
from pipelines import svd as svd_pipeline
from weights import tiny_svd

ROOT = Path(sample.__file__).parent
TOL = 1e-3
# stabilityai/stable-video-diffusion-img2vid feature_extractor/preprocessor_config.json
OFFICIAL_FEATURE_EXTRACTOR = dict(
    crop_size={"height": 224, "width": 224}, do_center_crop=True, do_normalize=True, do_rescale=True,
    do_resize=True, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    resample=3, rescale_factor=0.00392156862745098, size={"shortest_edge": 224},
)


def plain(config):
    return json.loads(json.dumps(asdict(config)))


@pytest.fixture(scope="module")
def svd_and_pipeline():
    """tiny_svd's networks and the reference pipeline sharing one set of randomised weights (strict copies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svd = tiny_svd(seed=0)
    oracles = dict(unet=oracle_unet(plain(svd.unet.config), seed=1), vae=oracle_vae(plain(svd.vae.config), seed=2),
                   image_encoder=oracle_clip(plain(svd.image_encoder.config), seed=3))
    for name, oracle in oracles.items():
        getattr(svd, name).load_state_dict(oracle.state_dict(), strict=True)
    pipe = StableVideoDiffusionPipeline(
        **oracles, scheduler=EulerDiscreteScheduler.from_config(OFFICIAL_SCHEDULER),
        feature_extractor=CLIPImageProcessor(**OFFICIAL_FEATURE_EXTRACTOR))
    pipe.set_progress_bar_config(disable=True)
    return svd, pipe


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    g = np.random.default_rng(0)
    smooth = np.kron(g.uniform(0, 255, (8, 12, 3)), np.ones((8, 8, 1)))  # 64x96 blocks
    pixels = np.clip(smooth + g.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("image") / "input.png"
    Image.fromarray(pixels).save(path)
    return path


def reference(pipe, image_file, **kwargs):
    """The pipeline's frames (F,3,H,W) mapped to [-1,1], and its final latents, from one run."""
    final = {}

    def keep_latents(pipe, i, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    frames = pipe(Image.open(image_file), output_type="pt", callback_on_step_end=keep_latents, **kwargs).frames[0]
    return frames * 2 - 1, final["latents"][0]


@pytest.mark.parametrize("max_guidance, decode_chunk", [(3.0, 2), (1.0, None)], ids=["guidance", "no-guidance"])
def test_generate_matches_pipeline(svd_and_pipeline, image_file, max_guidance, decode_chunk):
    svd, pipe = svd_and_pipeline
    frames, steps, height, width = 3, 3, 64, 96
    noise = torch.randn(frames, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(5))
    common = dict(num_frames=frames, fps=7, motion_bucket_id=127, noise_aug_strength=0.0,
                  min_guidance_scale=1.0, max_guidance_scale=max_guidance, decode_chunk_size=decode_chunk)
    ref_frames, ref_latents = reference(pipe, image_file, height=height, width=width, num_inference_steps=steps,
                                        latents=noise[None].clone(), **common)

    image = sample.load_image(image_file, (height, width))
    ours = dict(num_frames=frames, steps=steps, noise_aug_strength=0.0, min_guidance=1.0,
                max_guidance=max_guidance, decode_chunk_size=decode_chunk, noise=noise)
    latents = svd_pipeline.generate(svd, image, return_latents=True, **ours)
    out = svd_pipeline.generate(svd, image, **ours)
    assert max_abs_diff(f"final latents, max_guidance {max_guidance}", latents, ref_latents) <= TOL
    assert max_abs_diff(f"frames, max_guidance {max_guidance}", out, ref_frames) <= TOL
    assert out.shape == (frames, 3, height, width) and out.abs().max() <= 1


def test_seed_gives_the_pipeline_video_for_the_same_generator_seed(svd_and_pipeline, image_file):
    """Noise augmentation on: our draws (augmentation noise, then initial noise) follow the reference's order."""
    svd, pipe = svd_and_pipeline
    _, ref_latents = reference(pipe, image_file, height=64, width=96, num_frames=2, num_inference_steps=2,
                               noise_aug_strength=0.1, max_guidance_scale=1.0,
                               generator=torch.Generator().manual_seed(11))
    image = sample.load_image(image_file, (64, 96))
    latents = svd_pipeline.generate(svd, image, num_frames=2, steps=2, noise_aug_strength=0.1, max_guidance=1.0,
                              seed=11, return_latents=True)
    assert max_abs_diff("final latents, seed 11, noise_aug 0.1", latents, ref_latents) <= TOL


def test_photo_of_another_size_conditions_as_the_pipeline(svd_and_pipeline, image_file):
    """The reference resizes the photo for the VAE path but feeds CLIP the photo at its own size."""
    svd, pipe = svd_and_pipeline
    noise = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(7))
    _, ref_latents = reference(pipe, image_file, height=48, width=64, num_frames=2, num_inference_steps=2,
                               noise_aug_strength=0.0, max_guidance_scale=1.0, latents=noise[None].clone())
    latents = svd_pipeline.generate(svd, sample.load_image(image_file, (48, 64)), num_frames=2, steps=2,
                              noise_aug_strength=0.0, max_guidance=1.0, noise=noise, return_latents=True,
                              clip_image=sample.load_image(image_file))
    assert max_abs_diff("final latents, 64x96 photo at 48x64", latents, ref_latents) <= TOL


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 576, 1024), (1, 3, 300, 230), (1, 3, 11, 700)])
def test_resize_for_clip_matches_reference(shape):
    """Against the reference run in float64: in float32 the reference departs from its own float64 result by up to
    5.5e-5 (its bicubic upscale of a 300x230 photo); ours, as two float32 matrix products, by 2.4e-7."""
    x = torch.rand(shape, dtype=torch.float64) * 2 - 1
    ref = _resize_with_antialiasing(x, (224, 224))
    assert max_abs_diff(f"CLIP resize {shape[-2:]}", svd_pipeline.resize_for_clip(x.float()), ref.float()) <= 1e-6


def test_conditioning_passes_gradients_to_the_image(svd_and_pipeline):
    svd, _ = svd_and_pipeline
    image = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_()
    embeds = svd_pipeline.clip_embedding(svd.image_encoder, image)
    latents = svd_pipeline.image_latents(svd.vae, image, 0.02, torch.randn_like(image))
    assert embeds.shape == (1, 1, svd.image_encoder.config.projection_dim) and latents.shape == (1, 4, 8, 8)
    (embeds.sum() + latents.sum()).backward()
    assert image.grad.abs().sum() > 0


def test_load_image_applies_exif_orientation_and_drops_alpha(tmp_path):
    rgba = np.zeros((12, 24, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :12, 3] = 255  # left half opaque red, right half fully transparent red
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    x = sample.load_image(tmp_path / "alpha.png")
    assert x.shape == (3, 12, 24)
    assert torch.equal(x, torch.tensor([1.0, -1, -1]).view(3, 1, 1).expand(3, 12, 24))

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (24, 12), "blue").save(tmp_path / "rotated.jpg", exif=exif)
    assert sample.load_image(tmp_path / "rotated.jpg").shape == (3, 24, 12)
    assert sample.load_image(tmp_path / "rotated.jpg", size=(24, 32)).shape == (3, 24, 32)


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_cli_tiny_writes_a_gif_with_the_requested_frames(image_file, tmp_path):
    out = tmp_path / "video.gif"
    result = run_cli("--image", image_file, "--out", out, "--model", "tiny", "--frames", 3, "--steps", 2,
                     "--height", 64, "--width", 64, "--seed", 0, "--frames-dir", tmp_path / "frames")
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr and "untrained" in result.stderr.lower()
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 and gif.size == (64, 64)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_00{i}.png" for i in range(3)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize("case", ["missing", "not-an-image", "size", "model", "extension", "over-input"])
def test_cli_bad_input_is_a_one_line_error(case, image_file, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    gif_input = tmp_path / "input.gif"
    Image.open(image_file).save(gif_input)
    out = tmp_path / "video.gif"
    image, extra = image_file, ["--model", "tiny", "--steps", 1, "--frames", 2, "--height", 64, "--width", 64]
    if case == "missing":
        image = tmp_path / "absent.png"
    elif case == "not-an-image":
        image = tmp_path / "notes.png"
    elif case == "size":
        extra += ["--height", 60]
    elif case == "model":
        extra += ["--model", tmp_path / "no-such-model"]
    elif case == "extension":
        out = tmp_path / "video.mp4"
    elif case == "over-input":
        image = out = gif_input
    before = gif_input.read_bytes()
    result = run_cli("--image", image, "--out", out, *extra)
    print(f"\n[cli] {case}: rc {result.returncode}: {result.stderr.strip()}")
    assert result.returncode in (1, 2)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(errors) == 1 and errors[0].startswith("sample.py: error:") and "Traceback" not in result.stderr
    assert not (tmp_path / "video.gif").exists() and not (tmp_path / "video.mp4").exists()
    assert gif_input.read_bytes() == before


def test_float16_vae_encodes_in_float32_and_stays_float16(image_file):
    """As the reference: a float16 VAE marked force_upcast encodes in float32, and is float16 again afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svd = tiny_svd(seed=0, dtype=torch.float16)
    frames = svd_pipeline.generate(svd, sample.load_image(image_file, (64, 64)), num_frames=2, steps=1, seed=0)
    assert svd.vae.config.force_upcast and {p.dtype for p in svd.vae.parameters()} == {torch.float16}
    assert frames.dtype == torch.float32 and frames.shape == (2, 3, 64, 64) and frames.isfinite().all()
