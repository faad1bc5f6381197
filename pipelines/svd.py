"""Stable Video Diffusion (img2vid) as Algorithm 1 takes it apart: the pieces attack.py works through.

    P(I)                  the pipeline: the video the adversary makes from a photo (generate, below)
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

import math
import sys
import warnings

import torch
from tqdm import tqdm

from model.edm import denoise, euler_step, karras_sigmas
from pipelines.resize import bicubic_matrix, clip_matrix, separable
from plumbing.photos import model_input
from weights import TOY_MODEL, load_svd, tiny_svd

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- conditioning (differentiable)
def resize_for_clip(x, size=224):
    """(N,C,H,W) -> (N,C,size,size), antialiased as SVD resizes for CLIP: a Gaussian blur with sigma =
    max((factor - 1)/2, 0.001) per axis (skimage's rule), then bicubic with align_corners=True; as two matrix
    products (pipelines/resize.py), which a photo of many megapixels needs."""
    h, w = x.shape[-2:]
    return separable(x, clip_matrix(h, size), clip_matrix(w, size))


def clip_embedding(image_encoder, image):
    """CLIP path, on the clean image: (N,3,H,W) in [-1,1] -> image_embeds (N,1,D)."""
    size = image_encoder.config.image_size
    x = ((resize_for_clip(image, size) if tuple(image.shape[-2:]) != (size, size) else image) + 1) / 2
    mean, std = x.new_tensor(CLIP_MEAN).view(3, 1, 1), x.new_tensor(CLIP_STD).view(3, 1, 1)
    pixels = ((x - mean) / std).to(next(image_encoder.parameters()).dtype)
    return image_encoder(pixels).unsqueeze(1)  # (N, 1, D)


def image_latents(vae, image, noise_aug_strength, noise):
    """VAE path: the posterior mean of the noise-augmented image, NOT multiplied by the scaling factor:
    (N,3,H,W) in [-1,1] -> (N,4,H/8,W/8)."""
    mean, _ = vae.encode((image + noise_aug_strength * noise).to(next(vae.parameters()).dtype))
    return mean


def added_time_ids(fps, motion_bucket_id, noise_aug_strength, batch=1):
    """SVD's micro-conditioning (B,3): [fps - 1, motion_bucket_id, noise_aug_strength]; SVD was trained on fps - 1."""
    return torch.tensor([[fps - 1.0, motion_bucket_id, noise_aug_strength]]).repeat(batch, 1)


def decode(vae, latents, chunk_size):
    """Latents (F,4,h,w) -> frames (F,3,8h,8w) in [-1,1] (unclamped), chunk_size frames at a time, each
    chunk decoded as a clip of its own length, as the reference does."""
    z = (latents / vae.config.scaling_factor).to(next(vae.parameters()).dtype)
    return torch.cat([vae.decode(chunk, num_frames=len(chunk)) for chunk in z.split(chunk_size)]).float()


# ---------------------------------------------------------------- sampling
def sample_euler(unet, x, sigmas, cond, guidance=None, progress=False, low_memory=False):
    """EDM Algorithm 1 (Euler, no churn, Karras et al. 2022) from x at sigmas[0] to sigmas[-1] = 0.
    cond = (image_latents (B,F,4,h,w), image_embeds (B,1,D), added_time_ids (B,3)). With guidance
    (1,F,1,1,1), classifier-free guidance per frame against zero latents and a zero CLIP embedding:
    D = D_uncond + w (D_cond - D_uncond), the same as guiding the network output since D is affine in it.
    The two branches run as one batch, or with low_memory one after the other. progress: a progress bar,
    True or its label."""
    latents, embeds, time_ids = cond
    uncond = (torch.zeros_like(latents), torch.zeros_like(embeds), time_ids)
    both = [torch.cat(pair) for pair in zip(uncond, cond)]
    steps = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))
    label = progress if isinstance(progress, str) else "denoising"
    for sigma, sigma_next in tqdm(steps, desc=label, disable=not progress):
        if guidance is None:
            D, _ = denoise(unet, x, sigma, *cond)
        else:
            if low_memory:
                D_uncond, D_cond = (denoise(unet, x, sigma, *c)[0] for c in (uncond, cond))
            else:
                D_uncond, D_cond = denoise(unet, torch.cat([x, x]), sigma, *both)[0].chunk(2)
            D = D_uncond + guidance * (D_cond - D_uncond)
        x = euler_step(x.to(D.dtype), D, sigma, sigma_next).to(x.dtype)  # the step in float32, as the reference
    return x


