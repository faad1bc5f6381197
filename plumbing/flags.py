"""The three commands' flags, side by side, so that one vocabulary holds across them: a flag that two
commands share has one name and one meaning (attack.py, sample.py and evaluate.py each parse theirs here).
"""
import argparse
import sys

import torch

from judging.transforms import PURIFY, parse_eot, parse_list
from plumbing.cli import (MAX_FRAMES, MAX_SAMPLE_STEPS, MAX_SEED, MAX_SIDE, MODEL_HELP, Parser,
                          fail, integer, model_size, number, number_in, path, pose_conditioned, text_conditioned,
                          variant, wan_model)
from plumbing.shard import JOIN_TIMEOUT_S, parse_shard
from weights import DEFAULT_MODEL

DINO_SOURCE = "facebook/dino-vitb16"
AESTHETIC_SOURCE = "shunk031/aesthetics-predictor-v1-vit-large-patch14"


def eot_kinds(text):
    try:
        return parse_eot(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def transform_list(text):
    try:
        return parse_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seed_list(text):
    parse = integer(0, MAX_SEED)
    seeds = [parse(s) for s in text.split(",") if s.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given")
    return list(dict.fromkeys(seeds))


# Each model's own defaults, said once for every command's -h (plumbing/cli.py model_size, each pipeline's frames)
SIZE_DEFAULTS = ("SVD 576x1024, ControlNeXt 1024x576, CogVideoX 480x720, Wan the photo's own shape at about "
                 "704x1280's area, toy 64x64, tiny and tiny-controlnext 128x128, tiny-cogvideox 32x32")
HEIGHT_HELP = f"the model's frame height, a multiple of 8 (default: the model's own: {SIZE_DEFAULTS})"
WIDTH_HELP = "the model's frame width, a multiple of 8 (default: the model's own, as for --height)"
FRAMES_DEFAULTS = ("SVD img2vid 14, -xt 25, ControlNeXt 24 (one sampling window), CogVideoX 49, Wan 121, toy 8, "
                   "tiny 6")

# How the budget is spent: the paper's (eps at every pixel, each colour channel on its own) and the default,
# chosen by the curve of docs/imperceptibility.md. protect()'s defaults are DEFAULT_BUDGET's (tested).
PAPER_BUDGET = {"budget": "flat", "chroma": 1.0, "fidelity": 0.0}
DEFAULT_BUDGET = {"budget": "perceptual", "chroma": 0.0, "fidelity": 0.0}


def budget_flags(p):
    """How the L_inf budget is spent over the photo (attack.py, evaluate.py): protect()'s budget, chroma and
    fidelity; --paper for the paper's own (resolve_budget fills in what is not given)."""
    p.add_argument("--paper", action="store_true",
                   help="the paper's plain attack: --eps at every pixel, each colour channel on its own, no fidelity "
                        "term (--budget flat --chroma 1 --fidelity 0); the default spends the budget where it shows "
                        "least (docs/imperceptibility.md)")
    p.add_argument("--budget", choices=["perceptual", "flat"],
                   help="how the L_inf budget is spread over the photo: perceptual (the default), each pixel the share "
                        "min(1, JND / 8 levels) of --eps (a JND model: at 8/255 one just-noticeable difference; "
                        "little on smooth skin and sky, all of --eps in texture and shadow); flat, --eps at every "
                        "pixel, as the paper")
    p.add_argument("--chroma", type=number_in(0, 1),
                   help="the share of --eps the colour channels may spend apart: 0 (the default), the three move "
                        "together (lightness only, no colour cast); 1, each channel on its own, as the paper")
    p.add_argument("--fidelity", type=number_in(0, 1e6),
                   help="weight of ||I_adv - I_src||^2 in Eq. 4, relative to its calibrated gradient, as alpha, beta "
                        "and gamma are (default 0, as the paper: the L_inf projection alone keeps the photo close); "
                        "1 buys 2.9 dB of photo PSNR for 2.3 dB of protection on the toy (docs/imperceptibility.md)")


def resolve_budget(parser, args):
    """Fill in --budget, --chroma and --fidelity: the paper's with --paper (and none of them given), else the
    default for each one not given."""
    given = [name for name in PAPER_BUDGET if getattr(args, name) is not None]
    if args.paper and given:
        parser.error(f"--paper is the paper's own budget; leave out --{given[0]}")
    for name, value in (PAPER_BUDGET if args.paper else DEFAULT_BUDGET).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# attack.py -h, after its flags: how to read its progress, and what each model does with a photo of another shape
ATTACK_EPILOG = """\
Reading the progress bar (docs/method.md): enc and con are L_enc and L_con against their values at step 1, dA is
the attention distance ||A_adv - A_src||^2. Each step draws its own noise level, and L_con spans a factor of hundreds
across them, so con jumps from step to step (0.8x, then 1.2x): a rise is the level drawn, not the attack failing.
Whether the photo is protected is the video check's line at the end: the guarded photo's video against that of
random noise of the same L_inf.

Each model's own size, frames, --eps and --sample-steps are listed with their flags above. A photo whose shape
is not the model's: SVD and CogVideoX squeeze it to the model's size, as their reference pipelines do; ControlNeXt
and Wan resize it to cover the frame and crop the centre, as their releases do."""


def attack_flags(description):
    p = Parser(description=description, epilog=ATTACK_EPILOG)
    p.add_argument("--image", type=path, nargs="+", required=True, help="photo files and/or folders of photos")
    p.add_argument("--out", type=path,
                   help="output PNG (one photo) or folder (several photos, a folder, or a path ending "
                   "in /); default: <photo>.guarded.png beside each photo")
    p.add_argument("--mask", type=path,
                   help="protect only where this image (same size as the photo) is brighter than mid-grey")
    p.add_argument("--method", choices=["i2vguard", "photoguard", "random-sign"], default="i2vguard",
                   help="i2vguard, the encoder-only baseline, or random +-eps noise (same L_inf)")
    p.add_argument("--no-spatial", action="store_true", help="ablation: drop L_enc")
    p.add_argument("--no-temporal", action="store_true", help="ablation: drop L_att")
    p.add_argument("--no-diffusion", action="store_true", help="ablation: drop L_con")
    p.add_argument("--steps", type=integer(1), default=50, help="attack iterations (in every command; the sampler's "
                   "denoising steps are --sample-steps)")
    p.add_argument("--eps", type=number, help="L_inf budget in [0,1] pixel units (default: 8/255; 16/255 for "
                   "CogVideoX and Wan, the text-conditioned models: the paper says CogVideoX needs stronger noise than "
                   "SVD)")
    p.add_argument("--step-size", type=number, default="1/255", help="lambda, the step size of each update")
    p.add_argument("--update", choices=["sign", "gradient"], default="sign",
                   help="sign: PGD, I -= lambda sign(grad); gradient: Algorithm 1 as written, I -= lambda grad")
    p.add_argument("--alpha", type=number, default=1.0, help="weight of L_enc, relative to its calibrated gradient")
    p.add_argument("--beta", type=number, default=1.0, help="weight of L_con, relative to its calibrated gradient")
    p.add_argument("--gamma", type=number, default=1.0, help="weight of L_att, relative to its calibrated gradient")
    p.add_argument("--perturb-at", choices=["model", "photo"], default="model",
                   help="where the perturbation's steps are taken for a photo larger than the model's input: on a "
                        "grid of the model's input size, upsampled to the photo, so that the pipeline's downscale "
                        "keeps it; or at the photo's own pixels, as the paper's Algorithm 1 (the same attack for "
                        "photos no larger than the model's input)")
    budget_flags(p)
    p.add_argument("--recalibrate", type=integer(0), default=0, metavar="K",
                   help="calibrate the weights again every K steps, so that the terms stay on a similar scale "
                        "(0: once, at the start, as the paper does); the report's balance shows each term's share")
    p.add_argument("--tau1", type=number, default=0.5, help="margin of L_con's hinge (mean squared latent distance; "
                   "the report's con_hinge_active_share says how often it was not yet reached)")
    p.add_argument("--tau2", type=number, default=0.5, help="offset of L_att (does not change the gradient)")
    p.add_argument("--eot", type=eot_kinds, metavar="KINDS",
                   help="expectation over transformations: comma-separated, each a kind whose strength is drawn "
                        "(jpeg,resize,blur,noise,crop,long,denoise), vae (the model's own VAE round trip), a "
                        "transformation with its value (jpeg75) or a chain of these (noise+vae, long1080+jpeg); "
                        "'purify' names the --transforms purify set; each iteration attacks the photo after one of "
                        "them (or none), drawn at random (judging/transforms.py), so that the protection survives "
                        "them")
    p.add_argument("--pose", type=path, metavar="POSES",
                   help="pose-conditioned models: the adversary's pose sequence, a folder of pose frames (sorted by "
                        "name) or an animated GIF/WebP; default: the generic sequences of pipelines/poses.py, one "
                        "drawn per iteration (expectation over conditions)")
    p.add_argument("--body", type=path, metavar="JSON",
                   help="pose-conditioned models, one photo: its 18 OpenPose body keypoints, "
                   "a JSON list of [x, y] in the photo's pixels (null: not seen); the generic sequences start from "
                   "the photo's pose and are fitted to its body, as the release fits its driving poses")
    p.add_argument("--averaged-maps", action="store_true",
                   help="text-conditioned models (--model cogvideox): attack each block's temporal map averaged over "
                        "the token positions of a frame (one F x F map per head), not one map per position")
    p.add_argument("--prompt", help="text-conditioned models: the adversary's prompt. CogVideoX's default: none, the "
                   "paper's image-only setting; Wan's: unknown, so one of three plain prompts asking to animate a "
                   "person (pipelines/prompts.py) is drawn per iteration, each with its own V_0; '' is image only")
    p.add_argument("--negative-prompt", help="Wan: the adversary's negative prompt, guided away from at scale 5 "
                   "(default: the release's own, pipelines/prompts.py)")
    p.add_argument("--attn-blocks", type=lambda s: tuple(s.split(",")), default=None,
                   help="comma-separated names of the denoiser's blocks whose temporal attention maps are "
                        "attacked (default: the model's own choice, see docs/method.md, Attention maps)")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES),
                   help=f"video frames (default: the model's own: {FRAMES_DEFAULTS})")
    p.add_argument("--height", type=integer(8, MAX_SIDE), help=HEIGHT_HELP)
    p.add_argument("--width", type=integer(8, MAX_SIDE), help=WIDTH_HELP)
    p.add_argument("--sample-steps", type=integer(1, MAX_SAMPLE_STEPS),
                   help="denoising steps of the adversary's sampler: V_0, the attacked noise levels and the preview "
                        "videos (default: 25; 50 for CogVideoX and Wan, as their releases sample)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                   help="seed of the random start, noise draws and videos")
    p.add_argument("--model", type=path, default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--variant", type=variant, default="fp16", help="weight files: fp16 for *.fp16.safetensors "
                   "(as the official repos ship), none for *.safetensors")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=integer(1, 1024), help="CPU threads (default: OMP_NUM_THREADS, else one per "
                   "core not busy with other work)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="model dtype (default: bfloat16 on CUDA, float32 elsewhere); the image stays float32")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="recompute UNet and VAE-encoder activations in the backward pass instead of keeping them "
                        "(default on a GPU: off if the whole run's estimated memory fits in the free memory, else on; "
                        "a run that does not fit either way is refused before loading. Off on a CPU)")
    p.add_argument("--video-check", action=argparse.BooleanOptionalAction, default=True,
                   help="make the videos of the photo, of the guarded photo and of the photo with random +-eps noise "
                        "(--method random-sign's) at a seed the attack did not use (--seed + 1) and report how far "
                        "each is from the photo's (video_psnr_db, video_ssim; noise_video_psnr_db, noise_video_ssim): "
                        "the guarded one far below the noise's says the photo is protected; costs three videos per "
                        "photo")
    p.add_argument("--preview", action="store_true", help="also write before/after videos and a side-by-side GIF of "
                   "the clean, guarded and noise photos' videos with their per-frame distance (made at the video "
                   "check's seed)")
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="protect only the K-th of N shares of the photos (a Slurm array task); under torchrun "
                        "each worker takes its part of that share")
    p.add_argument("--join-timeout", type=integer(1), default=JOIN_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun, how long a worker waits for the others to start before it gives up "
                        f"(default: {JOIN_TIMEOUT_S}); Ctrl-C ends the wait")
    return p


