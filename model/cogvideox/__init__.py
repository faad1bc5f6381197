"""CogVideoX-5B-I2V networks (a DiT with text), written to load the official safetensors weights as they are."""
from .transformer import CogVideoXTransformer, CogVideoXTransformerConfig
from .vae import CogVideoXVAE, CogVideoXVAEConfig

__all__ = ["CogVideoXTransformer", "CogVideoXTransformerConfig", "CogVideoXVAE", "CogVideoXVAEConfig"]
