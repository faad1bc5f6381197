"""The image-to-video models attack.py protects against, by their --model name, each as the pieces of
Algorithm 1 (P, E, S, G: see pipelines/svd.py for what each piece is).

  Stable Video Diffusion img2vid   a hub repo id or a local folder in the official layout; 'toy' (the
                                   small SVD trained on a CPU, toy/); 'tiny' (untrained, for tests)
  ControlNeXt-SVD-v2 (pose)        'controlnext' (the release), a local folder with a controlnet/ folder
                                   (pipelines/controlnext.py), or 'tiny-controlnext' (untrained, for tests); its
                                   condition is a pose sequence: given, or the generic ones of pipelines/poses.py,
                                   one drawn per iteration
  CogVideoX-5B-I2V (text)          'cogvideox' (THUDM/CogVideoX-5b-I2V), a local folder with transformer/
                                   (pipelines/cogvideox.py), or 'tiny-cogvideox' (untrained, for tests); its condition
                                   is the prompt's T5 embedding, made once (empty: image only)
  Wan2.2-TI2V-5B (text)            'wan' (Wan-AI/Wan2.2-TI2V-5B-Diffusers), a local folder whose transformer/ is a
                                   WanTransformer3DModel (pipelines/wan.py), or 'tiny-wan' (untrained, for tests); the
                                   photo's latent replaces frame 0; its condition is the prompt's umT5 embedding, the
                                   adversary's, or else one of pipelines/prompts.py's drawn per iteration

Each model's file holds its pipeline as those pieces together with its own sampler (SVD's also holds
the conditioning that ControlNeXt reuses); poses.py draws ControlNeXt's pose sequences, tokenizer.py
is the T5 and umT5 tokenizer, prompts.py holds Wan's prompts and their cleaning, wan_photo.py how its release
frames a photo, resize.py the resizes of a photo of any size as matrix products, and guarded.py a guarded photo
larger than the model as the attack's steps resize it without making it. May import: torch, the run-time
packages, model/, weights.py and plumbing/.
Nothing here imports the judging or a command.
"""
import torch

from pipelines import cogvideox, controlnext, wan
from pipelines.poses import generic_poses
from pipelines.prompts import ATTACK_PROMPTS, RELEASE_NEGATIVE_PROMPT
from pipelines.svd import SVDPipeline, load_model
from plumbing.cli import loading, pose_conditioned, text_conditioned, wan_model


def load_pipeline(name, device, dtype, variant="fp16", *, poses=None, body=None, prompt=None, negative_prompt=None,
                  size=None, num_frames=None, averaged_maps=False):
    """The adversary's pipeline for a --model name, its networks on `device` in `dtype`. A pose-conditioned
    model follows `poses`, a list of pose sequences (F,3,H,W) in [0,1], or else the generic sequences of
    pipelines/poses.py drawn at `size` with `num_frames` frames (default: one sampling window, or the UNet's frames),
    fitted to the photo's keypoints `body` (poses.read_body) if given;
    a text-conditioned one, `prompt` (None: CogVideoX's image-only setting, Wan's ATTACK_PROMPTS) and Wan's
    `negative_prompt` (None: the release's), and its temporal maps per token position unless averaged_maps."""
    if wan_model(name):
        prompts = ATTACK_PROMPTS if prompt is None else [prompt]
        negative = RELEASE_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        return wan.WanPipeline(wan.load_by_name(name, dtype, device), prompts, negative, averaged_maps=averaged_maps)
    if text_conditioned(name):
        return cogvideox.CogVideoXPipeline(cogvideox.load_by_name(name, dtype, device), prompt or "",
                                           averaged_maps=averaged_maps)
    if not pose_conditioned(name):
        return SVDPipeline(load_model(name, device, dtype, variant))
    networks, pose_encoder = controlnext.load_by_name(name, variant, dtype, device)
    if poses is None:
        frames = num_frames or min(controlnext.WINDOW, networks.unet.config.num_frames)
        poses = list(generic_poses(frames, *size, body).values())
    return controlnext.ControlNeXtPipeline(networks, pose_encoder, poses)


def loader(args, poses=None, body=None):
    """device -> the pipeline attack.py's flags `args` name (--model, --dtype, --variant, the conditions), on that
    device, a problem said in one line (plumbing.cli.loading): the meta device gives its shapes without reading the
    weights (plumbing/memory.py)."""
    def pipeline_on(device):
        with loading(args.model):  # the one condition read while loading is the prompt's tokens
            return load_pipeline(args.model, device, getattr(torch, args.dtype), args.variant, poses=poses, body=body,
                                 prompt=args.prompt, negative_prompt=args.negative_prompt,
                                 size=(args.height, args.width), num_frames=args.frames,
                                 averaged_maps=args.averaged_maps)
    return pipeline_on
