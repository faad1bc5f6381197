"""Turn one image into a short video with Stable Video Diffusion (img2vid), as the reference pipeline does.

Conditioning, the EDM Euler sampler with per-frame classifier-free guidance and the chunked decoding
follow diffusers' StableVideoDiffusionPipeline step by step. The pieces the attack reuses (image IO,
the CLIP resize, the two conditioning paths, `denoise`) keep their gradients; only `generate`, an
entry point, turns them off.

example: python sample.py --image photo.jpg --out video.gif --seed 0
"""
import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import features
from tqdm import tqdm

from cli import (FAILURE, MAX_FRAMES, MAX_SAMPLE_STEPS, MAX_SEED, MAX_SIDE, Parser, check_writable, command,
                 default_dtype, default_low_memory, fail, integer, model_size, number, parse_device, pose_conditioned,
                 refuse_clashes, text_conditioned, variant, weights_hint, write_files)
from model.edm import denoise, euler_step, karras_sigmas
from photos import encoded, model_input, read_photo, to_images, video_bytes
from weights import DEFAULT_MODEL, TOY_MODEL, WeightsError, load_svd, tiny_svd

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_FORMATS = {".gif": "GIF", ".webp": "WEBP"}


# ---------------------------------------------------------------- image and video files
def load_image(path, size=None):
    """An image file -> (3,H,W) float32 in [-1,1]. EXIF orientation is applied and an alpha channel is
    dropped (the colour under transparent pixels is kept), as the reference's image loading does, so
    the model sees the RGB values a guarded photo carries. With size=(height, width) the image is
    resized with Lanczos on its 8-bit pixels first, as the reference pipeline's preprocessing does.
    Any mode, size or animation photos.read_photo refuses is a ValueError."""
    return model_input(read_photo(path)[0], size)


def frame_paths(folder, n):
    return [Path(folder) / f"frame_{i:03d}.png" for i in range(n)]


