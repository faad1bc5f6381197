"""The image-to-video models attack.py protects against, by their --model name, each as the pieces of
Algorithm 1 (P, E, S, G: see svd.py for what each piece is).

  Stable Video Diffusion img2vid   a hub repo id or a local folder in the official layout; 'toy' (the
                                   small SVD trained on a CPU, toy/); 'tiny' (untrained, for tests)
  ControlNeXt-SVD-v2 (pose)        'controlnext' (the release), a local folder with a controlnet/ folder
                                   (controlnext.py), or 'tiny-controlnext' (untrained, for tests); its
                                   condition is a pose sequence: given, or the generic ones of poses.py,
                                   one drawn per iteration
"""
from cli import pose_conditioned
from controlnext import WINDOW, ControlNeXtPipeline, load_by_name
from poses import generic_poses
from sample import load_model
from svd import SVDPipeline

MODEL_HELP = ("SVD img2vid: hub repo id or local folder in the official layout, 'toy' (a small SVD trained on a "
              "CPU, 64x64, 8 frames) or 'tiny' (untrained random weights: protects nothing, for tests); "
              "ControlNeXt-SVD-v2: 'controlnext', a local folder with controlnet/, or 'tiny-controlnext'")


def load_pipeline(name, device, dtype, variant="fp16", *, poses=None, size=None, num_frames=None):
    """The adversary's pipeline for a --model name, its networks on `device` in `dtype`. A pose-conditioned
    model follows `poses`, a list of pose sequences (F,3,H,W) in [0,1], or else the generic sequences of
    poses.py drawn at `size` with `num_frames` frames (default: one sampling window, or the UNet's frames)."""
    if not pose_conditioned(name):
        return SVDPipeline(load_model(name, device, dtype, variant))
    networks, pose_encoder = load_by_name(name, variant, dtype, device)
    if poses is None:
        frames = num_frames or min(WINDOW, networks.unet.config.num_frames)
        poses = list(generic_poses(frames, *size).values())
    return ControlNeXtPipeline(networks, pose_encoder, poses)
