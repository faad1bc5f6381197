"""Wan2.2-TI2V-5B networks (a DiT over video tokens with umT5 text, and the Wan2.2 VAE), written to load the
official diffusers-layout safetensors as they are."""
from .transformer import WanTransformer, WanTransformerConfig
from .umt5 import UMT5Config, UMT5Encoder
from .vae import WanVAE, WanVAEConfig

__all__ = ["WanTransformer", "WanTransformerConfig", "WanVAE", "WanVAEConfig", "UMT5Encoder",
           "UMT5Config"]
