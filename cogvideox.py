"""CogVideoX-5B-I2V (Yang et al. 2024, "CogVideoX", arXiv 2408.06072): a photo and a prompt -> 49 frames at 480x720.

    model = load_cogvideox()                                          # THUDM/CogVideoX-5b-I2V from the hub, bfloat16
    model = load_cogvideox("/path/to/folder")                         # a folder in the layout below
    with torch.no_grad():
        text = prompt_embeddings(model.text_encoder, prompt_ids(""))  # the paper's image-only setting
    model.text_encoder = None                                         # 9.5 GB freed: T5 is needed once per prompt
    frames = generate_cogvideox(model, image, prompt_embeds=text, negative_embeds=text, seed=0)

The release is in the diffusers layout; every key and shape is checked, any problem is a one-line WeightsError:

    transformer/config.json    transformer/diffusion_pytorch_model.safetensors.index.json + its shards
    vae/config.json            vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json   text_encoder/model.safetensors.index.json + its shards
    scheduler/scheduler_config.json

The sampler follows diffusers' CogVideoXImageToVideoPipeline step by step, random draws included, so a seed gives
the reference's video for a CPU generator with that seed (see generate_cogvideox).
"""
from dataclasses import dataclass, field

import torch
from einops import rearrange
from tqdm import tqdm

from model.cogvideox.scheduler import (alphas_cumprod, ddim_step, dpm_step, dynamic_guidance_scale, prev_timestep,
                                       timesteps)
from model.cogvideox import CogVideoXTransformer, CogVideoXTransformerConfig, CogVideoXVAE, CogVideoXVAEConfig
from model.t5 import TIED_KEYS, T5Config, T5Encoder
from sample import seeded_generator
from weights import WeightsError, fetch, load_checked, read_config, shard_files

DEFAULT_MODEL = "THUDM/CogVideoX-5b-I2V"
TEXT_LENGTH = 226  # the pipeline pads (and truncates) every prompt to this many T5 tokens
EOS, PAD = 1, 0  # T5's </s> and <pad> token ids
# the release's scheduler_config.json, as far as the schedule goes: what our scheduler functions take
RELEASE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, snr_shift_scale=1.0,
                        rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
# scheduler_config.json values the samplers are written for; any other is refused instead of sampled wrongly
SCHEDULE_FIXED = dict(prediction_type="v_prediction", beta_schedule="scaled_linear", set_alpha_to_one=True,
                      clip_sample=False, thresholding=False)
SCHEDULERS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")


@dataclass
class CogVideoX:
    """The three networks of CogVideoX-5B-I2V, each keeping its config as `.config`; text_encoder may be set to None
    once the prompt embeddings are made. schedule: the keyword arguments of the scheduler functions."""
    transformer: CogVideoXTransformer
    vae: CogVideoXVAE
    text_encoder: T5Encoder | None
    source: str  # hub repo id or local directory
    schedule: dict = field(default_factory=lambda: dict(RELEASE_SCHEDULE))


# ---------------------------------------------------------------- weights
def network_on_meta(source, folder, network, config_class, class_name):
    """A network built on the meta device from `folder`/config.json (as weights.build_network does for SVD)."""
    path, d = read_config(source, f"{folder}/config.json", (class_name,), "CogVideoX's")
    try:
        with torch.device("meta"):
            return network(config_class.from_json_dict(d))
    except (ValueError, TypeError, ZeroDivisionError, IndexError, RuntimeError) as e:
        raise WeightsError(f"{path}: no {network.__name__} can be built from it ({e})") from None


def read_schedule(source):
    """The schedule of scheduler/scheduler_config.json (CogVideoXDDIMScheduler's or CogVideoXDPMScheduler's keys):
    RELEASE_SCHEDULE's keys taken from it, the keys of SCHEDULE_FIXED checked."""
    path, d = read_config(source, "scheduler/scheduler_config.json", SCHEDULERS, "CogVideoX's")
    for key, value in SCHEDULE_FIXED.items():
        if d.get(key, value) != value:
            raise WeightsError(f"{path}: {key} = {d[key]!r}, the samplers are written for {value!r} only")
    schedule = {k: d.get(k, v) for k, v in RELEASE_SCHEDULE.items()}
    if schedule["timestep_spacing"] not in ("trailing", "leading"):
        raise WeightsError(f"{path}: timestep_spacing {schedule['timestep_spacing']!r} is not 'trailing' or 'leading'")
    return schedule


