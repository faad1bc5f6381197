"""Configs of the three SVD networks.

Field names are the keys of the official config.json files, so a config is built straight from one
(`UNetConfig.from_json_dict(json.load(f))`); defaults are the released
stabilityai/stable-video-diffusion-img2vid values.
"""
import math
import reprlib
from dataclasses import dataclass, fields
from typing import get_args


class JSONConfig:
    @classmethod
    def from_json_dict(cls, d):
        """Build from a config.json dict, keeping the keys this config knows (lists become tuples). A value
        not of its field's type, a number that is not positive and finite, or a size beyond its bound (MAX_INT,
        MAX_LAYERS, MAX_ENTRIES) is a ValueError naming the key."""
        return cls(**{f.name: checked(f.name, d[f.name], f.type) for f in fields(cls) if f.name in d})


# Bounds far above every release's sizes (umT5's 256384 tokens, 48 layers, 48-entry lists), so that a typo's
# 100000 layers is refused at once instead of building for minutes, even on the meta device.
MAX_INT, MAX_LAYERS, MAX_ENTRIES = 2**24, 256, 64
EXPECTED = {int: "a positive integer", float: "a positive number", bool: "true or false", str: "a string",
            tuple: "a list", type(None): "null"}


def checked(key, value, kind):
    """One config.json value as a field of type `kind` (int, float, bool, str, tuple, or a union of them)."""
    kinds = get_args(kind) or (kind,)
    if tuple in kinds and isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_ENTRIES:
        return tuple(checked(key, v, int | str) for v in value)
    if int in kinds and type(value) is int and value > (MAX_LAYERS if "layers" in key else MAX_INT):
        raise ValueError(f"{key} = {reprlib.repr(value)}: expected a positive integer up to "
                         f"{MAX_LAYERS if 'layers' in key else MAX_INT}")
    if value is None:
        ok = type(None) in kinds
    elif isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, (int, float)):
        ok = (int in kinds and isinstance(value, int) or float in kinds) and 0 < value < math.inf
    else:
        ok = str in kinds and isinstance(value, str)
    if not ok:
        raise ValueError(f"{key} = {reprlib.repr(value)}: expected {' or '.join(EXPECTED[k] for k in kinds)}")
    return value


@dataclass
class VAEConfig(JSONConfig):
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",) * 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    sample_size: int = 768
    scaling_factor: float = 0.18215
    force_upcast: bool = True


@dataclass
class UNetConfig(JSONConfig):
    sample_size: int | None = 96  # no layer uses it; diffusers writes null when it is not given
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    up_block_types: tuple = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3
    block_out_channels: tuple = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    # these four may be one int for every level or a tuple with one entry per level
    layers_per_block: int | tuple = 2
    cross_attention_dim: int | tuple = 1024
    transformer_layers_per_block: int | tuple = 1
    num_attention_heads: int | tuple = (5, 10, 20, 20)
    num_frames: int = 14  # 25 for the -xt release (see FRAMES_PER_RELEASE)


@dataclass
class CLIPConfig(JSONConfig):
    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 1024
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"  # exact GELU for SVD; "quick_gelu" for the original OpenAI CLIP models


# The two official releases differ only in the number of frames the UNet was trained on.
FRAMES_PER_RELEASE = {
    "stabilityai/stable-video-diffusion-img2vid": 14,
    "stabilityai/stable-video-diffusion-img2vid-xt": 25,
}