def attack_args(description, argv=None):
    """attack.py's flags, parsed and checked before any work: the defaults that depend on the model (--eps,
    --sample-steps, --height and --width, the budget), the ranges, and the flags only some models take."""
    parser = attack_flags(description)
    args = resolve_budget(parser, parser.parse_args(argv))
    text_model = text_conditioned(args.model)
    args.eps = args.eps if args.eps is not None else (16 if text_model else 8) / 255
    args.sample_steps = args.sample_steps or (50 if text_model else 25)
    if not 1 / 255 <= args.eps <= 1:
        fail(f"--eps must be between 1/255 and 1, got {args.eps:g}")
    if args.step_size <= 0:
        fail(f"--step-size must be positive, got {args.step_size:g}")
    args.height, args.width = model_size(args.height, args.width, args.model)
    for flag in ("prompt", "averaged_maps"):
        if getattr(args, flag) and not text_model:
            fail(f"--{flag.replace('_', '-')}: only for a text-conditioned model (--model cogvideox), not {args.model}")
    if args.negative_prompt is not None and not wan_model(args.model):
        fail(f"--negative-prompt: only for Wan (--model wan), not {args.model}")
    args.prompt = args.prompt if wan_model(args.model) else args.prompt or None  # CogVideoX: "" is no prompt
    for flag in ("pose", "body"):
        if getattr(args, flag) and not pose_conditioned(args.model):
            fail(f"--{flag}: {args.model} is not a pose-conditioned model (--model controlnext is)")
    return args