def load_text_encoder(source, dtype, device):
    """The T5 encoder from text_encoder/. Its token embedding is one tensor under two names (TIED_KEYS): loaded
    from `shared.weight`; a file that also holds `encoder.embed_tokens.weight` (an older save) is accepted, that
    copy unread. A file with only `encoder.embed_tokens.weight` is refused (missing shared.weight)."""
    t5 = network_on_meta(source, "text_encoder", T5Encoder, T5Config, "T5EncoderModel")
    del t5.encoder.embed_tokens  # = t5.shared: its weight has one name while loading
    files = shard_files(source, "text_encoder/model.safetensors.index.json")
    load_checked(t5, files, dtype, device, ignored=tuple(TIED_KEYS))
    t5.encoder.embed_tokens = t5.shared  # tied again, to the loaded weight
    return t5


def load_cogvideox(source=DEFAULT_MODEL, dtype=torch.bfloat16, device="cpu"):
    """CogVideoX-5B-I2V from a hub repo id or a local folder in the layout above (files in bfloat16 as released),
    in `dtype` on `device`, one tensor at a time. About 21 GB in bfloat16 of which the text encoder is 9.5 GB."""
    source = str(source)
    transformer = network_on_meta(source, "transformer", CogVideoXTransformer, CogVideoXTransformerConfig,
                                  "CogVideoXTransformer3DModel")
    vae = network_on_meta(source, "vae", CogVideoXVAE, CogVideoXVAEConfig, "AutoencoderKLCogVideoX")
    schedule = read_schedule(source)
    transformer = load_checked(
        transformer, shard_files(source, "transformer/diffusion_pytorch_model.safetensors.index.json"), dtype, device)
    vae = load_checked(vae, fetch(source, "vae/diffusion_pytorch_model.safetensors"), dtype, device)
    return CogVideoX(transformer, vae, load_text_encoder(source, dtype, device), source, schedule)


# ---------------------------------------------------------------- prompt
def prompt_ids(prompt, length=TEXT_LENGTH, token_ids=None):
    """The T5 token ids (1, length) the pipeline feeds its text encoder: the tokens, </s>, then <pad> (0) up to
    `length`. The empty prompt (the paper's image-only setting, and the pipeline's negative prompt) is [</s>] and
    needs no tokenizer; any other prompt needs token_ids, its tokenizer's output with </s> (e.g. from
    transformers' T5Tokenizer of google/t5-v1_1-xxl), until the T5 tokenizer is written here."""
    if token_ids is None:
        if prompt != "":
            raise ValueError("the T5 tokenizer is not built yet (a later issue): only the empty prompt works without "
                             "it; pass token_ids= from an external T5 tokenizer for another prompt")
        token_ids = [EOS]
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if len(token_ids) > length:
        raise ValueError(f"{len(token_ids)} token ids, more than the {length} the model takes")
    return torch.cat([token_ids, token_ids.new_full((length - len(token_ids),), PAD)])[None]


def prompt_embeddings(text_encoder, token_ids):
    """The prompt embeddings (B, L, 4096) of token ids (B, L), in the encoder's dtype: its last hidden state run
    WITHOUT an attention mask, padding included, as the pipeline runs it. Call it under torch.no_grad(); the
    encoder is needed only once per prompt, so the caller may drop it afterwards."""
    param = next(text_encoder.parameters())
    return text_encoder(token_ids.to(param.device))


# ---------------------------------------------------------------- sampling
def image_condition(vae, image, generator, num_latent_frames, dtype):
    """The image latents (1, f, C, h, w) in the pipeline's order of operations: the photo (3,H,W) in [-1,1] encoded
    as ONE frame, a sample of its posterior mean + std * noise (noise (1,C,1,h,w) drawn from `generator` in the
    VAE's dtype), times the scaling factor (divided by it with invert_scale_latents), then f - 1 zero frames."""
    param = next(vae.parameters())
    mean, logvar = vae.encode(image[None, :, None].to(param))  # (1, C, 1, h, w)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    z = mean + torch.exp(0.5 * logvar) * eps
    z = rearrange(z, "b c f h w -> b f c h w").to(dtype)
    cfg = vae.config
    z = (1 / cfg.scaling_factor if cfg.invert_scale_latents else cfg.scaling_factor) * z
    return torch.cat([z, z.new_zeros(1, num_latent_frames - 1, *z.shape[2:])], dim=1)  # (1, f, C, h, w)


