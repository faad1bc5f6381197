"""Stable Video Diffusion (img2vid) as Algorithm 1 takes it apart: the pieces attack.py works through.

    P(I)                  the pipeline: the video the adversary makes from a photo (sample.generate)
    E(I, d)               the encoder: the photo's conditioning latents x, through the draw d of the
                          pipeline's noise augmentation (the VAE path; what L_enc compares)
    embed(I)              the photo's second conditioning path, the CLIP image embedding c
    encode_frames(V)      frames -> the denoiser's latents X (what L_con compares)
    noise_levels(steps)   the noise levels t of the adversary's sampler; S(X_0, t, noise) = X_t
    G(X_t, t, x, c, d)    the denoiser's prediction X0_hat of the clean latents, and the temporal
                          attention maps it is asked for
Photos I are (1,3,H0,W0) in [0,1] at their own size; they reach the model through a differentiable
resize to the run's size. Any image-to-video model that provides these pieces can be attacked.
"""
import torch
import torch.nn.functional as F

from model.edm import denoise, karras_sigmas
from sample import added_time_ids, clip_embedding, generate, image_latents, model_input


def to_model_input(I, size):
    """Photo (N,3,H0,W0) in [0,1] -> (N,3,H,W) in [-1,1] at the model resolution. A differentiable
    stand-in for the pipeline's Lanczos resize: bicubic with antialiasing."""
    if tuple(I.shape[-2:]) != tuple(size):
        I = F.interpolate(I, size=size, mode="bicubic", antialias=True, align_corners=False)
    return I * 2 - 1


class SVDPipeline:
    """SVD's networks (weights.SVD) with the adversary's pipeline settings: the reference pipeline's
    defaults, 7 fps, motion bucket 127, noise augmentation 0.02."""

    def __init__(self, networks, fps=7, motion_bucket_id=127, noise_aug=0.02):
        self.networks, self.fps, self.motion_bucket_id, self.noise_aug = networks, fps, motion_bucket_id, noise_aug

    # ------------------------------------------------------------ what the attack reads
    @property
    def source(self):
        return self.networks.source

    @property
    def untrained(self):
        return self.networks.untrained

    @property
    def device(self):
        return next(self.networks.unet.parameters()).device

    @property
    def num_frames(self):
        return self.networks.unet.config.num_frames

    @property
    def attention_names(self):
        """The transformers whose temporal self-attention maps G can return."""
        return self.networks.unet.attention_names

    def default_attn_blocks(self):
        """The temporal self-attention of the last downsampling level that has attention, all its layers
        (SVD: down_blocks.2.attentions.0 and .1)."""
        down = [name for name in self.attention_names if name.startswith("down_blocks.")]
        last = max(int(name.split(".")[1]) for name in down)
        return tuple(name for name in down if name.startswith(f"down_blocks.{last}."))

    def low_memory(self, on):
        """Recompute the UNet's and the VAE encoder's activations in the backward pass instead of keeping them."""
        self.networks.unet.checkpointing = self.networks.vae.checkpointing = on

    # ------------------------------------------------------------ the pieces of Algorithm 1
    def P(self, I, *, size, num_frames, steps, seed, progress=False):
        """V = P(I): the video (F,3,H,W) in [-1,1] made from the photo through the differentiable resize."""
        return generate(self.networks, to_model_input(I, size)[0], num_frames=num_frames, steps=steps, fps=self.fps,
                        motion_bucket_id=self.motion_bucket_id, noise_aug_strength=self.noise_aug, seed=seed,
                        progress=progress, clip_image=I[0] * 2 - 1)

    def video(self, rgb8, *, size, num_frames, steps, seed, progress=False):
        """The video (F,3,H,W) in [-1,1] the adversary makes from an 8-bit photo file (Lanczos resize)."""
        return generate(self.networks, model_input(rgb8, size), num_frames=num_frames, steps=steps, seed=seed,
                        clip_image=rgb8.float() / 127.5 - 1, progress=progress)

    def encode_frames(self, V):
        """Frames (F,3,H,W) in [-1,1] -> denoiser latents X (1,F,4,H/8,W/8): posterior means times the
        scaling factor."""
        vae = self.networks.vae
        dtype = next(vae.parameters()).dtype
        return (torch.cat([vae.encode(v[None].to(dtype))[0] for v in V]).float() * vae.config.scaling_factor)[None]

    def noise_levels(self, steps):
        """The noise levels sigma the adversary's `steps`-step sampler visits."""
        return karras_sigmas(steps)[:-1].tolist()

    def draw(self, generator, size):
        """The pipeline's own randomness for one iteration: its noise-augmentation noise (1,3,H,W)."""
        return torch.randn((1, 3, *size), generator=generator)

    def S(self, X_0, sigma, noise):
        """X_t = S(X_0, t, noise): EDM's forward noising."""
        return X_0 + sigma * noise.to(X_0)

    def E(self, I, d, size):
        """x = E(I): the VAE latents the pipeline concatenates to the UNet input, unscaled posterior means
        of the noise-augmented photo (1,4,H/8,W/8)."""
        return image_latents(self.networks.vae, to_model_input(I, size), self.noise_aug, d.to(I))

    def embed(self, I):
        """The CLIP image embedding (1,1,D) of the photo at its own size."""
        return clip_embedding(self.networks.image_encoder, I * 2 - 1)

    def G(self, X_t, sigma, x, c, d, attn_maps=(), maps_only=False):
        """(X0_hat (1,F,4,h,w), {block: temporal attention maps}) = G(X_t, t, conditioning): the denoiser
        conditioned on the photo's latents x and embedding c. With maps_only it stops after the maps."""
        unet = self.networks.unet
        dtype = next(unet.parameters()).dtype
        frames = X_t.shape[1]
        latents = x.to(dtype)[:, None].expand(-1, frames, -1, -1, -1)  # (1, F, 4, h, w)
        time_ids = added_time_ids(self.fps, self.motion_bucket_id, self.noise_aug).to(X_t.device, dtype)  # (1, 3)
        return denoise(unet, X_t.to(dtype), sigma, latents, c.to(dtype), time_ids, attn_maps, maps_only)
