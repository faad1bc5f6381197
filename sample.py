"""Turn one image into a short video with an image-to-video model, as its reference pipeline does: Stable Video
Diffusion (img2vid), or the one --model names: ControlNeXt-SVD-v2, CogVideoX-5B-I2V or Wan2.2-TI2V-5B.

For SVD, conditioning, the EDM Euler sampler with per-frame classifier-free guidance and the chunked decoding
follow diffusers' StableVideoDiffusionPipeline step by step. The pieces the attack reuses (image IO,
the CLIP resize, the two conditioning paths, `denoise`) keep their gradients; only `generate`, an
entry point, turns them off.

A photo whose shape is not the model's: SVD and CogVideoX squeeze it to the model's size, as their reference
pipelines do; ControlNeXt and Wan resize it to cover the frame and crop the centre, as their releases do.
Each model's own size, frames and steps are listed with the flags below; --sample-steps is the sampler's
denoising steps (--steps is its deprecated alias: in attack.py and evaluate.py --steps is attack iterations).

example: python sample.py --image examples/astronaut.png --out astronaut.gif --model toy
"""
if __name__ == "__main__":  # Ctrl-C or SIGTERM while the modules below import: one line
    from plumbing.starting import quiet_start
    quiet_start()

import sys
from pathlib import Path

import torch
from PIL import features

from pipelines import cogvideox, controlnext, wan, wan_photo
from pipelines import poses as pose_sequences
from pipelines.prompts import RELEASE_EXAMPLE_PROMPT, RELEASE_NEGATIVE_PROMPT
from pipelines.svd import generate, load_model
from plumbing.cli import (FAILURE, MAX_FRAMES, check_writable, choose_threads, command, default_dtype,
                          default_low_memory, fail, model_size, parse_device, pose_conditioned, refuse_clashes,
                          text_conditioned, wan_model, weights_hint, write_files)
from plumbing.files import inputs_of
from plumbing.flags import sample_flags
from plumbing.photos import encoded, model_input, read_photo, to_images, video_bytes
from weights import WeightsError

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


# ---------------------------------------------------------------- command line
@command
def main(argv=None):
    args = sample_flags(__doc__).parse_args(argv)
    choose_threads(args.threads)

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
    args.fps = args.fps or (wan.FPS if wan_model(args.model) else 7)
    device = parse_device(args.device)
    dtype = getattr(torch, args.dtype or default_dtype(device))
    try:
        rgb8 = read_photo(image)[0]  # read once; each model prepares it its own way
    except ValueError as e:
        fail(f"{image}: {e}")
    resized = model_input(rgb8, (args.height, args.width)) if args.height else None
    if pose_conditioned(args.model):
        args.steps = args.steps or 25
        return sample_with_poses(args, device, dtype, rgb8, out)
    if args.pose or args.body:
        flag = "--pose" if args.pose else "--body"
        fail(f"{flag}: {args.model} is not a pose-conditioned model (--model controlnext is)")
    if wan_model(args.model):
        args.steps = args.steps or 50
        return sample_with_wan(args, device, dtype, rgb8, out)
    if args.negative_prompt is not None:
        fail(f"--negative-prompt: only for Wan (--model wan), not {args.model}")
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
    refuse_clashes([(image, path) for path in [out, *frame_files]], inputs_of(args))
    frames = generate(svd, resized, num_frames=num_frames, steps=args.steps, fps=args.fps,
                      motion_bucket_id=args.motion_bucket, noise_aug_strength=args.noise_aug,
                      min_guidance=args.min_guidance, max_guidance=args.max_guidance,
                      decode_chunk_size=args.decode_chunk, seed=args.seed, progress=True, clip_image=model_input(rgb8),
                      low_memory=default_low_memory(device) if args.low_memory is None else args.low_memory)
    write_video(frames, args, out, frame_files)