def generate_cogvideox(model, image, *, prompt_embeds, negative_embeds, steps=50, guidance=6.0, scheduler="ddim",
                       dynamic_guidance=False, num_frames=49, seed=None, noise=None, return_latents=False,
                       progress=False):
    """Image (3,H,W) in [-1,1] (480x720 for the release's learned position table) and prompt embeddings (1,L,D) ->
    frames (F,3,H,W) in [-1,1], or with return_latents the final latents (f,16,H/8,W/8), f = (F-1)/4 + 1, on the
    transformer's device, as diffusers' CogVideoXImageToVideoPipeline makes them:

    1. image latents: a posterior sample of the photo x 0.7, padded with zero frames (image_condition);
    2. X_T = noise (init_noise_sigma is 1), then for each timestep t of model.schedule (50: 999, 979, ..., 19):
       v = v_u + g (v_c - v_u), the unconditional half first and the image latents on the channels of both,
       g constant or with dynamic_guidance the pipeline's g_t; then a DDIM step, or with scheduler="dpm" an
       SDE-DPM-Solver++(2M) step (the official demo's); no guidance when guidance <= 1, as in the reference;
    3. decode latents / 0.7 with the VAE's own chunking.
    Both halves get the image latents, so with prompt_embeds equal to negative_embeds (the image-only setting: both
    the empty prompt) they are the same network call and g changes nothing.

    Random draws, all from one CPU generator seeded with `seed` (random when None), each in the dtype and shape the
    pipeline uses: the posterior noise (1,16,1,h,w) in the VAE's dtype; the initial noise (1,f,16,h,w) in the
    transformer's dtype, unless `noise` (f,16,h,w) is given; for DPM, per step one noise like the latents, two
    (the first unused) on second-order steps. Guidance and steps run in float32 or wider, the latents between steps
    in the transformer's dtype, as in the reference."""
    if scheduler not in ("ddim", "dpm"):
        raise ValueError(f"scheduler must be 'ddim' or 'dpm', got {scheduler!r}")
    transformer, vae, schedule = model.transformer, model.vae, model.schedule
    scale = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent, each side
    compression = vae.config.temporal_compression_ratio
    if image.shape[-2] % scale or image.shape[-1] % scale:
        raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of {scale}")
    if num_frames < 1 or (num_frames - 1) % compression:
        raise ValueError(f"num_frames must be {compression}k + 1 (49 as released), got {num_frames}")
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    wide = torch.promote_types(dtype, torch.float32)
    frames = (num_frames - 1) // compression + 1
    shape = (frames, transformer.config.in_channels // 2, image.shape[-2] // scale, image.shape[-1] // scale)
    guided = guidance > 1
    generator = seeded_generator(seed)
    with torch.no_grad():
        image_latents = image_condition(vae, image, generator, frames, dtype)  # (1, f, C, h, w)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=dtype)
        if noise.shape != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise[None].to(device, dtype)  # (1, f, C, h, w) = X_T
        text = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
        text = text.to(device, dtype)  # (2 or 1, L, D)
        image_latents = image_latents.expand(len(text), -1, -1, -1, -1)
        rope = transformer.rotary_embedding(frames, shape[2], shape[3], device)  # once, as the pipeline
        abar = alphas_cumprod(*(schedule[k] for k in ("num_train_timesteps", "beta_start", "beta_end",
                                                      "snr_shift_scale", "rescale_betas_zero_snr")))
        T = schedule["num_train_timesteps"]
        ts = timesteps(steps, schedule["timestep_spacing"], T, schedule["steps_offset"]).tolist()
        x0_back = t_back = None
        for t in tqdm(ts, desc="denoising", disable=not progress):
            inputs = torch.cat([x.expand(len(text), -1, -1, -1, -1), image_latents], dim=2)  # (B, f, 2C, h, w)
            v = transformer(inputs, text, torch.tensor(t, device=device), image_rotary_emb=rope)[0].to(wide)
            if guided:
                g = dynamic_guidance_scale(guidance, t, steps) if dynamic_guidance else guidance
                v_u, v_c = v.chunk(2)
                v = v_u + g * (v_c - v_u)
            t_prev = prev_timestep(t, steps, T)
            if scheduler == "ddim":
                x = ddim_step(x, v, t, t_prev, abar)
            else:  # the reference draws one noise, and a second one that it uses on second-order steps
                draws = 2 if x0_back is not None and t_prev >= 0 else 1
                eps = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(draws)][-1]
                x, x0_back = dpm_step(x, v, t, t_prev, abar, eps.to(device), x0_back, t_back)
                t_back = t
            x = x.to(dtype)
        if return_latents:
            return x[0]
        z = rearrange(1 / vae.config.scaling_factor * x, "b f c h w -> b c f h w")
        video = vae.decode(z.to(next(vae.parameters()).dtype))  # (1, 3, F, H, W)
        return rearrange(video[0], "c f h w -> f c h w").float().clamp(-1, 1)
