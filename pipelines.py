"""The image-to-video models attack.py protects against, by their --model name, each as the pieces of
Algorithm 1 (P, E, S, G: see svd.py for what each piece is).

  Stable Video Diffusion img2vid   a hub repo id or a local folder in the official layout; 'toy' (the
                                   small SVD trained on a CPU, toy/); 'tiny' (untrained, for tests)
  ControlNeXt-SVD-v2 (pose)        'controlnext' (the release), a local folder with a controlnet/ folder
                                   (controlnext.py), or 'tiny-controlnext' (untrained, for tests); its
                                   condition is a pose sequence: given, or the generic ones of poses.py,
                                   one drawn per iteration
  CogVideoX-5B-I2V (text)          'cogvideox' (THUDM/CogVideoX-5b-I2V), a local folder with transformer/
                                   (cogvideox.py), or 'tiny-cogvideox' (untrained, for tests); its condition
                                   is the prompt's T5 embedding, made once (empty: image only)
"""
import cogvideox
import controlnext
from cli import pose_conditioned, text_conditioned
from poses import generic_poses
from sample import load_model
from svd import SVDPipeline

MODEL_HELP = ("SVD img2vid: hub repo id or local folder in the official layout, 'toy' (a small SVD trained on a "
              "CPU, 64x64, 8 frames) or 'tiny' (untrained random weights: protects nothing, for tests); "
              "ControlNeXt-SVD-v2: 'controlnext', a local folder with controlnet/, or 'tiny-controlnext'; "
              "CogVideoX-5B-I2V: 'cogvideox', a local folder with transformer/, or 'tiny-cogvideox'")


def load_pipeline(name, device, dtype, variant="fp16", *, poses=None, prompt="", size=None, num_frames=None):
    """The adversary's pipeline for a --model name, its networks on `device` in `dtype`. A pose-conditioned
    model follows `poses`, a list of pose sequences (F,3,H,W) in [0,1], or else the generic sequences of
    poses.py drawn at `size` with `num_frames` frames (default: one sampling window, or the UNet's frames);
    a text-conditioned one, `prompt`."""
    if text_conditioned(name):
        return cogvideox.CogVideoXPipeline(cogvideox.load_by_name(name, dtype, device), prompt)
    if not pose_conditioned(name):
        return SVDPipeline(load_model(name, device, dtype, variant))
    networks, pose_encoder = controlnext.load_by_name(name, variant, dtype, device)
    if poses is None:
        frames = num_frames or min(controlnext.WINDOW, networks.unet.config.num_frames)
        poses = list(generic_poses(frames, *size).values())
    return controlnext.ControlNeXtPipeline(networks, pose_encoder, poses)
