"""Stable Video Diffusion (img2vid) networks, written to load the official safetensors weights as they are."""
from .clip import CLIPImageEncoder
from .config import FRAMES_PER_RELEASE, CLIPConfig, UNetConfig, VAEConfig
from .unet import UNet
from .vae import VAE

__all__ = ["VAE", "UNet", "CLIPImageEncoder", "VAEConfig", "UNetConfig", "CLIPConfig", "FRAMES_PER_RELEASE"]