def sample_with_poses(args, device, dtype, rgb8, out):
    """ControlNeXt-SVD-v2 (pipelines/controlnext.py), with the release's settings: 25 steps unless --steps, guidance 3,
    windows of 24 frames overlapping by 6, decoding 2 frames at a time, the photo resized and centre-cropped as the
    release prepares it. Without --pose, the generic 'wave' motion, fitted to --body if given. The other SVD flags
    do not apply."""
    if args.pose and args.body:
        fail("--body fits the generic motions to the photo; --pose gives poses of its own: give one of them")
    try:
        body = args.body and pose_sequences.read_body(args.body, rgb8.shape[-2:], (args.height, args.width))
        poses = (pose_sequences.read_poses(args.pose, args.height, args.width, args.frames or MAX_FRAMES) if args.pose
                 else pose_sequences.generic_poses(args.frames or controlnext.WINDOW, args.height, args.width,
                                                   body)["wave"])
    except ValueError as e:
        fail(f"--{'pose' if args.pose else 'body'}: {e}")
    if not args.frames and len(poses) > MAX_FRAMES:
        fail(f"--pose {args.pose} has more than {MAX_FRAMES} frames; give --frames N to use its first N")
    if args.frames:
        if args.frames > len(poses):
            fail(f"--pose {args.pose} has {len(poses)} frames, fewer than the {args.frames} of --frames")
        poses = poses[:args.frames]
    try:
        networks, pose_encoder = controlnext.load_by_name(args.model, args.variant, dtype, device)
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    frame_files = frame_paths(args.frames_dir, len(poses)) if args.frames_dir else []
    refuse_clashes([(Path(args.image), path) for path in [out, *frame_files]], inputs_of(args))
    frames = controlnext.generate_controlnext(networks, pose_encoder, controlnext.photo_input(rgb8, poses.shape[-2:]),
                                              poses, steps=args.steps, seed=args.seed, progress=True)
    write_video(frames, args, out, frame_files)


def sample_with_text(args, device, dtype, resized, out):
    """CogVideoX-5B-I2V (pipelines/cogvideox.py), as the reference pipeline runs it: 49 frames unless --frames (4k + 1),
    guidance 6, DDIM or DPM; the prompt's T5 embedding made once, the text encoder freed before sampling."""
    num_frames = args.frames or 49
    if (num_frames - 1) % 4:
        fail(f"--frames: CogVideoX makes 4k + 1 frames (49, 45, ...), got {num_frames}")
    try:
        model = cogvideox.load_by_name(args.model, dtype, device)
        ids, negative = cogvideox.prompt_tokens(model.source, args.prompt or ""), cogvideox.prompt_ids("")
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    except ValueError as e:
        fail(f"--prompt: {e}")
    with torch.no_grad():
        embeds, negative = (cogvideox.prompt_embeddings(model.text_encoder, i.to(device)) for i in (ids, negative))
    model.text_encoder = None  # 9.5 GB in bfloat16, needed once
    frame_files = frame_paths(args.frames_dir, num_frames) if args.frames_dir else []
    refuse_clashes([(Path(args.image), path) for path in [out, *frame_files]], inputs_of(args))
    frames = cogvideox.generate_cogvideox(model, resized, prompt_embeds=embeds, negative_embeds=negative,
                                          steps=args.steps, scheduler=args.scheduler,
                                          dynamic_guidance=args.dynamic_guidance, num_frames=num_frames,
                                          seed=args.seed, progress=True)
    write_video(frames, args, out, frame_files)


def sample_with_wan(args, device, dtype, rgb8, out):
    """Wan2.2-TI2V-5B (pipelines/wan.py), as the release runs it: 121 frames unless --frames (4k + 1), written at 24 fps
    unless --fps; the frame of the photo's own shape (best_output_size at 704x1280) unless --height and --width, the
    photo resized and centre-cropped to it; guidance 5 against the release's negative prompt unless
    --negative-prompt; UniPC with shift 5 on the release's sigma grid; without --prompt, the release's example
    prompt (its generate.py's). The umT5 embeddings are made once and the encoder freed before sampling."""
    num_frames = args.frames or wan.FRAMES
    problem = wan.size_problem((args.height, args.width) if args.height else None, num_frames)  # before loading
    if problem:
        fail(problem)
    if args.scheduler != "ddim" or args.dynamic_guidance:
        fail("--scheduler and --dynamic-guidance are CogVideoX's; Wan samples with the release's UniPC")
    if args.prompt is None:
        args.prompt = RELEASE_EXAMPLE_PROMPT
        print(f"Wan: no --prompt, so the release's example prompt: {args.prompt!r}", file=sys.stderr)
    negative = RELEASE_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
    try:
        model = wan.load_by_name(args.model, dtype, device)
        tokenizer = wan.load_tokenizer(model.source)
        with torch.no_grad():
            text, negative = (wan.prompt_embeddings(model.text_encoder, *wan.prompt_ids(tokenizer, p))
                              for p in (args.prompt, negative))
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    model.text_encoder = None  # 10.6 GiB in bfloat16, needed once
    size = (args.height, args.width) if args.height else wan.frame_size(rgb8.shape[-2:], model)
    frame_files = frame_paths(args.frames_dir, num_frames) if args.frames_dir else []
    refuse_clashes([(Path(args.image), path) for path in [out, *frame_files]], inputs_of(args))
    frames = wan.generate_wan(model, wan_photo.release_input(rgb8, size), prompt_embeds=text, negative_embeds=negative,
                              steps=args.steps, num_frames=num_frames, seed=args.seed, progress=True)
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