def check_against_model(args, model, poses):
    """attack.py's flags that only the loaded model (pipelines/__init__.py) can check or fill in: --frames (the
    model's own by default, a size it takes, no more than --pose has), --low-memory and --attn-blocks; and for Wan
    without --prompt, one line on the prompts the attack assumes."""
    args.frames = args.frames or model.num_frames
    if wan_model(args.model) and args.prompt is None:
        print(f"Wan: the adversary's prompt is unknown; the attack assumes one of {model.motions} plain prompts asking "
              "to animate a person, drawn per iteration (pipelines/prompts.py; --prompt gives it)", file=sys.stderr)
    if args.height and model.size_problem((args.height, args.width), args.frames):  # Wan's: each photo's own
        fail(model.size_problem((args.height, args.width), args.frames))
    if poses is not None and args.frames > len(poses[0]):
        fail(f"--pose {args.pose} has {len(poses[0])} frames, fewer than the {args.frames} of --frames")
    args.low_memory = bool(args.low_memory)  # on a GPU, chosen before loading (plumbing/memory.py) unless given
    args.attn_blocks = args.attn_blocks or model.default_attn_blocks()
    unknown = set(args.attn_blocks) - set(model.attention_names)
    if unknown:
        fail(f"--attn-blocks: no temporal attention named {', '.join(sorted(unknown))}")