def seeded_generator(seed):
    """The CPU generator of a pipeline run: seeded with `seed`, or at random when it is None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def image_conditioning(svd, image, clip_image, noise_aug_strength, generator):
    """The two image conditions of a pipeline run, as the reference makes them: (VAE latents (1,4,h,w) of the
    noise-augmented image (3,H,W) in [-1,1], the augmentation noise drawn first from `generator`; the CLIP
    embedding (1,1,D) of clip_image (3,H0,W0), default the image), in the UNet's dtype, on its device."""
    param = next(svd.unet.parameters())
    aug_noise = torch.randn(1, *image.shape, generator=generator)
    image, aug_noise = image[None].to(param.device), aug_noise.to(param.device)  # (1, 3, H, W), float32
    vae_dtype = next(svd.vae.parameters()).dtype
    clip_input = image if clip_image is None else clip_image[None].to(param.device)
    embeds = clip_embedding(svd.image_encoder, clip_input).to(param.dtype)
    if vae_dtype == torch.float16 and svd.vae.config.force_upcast:
        svd.vae.float()  # as the reference: a float16 VAE marked force_upcast encodes in float32
    try:
        latents = image_latents(svd.vae, image, noise_aug_strength, aug_noise).to(param.dtype)
    finally:
        svd.vae.to(vae_dtype)
    return latents, embeds


def generate(svd, image, *, num_frames=None, steps=25, fps=7, motion_bucket_id=127, noise_aug_strength=0.02,
             min_guidance=1.0, max_guidance=3.0, decode_chunk_size=None, noise=None, seed=None,
             return_latents=False, progress=False, clip_image=None, low_memory=False):
    """Image (3,H,W) in [-1,1] at model resolution -> frames (F,3,H,W) in [-1,1], or with return_latents
    the final denoised latents (F,4,H/8,W/8), on the model's device.

    noise is the unit-variance initial noise (F,4,H/8,W/8); otherwise it is drawn after the
    noise-augmentation noise (the reference's order) from a CPU generator seeded with `seed`
    (random when None): a seed gives the same video on any device, and the reference's video for
    a CPU generator with that seed. Guidance runs only when max_guidance > 1, as in the reference.
    clip_image (3,H0,W0) in [-1,1] is the photo at its own size for the CLIP path, which the reference
    encodes before resizing (default: image). low_memory runs the guidance branches one after the
    other and decodes 2 frames at a time unless decode_chunk_size says otherwise.
    """
    if image.shape[-2] % 8 or image.shape[-1] % 8:
        raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of 8")
    num_frames = num_frames or svd.unet.config.num_frames
    decode_chunk_size = decode_chunk_size or (2 if low_memory else num_frames)
    param = next(svd.unet.parameters())
    generator = seeded_generator(seed)
    with torch.no_grad():
        latents, embeds = image_conditioning(svd, image, clip_image, noise_aug_strength, generator)
        latents = latents[:, None].repeat(1, num_frames, 1, 1, 1)  # (1, F, 4, h, w)
        time_ids = added_time_ids(fps, motion_bucket_id, noise_aug_strength).to(param)

        if noise is None:
            noise = torch.randn(latents.shape[1:], generator=generator)
        if noise.shape != latents.shape[1:]:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(latents.shape[1:])}")
        sigmas = karras_sigmas(steps)
        init_noise_sigma = (sigmas[0].item() ** 2 + 1) ** 0.5  # the reference's scale of the initial noise
        x = noise[None].to(param) * init_noise_sigma  # (1, F, 4, h, w)
        guidance = None
        if max_guidance > 1:
            guidance = torch.linspace(min_guidance, max_guidance, num_frames).view(1, -1, 1, 1, 1).to(param)
        cond = (latents, embeds, time_ids)
        x = sample_euler(svd.unet, x, sigmas, cond, guidance, progress, low_memory)[0]  # (F, 4, h, w)
        if return_latents:
            return x
        return decode(svd.vae, x, decode_chunk_size).clamp(-1, 1)


# ---------------------------------------------------------------- the pieces of Algorithm 1


def to_model_input(I, size):
    """Photo (N,3,H0,W0) in [0,1] -> (N,3,H,W) in [-1,1] at the model resolution. A differentiable
    stand-in for the pipeline's Lanczos resize: bicubic with antialiasing (as two matrix products,
    pipelines/resize.py)."""
    if tuple(I.shape[-2:]) != tuple(size):
        I = separable(I, bicubic_matrix(I.shape[-2], size[0]), bicubic_matrix(I.shape[-1], size[1]))
    return I * 2 - 1


def box_in_photo(photo_size, resized, top, left, size):
    """(top, left, height, width) in a photo's pixels of what a pipeline that resizes the photo (H0, W0) to `resized`
    and crops `size` at (top, left) keeps of it: the pixels the model sees, edges rounded outwards."""
    scale_y, scale_x = photo_size[0] / resized[0], photo_size[1] / resized[1]
    y0, x0 = math.floor(top * scale_y), math.floor(left * scale_x)
    y1 = min(photo_size[0], math.ceil((top + size[0]) * scale_y))
    x1 = min(photo_size[1], math.ceil((left + size[1]) * scale_x))
    return y0, x0, y1 - y0, x1 - x0