# ---------------------------------------------------------------- conditioning (differentiable)
def blur_last_axis(x, sigma):
    """Gaussian blur along the last axis of (N,C,H,W): kernel int(max(4 sigma, 3)) taps made odd, reflect padding."""
    taps = int(max(4 * sigma, 3)) | 1  # odd
    t = torch.arange(taps, dtype=x.dtype, device=x.device) - taps // 2
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    x = F.pad(x, (taps // 2, taps // 2, 0, 0), mode="reflect")
    return x.unfold(-1, taps, 1) @ (kernel / kernel.sum())  # (N, C, H, W, taps) -> (N, C, H, W)


def resize_for_clip(x, size=224):
    """(N,C,H,W) -> (N,C,size,size), antialiased as SVD resizes for CLIP: a Gaussian blur with sigma =
    max((factor - 1)/2, 0.001) per axis (skimage's rule), then bicubic with align_corners=True."""
    h, w = x.shape[-2:]
    x = blur_last_axis(x, max((w / size - 1) / 2, 0.001))
    x = blur_last_axis(x.transpose(-1, -2), max((h / size - 1) / 2, 0.001)).transpose(-1, -2)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)


def clip_embedding(image_encoder, image):
    """CLIP path, on the clean image: (N,3,H,W) in [-1,1] -> image_embeds (N,1,D)."""
    x = (resize_for_clip(image, image_encoder.config.image_size) + 1) / 2
    mean, std = x.new_tensor(CLIP_MEAN).view(3, 1, 1), x.new_tensor(CLIP_STD).view(3, 1, 1)
    pixels = ((x - mean) / std).to(next(image_encoder.parameters()).dtype)
    return image_encoder(pixels).unsqueeze(1)  # (N, 1, D)


def image_latents(vae, image, noise_aug_strength, noise):
    """VAE path: the posterior mean of the noise-augmented image, NOT multiplied by the scaling factor:
    (N,3,H,W) in [-1,1] -> (N,4,H/8,W/8)."""
    mean, _ = vae.encode((image + noise_aug_strength * noise).to(next(vae.parameters()).dtype))
    return mean


def added_time_ids(fps, motion_bucket_id, noise_aug_strength, batch=1):
    """SVD's micro-conditioning (B,3): [fps - 1, motion_bucket_id, noise_aug_strength]; SVD was trained on fps - 1."""
    return torch.tensor([[fps - 1.0, motion_bucket_id, noise_aug_strength]]).repeat(batch, 1)


def decode(vae, latents, chunk_size):
    """Latents (F,4,h,w) -> frames (F,3,8h,8w) in [-1,1] (unclamped), chunk_size frames at a time, each
    chunk decoded as a clip of its own length, as the reference does."""
    z = (latents / vae.config.scaling_factor).to(next(vae.parameters()).dtype)
    return torch.cat([vae.decode(chunk, num_frames=len(chunk)) for chunk in z.split(chunk_size)]).float()


# ---------------------------------------------------------------- sampling
def sample_euler(unet, x, sigmas, cond, guidance=None, progress=False, low_memory=False):
    """EDM Algorithm 1 (Euler, no churn, Karras et al. 2022) from x at sigmas[0] to sigmas[-1] = 0.
    cond = (image_latents (B,F,4,h,w), image_embeds (B,1,D), added_time_ids (B,3)). With guidance
    (1,F,1,1,1), classifier-free guidance per frame against zero latents and a zero CLIP embedding:
    D = D_uncond + w (D_cond - D_uncond), the same as guiding the network output since D is affine in it.
    The two branches run as one batch, or with low_memory one after the other. progress: a progress bar,
    True or its label."""
    latents, embeds, time_ids = cond
    uncond = (torch.zeros_like(latents), torch.zeros_like(embeds), time_ids)
    both = [torch.cat(pair) for pair in zip(uncond, cond)]
    steps = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))
    label = progress if isinstance(progress, str) else "denoising"
    for sigma, sigma_next in tqdm(steps, desc=label, disable=not progress):
        if guidance is None:
            D, _ = denoise(unet, x, sigma, *cond)
        else:
            if low_memory:
                D_uncond, D_cond = (denoise(unet, x, sigma, *c)[0] for c in (uncond, cond))
            else:
                D_uncond, D_cond = denoise(unet, torch.cat([x, x]), sigma, *both)[0].chunk(2)
            D = D_uncond + guidance * (D_cond - D_uncond)
        x = euler_step(x.to(D.dtype), D, sigma, sigma_next).to(x.dtype)  # the step in float32, as the reference
    return x


def seeded_generator(seed):
    """The CPU generator of a pipeline run: seeded with `seed`, or at random when it is None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def image_conditioning(svd, image, clip_image, noise_aug_strength, generator):
    """The two image conditions of a pipeline run, as the reference makes them: (VAE latents (1,4,h,w) of the
    noise-augmented image (3,H,W) in [-1,1], the augmentation noise drawn first from `generator`; the CLIP
    embedding (1,1,D) of clip_image (3,H0,W0), default the image), in the UNet's dtype, on its device."""
    param = next(svd.unet.parameters())
    aug_noise = torch.randn(1, *image.shape, generator=generator)
    image, aug_noise = image[None].to(param.device), aug_noise.to(param.device)  # (1, 3, H, W), float32
    vae_dtype = next(svd.vae.parameters()).dtype
    clip_input = image if clip_image is None else clip_image[None].to(param.device)
    embeds = clip_embedding(svd.image_encoder, clip_input).to(param.dtype)
    if vae_dtype == torch.float16 and svd.vae.config.force_upcast:
        svd.vae.float()  # as the reference: a float16 VAE marked force_upcast encodes in float32
    try:
        latents = image_latents(svd.vae, image, noise_aug_strength, aug_noise).to(param.dtype)
    finally:
        svd.vae.to(vae_dtype)
    return latents, embeds


