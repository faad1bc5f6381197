"""Stable Video Diffusion (img2vid) networks, ControlNeXt-SVD-v2's pose encoder, and the two VBench judges
(DINO, the aesthetic predictor), written to load the official safetensors weights as they are."""
from .clip import CLIPImageEncoder
from .config import FRAMES_PER_RELEASE, CLIPConfig, UNetConfig, VAEConfig
from .controlnext import PoseEncoder, PoseEncoderConfig, inject_control
from .unet import UNet
from .vae import VAE
from .vit import AESTHETIC_CLIP, DINO, AestheticPredictor, ViTConfig

__all__ = ["VAE", "UNet", "CLIPImageEncoder", "VAEConfig", "UNetConfig", "CLIPConfig", "FRAMES_PER_RELEASE",
           "DINO", "ViTConfig", "AestheticPredictor", "AESTHETIC_CLIP", "PoseEncoder", "PoseEncoderConfig",
           "inject_control"]
