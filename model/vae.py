"""The SVD autoencoder: the standard Stable Diffusion image encoder, and a decoder that also mixes
information across frames (spatio-temporal res blocks and a final Conv3d over time)."""
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .config import VAEConfig
from .layers import Attention, Downsample, ResBlock, SpatioTemporalResBlock, Upsample, container, maybe_checkpoint


class ImageAttention(Attention):
    """Single-head self-attention over the pixels of a feature map, with a GroupNorm and a residual."""

    def __init__(self, channels):
        super().__init__(channels, heads=1, head_dim=channels, bias=True)
        self.group_norm = nn.GroupNorm(32, channels, eps=1e-6)

    def forward(self, x):
        h = x.shape[-2]
        tokens = rearrange(self.group_norm(x), "n c h w -> n (h w) c")
        out, _ = super().forward(tokens)
        return x + rearrange(out, "n (h w) c -> n c h w", h=h)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            c_in = ch[max(i - 1, 0)]
            resnets = [ResBlock(c_in if j == 0 else c, c) for j in range(cfg.layers_per_block)]
            down = [Downsample(c, pad_right_bottom=True)] if i < len(ch) - 1 else []
            self.down_blocks.append(container(resnets=nn.ModuleList(resnets), downsamplers=nn.ModuleList(down)))
        self.mid_block = container(resnets=nn.ModuleList([ResBlock(ch[-1], ch[-1]), ResBlock(ch[-1], ch[-1])]),
                                   attentions=nn.ModuleList([ImageAttention(ch[-1])]))
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x, checkpointing=False):
        x = self.conv_in(x)
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = maybe_checkpoint(checkpointing, resnet, x)
            for down in block.downsamplers:
                x = down(x)
        mid = self.mid_block
        x = maybe_checkpoint(checkpointing, lambda h: mid.resnets[1](mid.attentions[0](mid.resnets[0](h))), x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def video_res_block(c_in, c_out):
    """The decoder's res block: no time embedding, temporal GroupNorm eps 1e-5, switched mixing from 0."""
    return SpatioTemporalResBlock(c_in, c_out, eps=1e-6, temporal_eps=1e-5, mix_factor=0.0, switched=True)


class TemporalDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = tuple(reversed(cfg.block_out_channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        # The checkpoint layout has layers_per_block res blocks here but one attention; the forward pass
        # interleaves them (resnet, attention, resnet) and, for the released layers_per_block=2, uses all.
        self.mid_block = container(
            resnets=nn.ModuleList([video_res_block(ch[0], ch[0]) for _ in range(cfg.layers_per_block)]),
            attentions=nn.ModuleList([ImageAttention(ch[0])]))
        self.up_blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            c_in = ch[max(i - 1, 0)]
            resnets = [video_res_block(c_in if j == 0 else c, c) for j in range(cfg.layers_per_block + 1)]
            up = [Upsample(c)] if i < len(ch) - 1 else []
            self.up_blocks.append(container(resnets=nn.ModuleList(resnets), upsamplers=nn.ModuleList(up)))
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z, num_frames):
        x = self.conv_in(z)
        x = self.mid_block.resnets[0](x, None, num_frames)
        for attention, resnet in zip(self.mid_block.attentions, self.mid_block.resnets[1:]):
            x = resnet(attention(x), None, num_frames)
        for block in self.up_blocks:
            for resnet in block.resnets:
                x = resnet(x, None, num_frames)
            for up in block.upsamplers:
                x = up(x)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        x = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        return rearrange(self.time_conv_out(x), "b c f h w -> (b f) c h w")


class VAE(nn.Module):
    """SVD's AutoencoderKLTemporalDecoder: images (N,3,H,W) in [-1,1] <-> latents (N,4,H/8,W/8)."""

    def __init__(self, cfg=VAEConfig()):
        super().__init__()
        if any(t != "DownEncoderBlock2D" for t in cfg.down_block_types):
            raise ValueError(f"unsupported VAE down_block_types {cfg.down_block_types}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.decoder = TemporalDecoder(cfg)
        self.checkpointing = False  # memory mode: recompute encoder activations in the backward pass

    def encode(self, x):
        """x (N,3,H,W) in [-1,1] -> (mean, logvar) of the latent Gaussian, each (N,4,H/8,W/8), logvar clamped to [-30, 20]."""
        mean, logvar = self.quant_conv(self.encoder(x, self.checkpointing)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z, num_frames):
        """z (B*F,4,h,w), already divided by the scaling factor, frames of each video consecutive -> (B*F,3,8h,8w) in [-1,1]."""
        if z.shape[0] % num_frames:
            raise ValueError(f"{z.shape[0]} latents are not a whole number of {num_frames}-frame videos")
        return self.decoder(z, num_frames)