def generate(svd, image, *, num_frames=None, steps=25, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
             min_guidance=1.0, max_guidance=3.0, decode_chunk_size=None, noise=None, seed=None,
             return_latents=False, progress=False, clip_image=None, low_memory=False):
    """Image (3,H,W) in [-1,1] at model resolution -> frames (F,3,H,W) in [-1,1], or with return_latents
    the final denoised latents (F,4,H/8,W/8), on the model's device.

    noise is the unit-variance initial noise (F,4,H/8,W/8); otherwise it is drawn after the
    noise-augmentation noise (the reference's order) from a CPU generator seeded with `seed`
    (random when None): a seed gives the same video on any device, and the reference's video for
    a CPU generator with that seed. Guidance runs only when max_guidance > 1, as in the reference.
    clip_image (3,H0,W0) in [-1,1] is the photo at its own size for the CLIP path, which the reference
    encodes before resizing (default: image). low_memory runs the guidance branches one after the
    other and decodes 2 frames at a time unless decode_chunk_size says otherwise.
    """
    if image.shape[-2] % 8 or image.shape[-1] % 8:
        raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of 8")
    num_frames = num_frames or svd.unet.config.num_frames
    decode_chunk_size = decode_chunk_size or (2 if low_memory else num_frames)
    param = next(svd.unet.parameters())
    generator = seeded_generator(seed)
    with torch.no_grad():
        latents, embeds = image_conditioning(svd, image, clip_image, noise_aug_strength, generator)
        latents = latents[:, None].repeat(1, num_frames, 1, 1, 1)  # (1, F, 4, h, w)
        time_ids = added_time_ids(fps, motion_bucket_id, noise_aug_strength).to(param)

        if noise is None:
            noise = torch.randn(latents.shape[1:], generator=generator)
        if noise.shape != latents.shape[1:]:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(latents.shape[1:])}")
        sigmas = karras_sigmas(steps)
        init_noise_sigma = (sigmas[0].item() ** 2 + 1) ** 0.5  # the reference's scale of the initial noise
        x = noise[None].to(param) * init_noise_sigma  # (1, F, 4, h, w)
        guidance = None
        if max_guidance > 1:
            guidance = torch.linspace(min_guidance, max_guidance, num_frames).view(1, -1, 1, 1, 1).to(param)
        cond = (latents, embeds, time_ids)
        x = sample_euler(svd.unet, x, sigmas, cond, guidance, progress, low_memory)[0]  # (F, 4, h, w)
        if return_latents:
            return x
        return decode(svd.vae, x, decode_chunk_size).clamp(-1, 1)


# ---------------------------------------------------------------- command line
def load_model(name, device, dtype, variant="fp16"):
    """A model by its --model name: 'toy' (trained here, in the repo), 'tiny' (random), or a hub id or folder."""
    if name == "toy":
        svd = load_svd(TOY_MODEL, variant="fp16", dtype=dtype, device=device)
        svd.source = "toy"
        return svd
    if name == "tiny":
        print("WARNING: --model tiny is an UNTRAINED model with random weights: its videos are noise, "
              "for smoke tests only.", file=sys.stderr)
        with warnings.catch_warnings():  # tiny_svd's own warning, said louder above
            warnings.simplefilter("ignore")
            return tiny_svd(seed=0, dtype=dtype, device=device)
    return load_svd(name, variant=variant, dtype=dtype, device=device)


