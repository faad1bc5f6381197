"""Test helpers: the reference implementations (diffusers / transformers) used as oracles.

Only tests import this module; the runtime code never imports diffusers or transformers.
"""
import copy
import json
import math
from dataclasses import asdict

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from model import CLIPConfig, CLIPImageEncoder, UNet, UNetConfig, VAE, VAEConfig

TOL = 1e-4  # max abs difference allowed between our outputs and the oracle's (float32)

# ---------------------------------------------------------------- official configs (svd-facts.md)
OFFICIAL_UNET = dict(
    sample_size=96, in_channels=8, out_channels=4,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    block_out_channels=[320, 640, 1280, 1280], addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
    transformer_layers_per_block=1, num_attention_heads=[5, 10, 20, 20], num_frames=14,
)
OFFICIAL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
    sample_size=768, scaling_factor=0.18215, force_upcast=True,
)
OFFICIAL_CLIP = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
    num_channels=3, patch_size=14, image_size=224, projection_dim=1024, layer_norm_eps=1e-5,
    hidden_act="gelu",
)

# ---------------------------------------------------------------- tiny configs (GroupNorm: 32 groups)
_CROSS = "CrossAttnDownBlockSpatioTemporal"
_SMALL_UNET = dict(in_channels=8, out_channels=4, cross_attention_dim=32, addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=24, sample_size=8)
TINY_UNETS = {
    # the official 4-level layout, several heads per block
    "4level": dict(_SMALL_UNET, down_block_types=[_CROSS] * 3 + ["DownBlockSpatioTemporal"],
                   up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
                   block_out_channels=[32, 64, 64, 64], num_attention_heads=[2, 2, 4, 4],
                   layers_per_block=2, transformer_layers_per_block=1, num_frames=14),
    # same layout, one int for the heads of every level
    "4level-intheads": dict(_SMALL_UNET, down_block_types=[_CROSS] * 3 + ["DownBlockSpatioTemporal"],
                            up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
                            block_out_channels=[32, 32, 64, 64], num_attention_heads=2,
                            layers_per_block=2, transformer_layers_per_block=1, num_frames=14),
    # 2 levels, one res block per level, two transformer layers per transformer
    "2level-tl2": dict(_SMALL_UNET, down_block_types=[_CROSS, "DownBlockSpatioTemporal"],
                       up_block_types=["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
                       block_out_channels=[32, 64], num_attention_heads=[2, 4],
                       layers_per_block=1, transformer_layers_per_block=2, num_frames=4),
}
TINY_VAES = {
    "2level-lpb1": dict(OFFICIAL_VAE, down_block_types=["DownEncoderBlock2D"] * 2,
                        block_out_channels=[32, 64], layers_per_block=1, sample_size=32),
    "3level": dict(OFFICIAL_VAE, down_block_types=["DownEncoderBlock2D"] * 3,
                   block_out_channels=[32, 32, 64], layers_per_block=2, sample_size=32),
}
TINY_CLIPS = {
    "gelu": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_channels=3, patch_size=4, image_size=16, projection_dim=32, layer_norm_eps=1e-5,
                 hidden_act="gelu"),
    "quick_gelu": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                       num_channels=3, patch_size=8, image_size=32, projection_dim=16,
                       layer_norm_eps=1e-6, hidden_act="quick_gelu"),
}


# ---------------------------------------------------------------- building oracles and our twins
@torch.no_grad()
def randomize_(module, seed):
    """Add seeded noise to every parameter (norm affines, biases, mix factors and zero-initialised
    weights included) so no layer is trivially zero or an identity."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        std = p.float().std().item() if p.numel() > 1 else 0.0
        p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * max(0.5 * std, 0.05))
    return module


def oracle_unet(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize_(UNetSpatioTemporalConditionModel(**cfg), seed).eval()


def oracle_vae(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize_(AutoencoderKLTemporalDecoder(**cfg), seed).eval()


def oracle_clip(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize_(CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)), seed).eval()


def twin(cls, config_cls, cfg, oracle):
    """Our module built from the same config, holding the oracle's weights (strict load)."""
    ours = cls(config_cls.from_json_dict(json.loads(json.dumps(cfg))))
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours.eval()


def unet_pair(cfg, seed=0):
    oracle = oracle_unet(cfg, seed)
    return oracle, twin(UNet, UNetConfig, cfg, oracle)


def vae_pair(cfg, seed=0):
    oracle = oracle_vae(cfg, seed)
    return oracle, twin(VAE, VAEConfig, cfg, oracle)


def clip_pair(cfg, seed=0):
    oracle = oracle_clip(cfg, seed)
    return oracle, twin(CLIPImageEncoder, CLIPConfig, cfg, oracle)


# ---------------------------------------------------------------- inputs and comparisons
def unet_inputs(cfg, batch, frames, height, width, seed=0):
    """(sample, encoder_hidden_states, added_time_ids) for a UNet forward."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, cfg["in_channels"], height, width, generator=g)
    ehs = torch.randn(batch, 1, cfg["cross_attention_dim"], generator=g)
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02], [9.0, 40.0, 0.1]])[:batch]
    return sample, ehs, added_time_ids


def max_abs_diff(label, ours, ref):
    """Print and return max |ours - ref| (run pytest -s to see the measured values)."""
    assert ours.shape == ref.shape, f"{label}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    print(f"\n[parity] {label}: max abs diff {diff:.3e} (max |ref| {ref.abs().max().item():.3g})")
    return diff


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def normalized(cfg):
    """A config (dataclass or dict) as a plain dict with lists for sequences, for comparisons."""
    d = asdict(cfg) if not isinstance(cfg, dict) else dict(cfg)
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}


# ---------------------------------------------------------------- temporal attention probes
class TemporalProbe(AttnProcessor2_0):
    """Standard diffusers attention that also records softmax(QK^T / sqrt(d)) computed from the
    oracle's own to_q / to_k projections."""

    probs = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        n = hidden_states.shape[0]
        q = attn.to_q(hidden_states).view(n, hidden_states.shape[1], attn.heads, -1).transpose(1, 2)
        k = attn.to_k(context).view(n, context.shape[1], attn.heads, -1).transpose(1, 2)
        self.probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def attach_probes(oracle_unet_model, block_name):
    """Install one probe on attn1 of every temporal layer of the named transformer block."""
    transformer = oracle_unet_model.get_submodule(block_name)
    probes = []
    for layer in transformer.temporal_transformer_blocks:
        probes.append(TemporalProbe())
        layer.attn1.set_processor(probes[-1])
    return probes


def token_grid(height, width, level):
    """Spatial size after `level` stride-2 (k3, p1) downsamplings: ceil-halving."""
    for _ in range(level):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


# ---------------------------------------------------------------- saving a diffusers-layout directory
MODEL_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}


def save_svd_dir(root, unet, vae, image_encoder, variant=None):
    """Write the three oracles in the official layout; variant="fp16" stores half-precision tensors
    under the *.fp16.safetensors names, as the official repos do."""
    root.mkdir(parents=True, exist_ok=True)
    for name, model in [("unet", unet), ("vae", vae), ("image_encoder", image_encoder)]:
        if variant == "fp16":
            copy.deepcopy(model).half().save_pretrained(root / name, variant="fp16")
        else:
            model.save_pretrained(root / name)
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return root