class SVDPipeline:
    """SVD's networks (weights.SVD) with the adversary's pipeline settings: the reference pipeline's
    defaults, 7 fps, motion bucket 127, noise augmentation 0.02."""

    def __init__(self, networks, fps=7, motion_bucket_id=127, noise_aug=0.02):
        self.networks, self.fps, self.motion_bucket_id, self.noise_aug = networks, fps, motion_bucket_id, noise_aug
        self.saving_memory = False

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

    def size_problem(self, size, num_frames):
        """Why the networks cannot make `num_frames` frames at `size`, or None: SVD takes any multiple of 8."""
        return None

    def seen_box(self, photo_size, size):
        """(top, left, height, width): the part of a photo of photo_size = (H0, W0) the model sees: all of it, resized
        to `size` whatever its shape, as the reference pipeline does."""
        return (0, 0, *photo_size)

    def default_attn_blocks(self):
        """The temporal self-attention of the last downsampling level that has attention, all its layers
        (SVD: down_blocks.2.attentions.0 and .1)."""
        down = [name for name in self.attention_names if name.startswith("down_blocks.")]
        last = max(int(name.split(".")[1]) for name in down)
        return tuple(name for name in down if name.startswith(f"down_blocks.{last}."))

    def low_memory(self, on):
        """Recompute the UNet's and the VAE encoder's activations in the backward pass instead of keeping them; make
        the videos (P, video) as generate's low_memory does, the guidance branches one after the other and the frames
        decoded 2 at a time, so that no video needs more than an iteration (benchmarks/whole_run_memory.py)."""
        self.networks.unet.checkpointing = self.networks.vae.checkpointing = self.saving_memory = on

    # ------------------------------------------------------------ the pieces of Algorithm 1
    def P(self, I, *, size, num_frames, steps, seed, progress=False):
        """V = P(I): the video (F,3,H,W) in [-1,1] made from the photo through the differentiable resize."""
        return generate(self.networks, to_model_input(I, size)[0], num_frames=num_frames, steps=steps, fps=self.fps,
                        motion_bucket_id=self.motion_bucket_id, noise_aug_strength=self.noise_aug, seed=seed,
                        progress=progress, clip_image=I[0] * 2 - 1, low_memory=self.saving_memory)

    def video(self, rgb8, *, size, num_frames, steps, seed, progress=False):
        """The video (F,3,H,W) in [-1,1] the adversary makes from an 8-bit photo file (Lanczos resize)."""
        return generate(self.networks, model_input(rgb8, size), num_frames=num_frames, steps=steps, seed=seed,
                        clip_image=rgb8.float() / 127.5 - 1, progress=progress, low_memory=self.saving_memory)

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
        x = to_model_input(I, size)  # (1, 3, H, W) in [-1, 1]
        return image_latents(self.networks.vae, x, self.noise_aug, d.to(x))

    def embed(self, I):
        """The CLIP image embedding (1,1,D) of the photo at its own size: resized for CLIP first, which is linear and
        keeps constants, so that the scaling to [-1, 1] is done on 224x224 pixels, not on the photo's megapixels."""
        encoder = self.networks.image_encoder
        return clip_embedding(encoder, resize_for_clip(I, encoder.config.image_size) * 2 - 1)

    def G(self, X_t, sigma, x, c, d, attn_maps=(), maps_only=False):
        """(X0_hat (1,F,4,h,w), {block: temporal attention maps}) = G(X_t, t, conditioning): the denoiser
        conditioned on the photo's latents x and embedding c. With maps_only it stops after the maps."""
        unet = self.networks.unet
        dtype = next(unet.parameters()).dtype
        frames = X_t.shape[1]
        latents = x.to(dtype)[:, None].expand(-1, frames, -1, -1, -1)  # (1, F, 4, h, w)
        time_ids = added_time_ids(self.fps, self.motion_bucket_id, self.noise_aug).to(X_t.device, dtype)  # (1, 3)
        return denoise(unet, X_t.to(dtype), sigma, latents, c.to(dtype), time_ids, attn_maps, maps_only)


# ---------------------------------------------------------------- models by name
def load_model(name, device, dtype, variant="fp16"):
    """A model by its --model name: 'toy' (trained here, in the repo), 'tiny' (random), or a hub id or folder."""
    if name == "toy":
        svd = load_svd(TOY_MODEL, variant="fp16", dtype=dtype, device=device)
        svd.source = "toy"
        return svd
    if name == "tiny":
        print("WARNING: --model tiny is an UNTRAINED model with random weights: its videos are noise, "
              "for smoke tests only.", file=sys.stderr)
        with warnings.catch_warnings():  # tiny_svd's own warning, said louder above
            warnings.simplefilter("ignore")
            return tiny_svd(seed=0, dtype=dtype, device=device)
    return load_svd(name, variant=variant, dtype=dtype, device=device)