@command
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--image", required=True, help="input photo (any still image Pillow reads)")
    p.add_argument("--out", required=True, help="output video, .gif or .webp")
    p.add_argument("--frames-dir", help="also write every frame as a PNG into this folder")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub repo id, local folder in the official layout, 'toy' (a small SVD trained on a CPU, "
                        "64x64, 8 frames) or 'tiny' (untrained, for tests)")
    p.add_argument("--variant", type=variant, default="fp16", help="weight files: fp16 for *.fp16.safetensors "
                   "(as the official repos ship), none for *.safetensors")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), help="frames to generate (default: the model's num_frames; "
                   "with --pose, one per pose frame)")
    p.add_argument("--pose", metavar="POSES", help="ControlNeXt (--model controlnext): the pose sequence to follow, a "
                   "folder of pose frames (sorted by name) or an animated GIF/WebP, frame 0 the photo's own pose; "
                   "default: the generic 'wave' sequence of poses.py")
    p.add_argument("--sample-steps", "--steps", dest="steps", type=integer(1, MAX_SAMPLE_STEPS),
                   help="denoising steps of the sampler (default: 25; 50 for CogVideoX)")
    p.add_argument("--prompt", default="", help="CogVideoX (--model cogvideox): the text prompt; default: none, the "
                   "paper's image-only setting")
    p.add_argument("--scheduler", choices=["ddim", "dpm"], default="ddim",
                   help="CogVideoX: the release's DDIM, or the official demo's DPM (with --dynamic-guidance)")
    p.add_argument("--dynamic-guidance", action="store_true", help="CogVideoX: the official demo's guidance schedule")
    p.add_argument("--fps", type=integer(1, 1000), default=7, help="frame rate: conditioning (as fps - 1) and playback")
    p.add_argument("--motion-bucket", type=int, default=127, help="motion_bucket_id, higher means more motion")
    p.add_argument("--noise-aug", type=number, default=0.02,
                   help="noise_aug_strength, noise added to the image before the VAE")
    p.add_argument("--min-guidance", type=number, default=1.0, help="guidance scale of the first frame")
    p.add_argument("--max-guidance", type=number, default=3.0,
                   help="guidance scale of the last frame; 1 or less turns guidance off")
    p.add_argument("--height", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: 576; 64 for toy, 128 for tiny)")
    p.add_argument("--width", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: 1024; 64 for toy, 128 for tiny)")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="guidance branches one at a time, decoding 2 frames at a time "
                        "(default: on for GPUs under 40 GiB)")
    p.add_argument("--decode-chunk", type=integer(1, MAX_FRAMES),
                   help="frames decoded at a time (default: all at once)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                   help="seed of the noise: a seed gives the same video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="model dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    args = p.parse_args(argv)

    image, out = Path(args.image), Path(args.out)
    if not image.is_file():
        fail(f"no such image file: {image}")
    if out.suffix.lower() not in VIDEO_FORMATS:
        fail(f"--out must be a file ending in .gif or .webp, got {out}")
    if out.is_dir():
        fail(f"--out {out} is a folder; give a file name")
    if out.suffix.lower() == ".webp" and not features.check("webp"):
        fail("this Pillow cannot write WebP; use .gif")
    check_writable(out.parent)
    if args.frames_dir:
        check_writable(args.frames_dir, may_create=True)
    args.height, args.width = model_size(args.height, args.width, args.model)
    device = parse_device(args.device)
    dtype = getattr(torch, args.dtype or default_dtype(device))
    try:
        photo = load_image(image)
        resized = load_image(image, (args.height, args.width))
    except ValueError as e:
        fail(f"{image}: {e}")
    if pose_conditioned(args.model):
        args.steps = args.steps or 25
        return sample_with_poses(args, device, dtype, photo, resized, out)
    if args.pose:
        fail(f"--pose: {args.model} is not a pose-conditioned model (--model controlnext is)")
    if text_conditioned(args.model):
        args.steps = args.steps or 50
        return sample_with_text(args, device, dtype, resized, out)
    if args.prompt or args.scheduler != "ddim" or args.dynamic_guidance:
        fail(f"--prompt, --scheduler and --dynamic-guidance are CogVideoX's (--model cogvideox), not {args.model}'s")
    args.steps = args.steps or 25
    try:
        svd = load_model(args.model, device, dtype, args.variant)
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)

    num_frames = args.frames or svd.unet.config.num_frames
    frame_files = frame_paths(args.frames_dir, num_frames) if args.frames_dir else []
    refuse_clashes([(image, path) for path in [out, *frame_files]], [image])
    frames = generate(svd, resized, num_frames=num_frames, steps=args.steps, fps=args.fps,
                      motion_bucket_id=args.motion_bucket, noise_aug_strength=args.noise_aug,
                      min_guidance=args.min_guidance, max_guidance=args.max_guidance,
                      decode_chunk_size=args.decode_chunk, seed=args.seed, progress=True, clip_image=photo,
                      low_memory=default_low_memory(device) if args.low_memory is None else args.low_memory)
    write_video(frames, args, out, frame_files)


