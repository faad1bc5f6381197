"""The image-to-video models attack.py protects against, by their --model name, each as the pieces of
Algorithm 1 (P, E, S, G: see svd.py for what each piece is).

Stable Video Diffusion img2vid: a hub repo id or a local folder in the official layout, 'toy' (the small
SVD trained on a CPU, toy/) or 'tiny' (untrained random networks, for tests).
"""
from sample import load_model
from svd import SVDPipeline

MODEL_HELP = ("hub repo id or local folder of SVD img2vid in the official layout, 'toy' (a small SVD trained on a "
              "CPU, 64x64, 8 frames), or 'tiny' (untrained random weights: protects nothing, for tests)")


def load_pipeline(name, device, dtype, variant="fp16"):
    """The adversary's pipeline for a --model name, its networks on `device` in `dtype`."""
    return SVDPipeline(load_model(name, device, dtype, variant))