def sample_flags(description):
    p = Parser(description=description)
    p.add_argument("--image", type=path, required=True, help="input photo (any still image Pillow reads)")
    p.add_argument("--out", type=path, required=True, help="output video, .gif or .webp")
    p.add_argument("--frames-dir", type=path, help="also write every frame as a PNG into this folder")
    p.add_argument("--model", type=path, default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--variant", type=variant, default="fp16", help="weight files: fp16 for *.fp16.safetensors "
                   "(as the official repos ship), none for *.safetensors")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), help="frames to generate (default: the model's own: "
                   f"{FRAMES_DEFAULTS}; with --pose, one per pose frame)")
    p.add_argument("--pose", type=path, metavar="POSES",
                   help="ControlNeXt (--model controlnext): the pose sequence to follow, a "
                   "folder of pose frames (sorted by name) or an animated GIF/WebP, frame 0 the photo's own pose; "
                   "default: the generic 'wave' sequence of pipelines/poses.py")
    p.add_argument("--body", type=path, metavar="JSON",
                   help="ControlNeXt: the photo's 18 OpenPose body keypoints, a JSON list of "
                   "[x, y] in the photo's pixels (null: not seen); the generic motion is fitted to them and starts "
                   "from the photo's pose, as the release fits its driving poses")
    p.add_argument("--sample-steps", "--steps", dest="steps", type=integer(1, MAX_SAMPLE_STEPS),
                   help="denoising steps of the sampler (default: 25; 50 for CogVideoX and Wan); --steps is a "
                        "deprecated alias, kept for older command lines: in attack.py and evaluate.py --steps is "
                        "attack iterations")
    p.add_argument("--prompt", help="text-conditioned models: the text prompt. CogVideoX's default: none, the paper's "
                   "image-only setting; Wan's: the release's example prompt, as its generate.py uses it")
    p.add_argument("--negative-prompt", help="Wan: the negative prompt, guided away from at scale 5 (default: the "
                   "release's own, pipelines/prompts.py)")
    p.add_argument("--scheduler", choices=["ddim", "dpm"], default="ddim",
                   help="CogVideoX: the release's DDIM, or the official demo's DPM (with --dynamic-guidance)")
    p.add_argument("--dynamic-guidance", action="store_true", help="CogVideoX: the official demo's guidance schedule")
    p.add_argument("--fps", type=integer(1, 1000), help="frame rate: SVD's conditioning (as fps - 1) and playback "
                   "(default: 7; Wan's release writes 24)")
    p.add_argument("--motion-bucket", type=int, default=127, help="motion_bucket_id, higher means more motion")
    p.add_argument("--noise-aug", type=number, default=0.02,
                   help="noise_aug_strength, noise added to the image before the VAE")
    p.add_argument("--min-guidance", type=number, default=1.0, help="guidance scale of the first frame")
    p.add_argument("--max-guidance", type=number, default=3.0,
                   help="guidance scale of the last frame; 1 or less turns guidance off")
    p.add_argument("--height", type=integer(8, MAX_SIDE), help=HEIGHT_HELP)
    p.add_argument("--width", type=integer(8, MAX_SIDE), help=WIDTH_HELP)
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="guidance branches one at a time, decoding 2 frames at a time "
                        "(default: on for GPUs under 40 GiB)")
    p.add_argument("--decode-chunk", type=integer(1, MAX_FRAMES),
                   help="frames decoded at a time (default: all at once)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                   help="seed of the noise: a seed gives the same video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=integer(1, 1024), help="CPU threads (default: OMP_NUM_THREADS, else one per "
                   "core not busy with other work)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="model dtype (default: bfloat16 on CUDA, float32 elsewhere)")
    return p


def evaluate_flags(description, methods, default_methods):
    p = Parser(description=description)
    p.add_argument("--image", "--photos", dest="image", type=path, nargs="+",
                   help="photo files and/or folders of photos (required, except with --merge-only)")
    p.add_argument("--out", type=path, required=True,
                   help="output folder (created when the first photo is done; photos already done there are skipped)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=",".join(default_methods),
                   help=f"comma-separated, from: {', '.join(methods)}")
    p.add_argument("--transforms", type=transform_list, metavar="LIST",
                   help="also make each photo's videos after these transformations and report how much "
                        "protection survives, e.g. jpeg95,jpeg75,jpeg50,resize0.5,down0.5,blur1,noise0.02 "
                        "(jpeg<quality>, resize<factor> down and back up, down<factor>, long<px> the long side "
                        "down to px, crop<fraction> of each side kept, blur<sigma px>, noise<sigma>, "
                        "denoise<sigma> a bilateral filter, vae the model's own VAE round trip), chains of them "
                        "applied left to right (noise0.05+vae, long1080+jpeg85), or 'purify': "
                        + ",".join(PURIFY))
    p.add_argument("--model", type=path, default=DEFAULT_MODEL,
                   help="SVD img2vid only (ControlNeXt and CogVideoX are not "
                   "evaluated here yet): hub repo id, local folder, 'toy' (a small SVD trained on a CPU, scored "
                   "without judges) or 'tiny' (untrained random networks, with random judges too: the numbers mean "
                   "nothing, for tests)")
    p.add_argument("--no-judges", action="store_true", help="score without DINO and the aesthetic predictor (no "
                   "download): PSNR and SSIM to V_0, flickering and the motion stand-in only")
    p.add_argument("--variant", type=variant, default="fp16", help="SVD weight files: fp16 for *.fp16.safetensors "
                   "(as the official repos ship), none for *.safetensors")
    p.add_argument("--dino", type=path, default=DINO_SOURCE,
                   help="hub repo or local folder with DINO ViT-B/16 model.safetensors")
    p.add_argument("--aesthetic", type=path, default=AESTHETIC_SOURCE,
                   help="hub repo or local folder with the LAION aesthetic predictor v1 (ViT-L/14) model.safetensors")
    p.add_argument("--steps", type=integer(1), default=50, help="attack iterations, as in attack.py")
    p.add_argument("--eps", type=number, default="8/255", help="L_inf budget in [0,1] pixel units")
    budget_flags(p)
    p.add_argument("--frames", type=integer(3, MAX_FRAMES),
                   help="video frames, at least 3 (default: the model's num_frames)")
    p.add_argument("--sample-steps", type=integer(1, MAX_SAMPLE_STEPS), default=25,
                   help="denoising steps of every video")
    p.add_argument("--height", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: SVD's 576, the toy's 64, tiny's 128)")
    p.add_argument("--width", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: SVD's 1024, the toy's 64, tiny's 128)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="seed of the attacks")
    p.add_argument("--video-seeds", type=seed_list, metavar="LIST",
                   help="comma-separated seeds of the videos that judge the protection, none of them --seed "
                        "(default: the three seeds after --seed)")
    p.add_argument("--victim", type=path, metavar="MODEL",
                   help="make every video with this SVD (hub repo id, local folder, 'toy' or 'tiny') instead of "
                        "--model, as an adversary with a fine-tune or another release would: the attacks still "
                        "run against --model (default: --model itself)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=integer(1, 1024), help="CPU threads (default: OMP_NUM_THREADS, else one per "
                   "core not busy with other work)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="SVD dtype (default: bfloat16 on CUDA, float32 elsewhere); the judges run in float32")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="recompute activations in the backward pass (default: on for GPUs under 40 GiB)")
    p.add_argument("--decode-chunk", type=integer(1, MAX_FRAMES),
                   help="frames decoded at a time (default: all at once, as the reference pipeline; the "
                        "temporal decoder mixes frames, so chunks change the video)")
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="evaluate only the K-th of N shares of the photos (a Slurm array task), without making "
                        "the tables (see --merge-only); under torchrun each worker takes its part of that share")
    p.add_argument("--join-timeout", type=integer(1), default=JOIN_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun, how long a worker waits for the others to start before it gives up "
                        f"(default: {JOIN_TIMEOUT_S}); Ctrl-C ends the wait")
    p.add_argument("--merge-only", action="store_true",
                   help="evaluate nothing: make the tables from the photo folders in --out (those of --image "
                        "when given), after --shard runs")
    return p


def protect_settings(args, terms, size):
    """attack.protect's settings from attack.py's flags, for a model input of `size`."""
    return dict(method=args.method, terms=terms, eps=args.eps, steps=args.steps, step_size=args.step_size,
                update=args.update, fidelity=args.fidelity, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                tau1=args.tau1, tau2=args.tau2, num_frames=args.frames, size=size, attn_blocks=args.attn_blocks,
                sample_steps=args.sample_steps, seed=args.seed, eot=args.eot or (), recalibrate=args.recalibrate,
                perturb_at=args.perturb_at, budget=args.budget, chroma=args.chroma)