def sample_with_poses(args, device, dtype, photo, resized, out):
    """ControlNeXt-SVD-v2 (controlnext.py), with the release's settings: 25 steps unless --steps, guidance 3,
    windows of 24 frames overlapping by 6, decoding 2 frames at a time. The other SVD flags do not apply."""
    import controlnext  # builds on this module, so it is imported when used
    import poses as pose_sequences
    try:
        poses = (pose_sequences.read_poses(args.pose, args.height, args.width) if args.pose else
                 pose_sequences.generic_poses(args.frames or controlnext.WINDOW, args.height, args.width)["wave"])
    except ValueError as e:
        fail(f"--pose: {e}")
    if args.frames:
        if args.frames > len(poses):
            fail(f"--pose {args.pose} has {len(poses)} frames, fewer than the {args.frames} of --frames")
        poses = poses[:args.frames]
    try:
        networks, pose_encoder = controlnext.load_by_name(args.model, args.variant, dtype, device)
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    frame_files = frame_paths(args.frames_dir, len(poses)) if args.frames_dir else []
    refuse_clashes([(Path(args.image), path) for path in [out, *frame_files]], [Path(args.image)])
    frames = controlnext.generate_controlnext(networks, pose_encoder, resized, poses, steps=args.steps,
                                              seed=args.seed, clip_image=photo, progress=True)
    write_video(frames, args, out, frame_files)


def sample_with_text(args, device, dtype, resized, out):
    """CogVideoX-5B-I2V (cogvideox.py), as the reference pipeline runs it: 49 frames unless --frames (4k + 1),
    guidance 6, DDIM or DPM; the prompt's T5 embedding made once, the text encoder freed before sampling."""
    import cogvideox  # builds on this module, so it is imported when used
    num_frames = args.frames or 49
    if (num_frames - 1) % 4:
        fail(f"--frames: CogVideoX makes 4k + 1 frames (49, 45, ...), got {num_frames}")
    try:
        model = cogvideox.load_by_name(args.model, dtype, device)
        ids, negative = cogvideox.prompt_tokens(model.source, args.prompt), cogvideox.prompt_ids("")
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    except ValueError as e:
        fail(f"--prompt: {e}")
    with torch.no_grad():
        embeds, negative = (cogvideox.prompt_embeddings(model.text_encoder, i.to(device)) for i in (ids, negative))
    model.text_encoder = None  # 9.5 GB in bfloat16, needed once
    frame_files = frame_paths(args.frames_dir, num_frames) if args.frames_dir else []
    refuse_clashes([(Path(args.image), path) for path in [out, *frame_files]], [Path(args.image)])
    frames = cogvideox.generate_cogvideox(model, resized, prompt_embeds=embeds, negative_embeds=negative,
                                          steps=args.steps, scheduler=args.scheduler,
                                          dynamic_guidance=args.dynamic_guidance, num_frames=num_frames,
                                          seed=args.seed, progress=True)
    write_video(frames, args, out, frame_files)


def write_video(frames, args, out, frame_files):
    """The video file and, with --frames-dir, every frame as a PNG, all or nothing."""
    images = to_images(frames)
    files = {out: video_bytes(images, args.fps, VIDEO_FORMATS[out.suffix.lower()])}
    files |= {path: encoded(im, "PNG") for path, im in zip(frame_files, images)}
    write_files(files)
    print(f"wrote {out}" + (f" and {len(images)} frames to {args.frames_dir}" if args.frames_dir else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()
