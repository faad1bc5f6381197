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

For the attack, CogVideoXPipeline gives the pieces of Algorithm 1 that attack.py works through (svd.py names them):

    pipeline = CogVideoXPipeline(load_by_name("cogvideox"))   # embeds the prompt once, then frees T5
    I_adv, log = attack.protect(pipeline, photo, size=(480, 720))

tiny_cogvideox() (--model tiny-cogvideox) is the same structure with tiny RANDOM networks, for tests only.
"""
import math
import sys
import warnings
from dataclasses import dataclass, field

import torch
from einops import rearrange
from tqdm import tqdm

from model.cogvideox import CogVideoXTransformer, CogVideoXTransformerConfig, CogVideoXVAE, CogVideoXVAEConfig
from model.cogvideox.scheduler import (abar_at, alphas_cumprod, ddim_step, dpm_step, dynamic_guidance_scale,
                                       predicted_x0, prev_timestep, timesteps)
from model.t5 import TIED_KEYS, T5Config, T5Encoder
from pipelines.svd import seeded_generator, to_model_input
from pipelines.tokenizer import T5Tokenizer
from plumbing.photos import model_input
from weights import WeightsError, fetch, load_checked, read_config, shard_files, skeleton

DEFAULT_MODEL = "THUDM/CogVideoX-5b-I2V"
TINY = "tiny-cogvideox"  # the --model name of tiny_cogvideox's random networks
TEXT_LENGTH = 226  # the pipeline pads (and truncates) every prompt to this many T5 tokens
EOS, PAD = 1, 0  # T5's </s> and <pad> token ids
# the release's scheduler_config.json, as far as the schedule goes: what our scheduler functions take
RELEASE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, snr_shift_scale=1.0,
                        rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
# scheduler_config.json values the samplers are written for; any other is refused instead of sampled wrongly
SCHEDULE_FIXED = dict(prediction_type="v_prediction", beta_schedule="scaled_linear", set_alpha_to_one=True,
                      clip_sample=False, thresholding=False)
SCHEDULERS = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
MAX_TRAIN_TIMESTEPS = 100_000  # the release has 1000
SCHEDULE_RANGES = {"num_train_timesteps": f"an integer from 1 to {MAX_TRAIN_TIMESTEPS}",
                   "beta_start": "a number between 0 and 1", "beta_end": "a number between 0 and 1",
                   "snr_shift_scale": "a positive number", "rescale_betas_zero_snr": "true or false",
                   "steps_offset": "an integer from 0 to num_train_timesteps - 1"}


@dataclass
class CogVideoX:
    """The three networks of CogVideoX-5B-I2V, each keeping its config as `.config`; text_encoder may be set to None
    once the prompt embeddings are made. schedule: the keyword arguments of the scheduler functions."""
    transformer: CogVideoXTransformer
    vae: CogVideoXVAE
    text_encoder: T5Encoder | None
    source: str  # hub repo id, local directory, or TINY
    schedule: dict = field(default_factory=lambda: dict(RELEASE_SCHEDULE))

    @property
    def untrained(self):
        return self.source == TINY


# ---------------------------------------------------------------- weights
def network_on_meta(source, folder, network, config_class, class_name):
    """A network built on the meta device from `folder`/config.json (as weights.build_network does for SVD)."""
    path, d = read_config(source, f"{folder}/config.json", (class_name,), "CogVideoX's")
    try:
        with skeleton():
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
    # each value checked before anything is sized by it (a schedule of 1e9 timesteps would take 24 GB)
    T = schedule["num_train_timesteps"]
    checks = {"num_train_timesteps": is_integer(T) and 1 <= T <= MAX_TRAIN_TIMESTEPS,
              "beta_start": is_number(schedule["beta_start"]) and 0 < schedule["beta_start"] < 1,
              "beta_end": is_number(schedule["beta_end"]) and 0 < schedule["beta_end"] < 1,
              "snr_shift_scale": is_number(schedule["snr_shift_scale"]) and 0 < schedule["snr_shift_scale"] < math.inf,
              "rescale_betas_zero_snr": isinstance(schedule["rescale_betas_zero_snr"], bool),
              "steps_offset": is_integer(schedule["steps_offset"]) and is_integer(T)
              and 0 <= schedule["steps_offset"] < T}
    for key, ok in checks.items():
        if not ok:
            raise WeightsError(f"{path}: {key} = {schedule[key]!r} is not a usable value ({SCHEDULE_RANGES[key]})")
    return schedule


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


# The tiny networks: the release's structure (I2V layout: learned position table and RoPE; the causal VAE's four
# levels) at widths of a few channels, for 32x32 photos and 17 frames (5 latent frames of 2x2 patches); the prompt
# length stays the release's 226 so that prompt_ids serves both.
TINY_TRANSFORMER = CogVideoXTransformerConfig(num_attention_heads=2, attention_head_dim=16, in_channels=8,
                                              out_channels=4, time_embed_dim=8, text_embed_dim=16, num_layers=4,
                                              sample_height=4, sample_width=4, sample_frames=17)
TINY_VAE = CogVideoXVAEConfig(block_out_channels=(8, 16, 16, 24), latent_channels=4, layers_per_block=1,
                              norm_num_groups=4, sample_height=32, sample_width=32)
TINY_T5 = T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=37, num_layers=2, num_heads=2)


def tiny_cogvideox(seed=0, dtype=torch.float32, device="cpu"):
    """Small seeded RANDOM networks with CogVideoX-5B-I2V's structure (TINY_*), as load_cogvideox returns them, for
    tests and teaching. UNTRAINED: their videos are noise and protecting against them protects nothing."""
    warnings.warn("tiny_cogvideox: random untrained networks; their videos mean nothing and protection with them "
                  "protects nothing", stacklevel=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = CogVideoXTransformer(TINY_TRANSFORMER), CogVideoXVAE(TINY_VAE), T5Encoder(TINY_T5)
    transformer, vae, t5 = (m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in nets)
    return CogVideoX(transformer, vae, t5, TINY)


def load_by_name(name, dtype=torch.bfloat16, device="cpu"):
    """The networks for a --model name: "tiny-cogvideox" (random, said loudly on stderr), "cogvideox" (the release
    from the hub), or load_cogvideox's hub repo id or folder."""
    if name != TINY:
        return load_cogvideox(DEFAULT_MODEL if name == "cogvideox" else name, dtype, device)
    print("WARNING: --model tiny-cogvideox is UNTRAINED, with random weights: its videos are noise, for smoke tests "
          "only.", file=sys.stderr)
    with warnings.catch_warnings():  # tiny_cogvideox's own warning, said louder above
        warnings.simplefilter("ignore")
        return tiny_cogvideox(0, dtype, device)


# ---------------------------------------------------------------- prompt
def prompt_tokens(source, prompt, length=TEXT_LENGTH):
    """The token ids (1, length) of a prompt, with the release's tokenizer (tokenizer/spiece.model of `source`, read
    by pipelines/tokenizer.py) unless the prompt is empty, which needs none."""
    if prompt == "":
        return prompt_ids("", length)
    if source == TINY:
        raise ValueError("the tiny CogVideoX has no tokenizer: only the empty prompt")
    path = fetch(source, "tokenizer/spiece.model")
    try:  # any text can be tokenised: what goes wrong here is the file's fault (status 1), not the prompt's
        return prompt_ids(prompt, length, T5Tokenizer.from_file(path).ids(prompt, length))
    except ValueError as e:
        raise WeightsError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def prompt_ids(prompt, length=TEXT_LENGTH, token_ids=None):
    """The T5 token ids (1, length) the pipeline feeds its text encoder: the tokens, </s>, then <pad> (0) up to
    `length`. The empty prompt (the paper's image-only setting, and the pipeline's negative prompt) is [</s>] and
    needs no tokenizer; any other prompt needs token_ids, its tokenizer's output with </s> (prompt_tokens)."""
    if token_ids is None:
        if prompt != "":
            raise ValueError("a prompt other than the empty one needs its token ids (prompt_tokens)")
        token_ids = [EOS]
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if len(token_ids) > length:
        raise ValueError(f"{len(token_ids)} token ids, more than the {length} the model takes")
    return torch.cat([token_ids, token_ids.new_full((length - len(token_ids),), PAD)])[None]


def prompt_embeddings(text_encoder, token_ids):
    """The prompt embeddings (B, L, 4096) of token ids (B, L), in the encoder's dtype: its last hidden state run
    WITHOUT an attention mask, padding included, as the pipeline runs it. Call it under torch.no_grad(); the
    encoder is needed only once per prompt, so the caller may drop it afterwards. A tokenizer file whose ids
    pass the encoder's vocabulary does not belong with it: a WeightsError."""
    vocabulary = text_encoder.config.vocab_size
    if int(token_ids.max()) >= vocabulary:
        raise WeightsError(f"the tokenizer gives token id {int(token_ids.max())}, beyond the text encoder's "
                           f"{vocabulary} embeddings: tokenizer/spiece.model and text_encoder/ do not belong together")
    param = next(text_encoder.parameters())
    return text_encoder(token_ids.to(param.device))


# ---------------------------------------------------------------- sampling
def latent_scale(vae):
    """The factor from the VAE's latents to the transformer's: the scaling factor (0.7), or its inverse for a
    config with invert_scale_latents."""
    cfg = vae.config
    return 1 / cfg.scaling_factor if cfg.invert_scale_latents else cfg.scaling_factor


def image_condition(vae, image, generator, num_latent_frames, dtype):
    """The image latents (1, f, C, h, w) in the pipeline's order of operations: the photo (3,H,W) in [-1,1] encoded
    as ONE frame, a sample of its posterior mean + std * noise (noise (1,C,1,h,w) drawn from `generator` in the
    VAE's dtype), times the scaling factor (divided by it with invert_scale_latents), then f - 1 zero frames."""
    param = next(vae.parameters())
    mean, logvar = vae.encode(image[None, :, None].to(param))  # (1, C, 1, h, w)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    z = mean + torch.exp(0.5 * logvar) * eps
    z = latent_scale(vae) * rearrange(z, "b c f h w -> b f c h w").to(dtype)
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


# ---------------------------------------------------------------- the attack's view
def widened(dtype):
    """float32, or the dtype itself when wider: where the attack's latents and predictions live."""
    return torch.promote_types(dtype, torch.float32)


class CogVideoXPipeline:
    """CogVideoX-5B-I2V as the pieces of Algorithm 1 (svd.py says what each piece is), with the release's pipeline
    settings: DDIM over the release's trailing timesteps, guidance 6, 49 frames at 480x720.

    The condition c of the paper is the prompt's T5 embedding (the empty prompt by default: the paper's image-only
    setting; another is tokenized with the release's tokenizer, or given as token_ids). It is made once, here,
    with the empty prompt's (the negative prompt of guidance), and then `networks.text_encoder` is set to None: the 9.5 GB encoder is freed
    and the pipeline keeps only the embeddings. The photo reaches the transformer through one path only, its VAE
    latents x = E(I, d), so embed(I) is None."""

    def __init__(self, networks, prompt="", token_ids=None, guidance=6.0, averaged_maps=False):
        if networks.text_encoder is None:
            raise ValueError("CogVideoXPipeline embeds the prompt once with the text encoder, which is gone")
        length = networks.transformer.config.max_text_seq_length
        ids = prompt_ids(prompt, length, token_ids) if token_ids is not None else prompt_tokens(networks.source,
                                                                                                 prompt, length)
        empty = prompt_ids("", length)
        with torch.no_grad():
            self.negative_embeds = prompt_embeddings(networks.text_encoder, empty)  # (1, L, D)
            same = torch.equal(ids, empty)
            self.prompt_embeds = self.negative_embeds if same else prompt_embeddings(networks.text_encoder, ids)
        networks.text_encoder = None
        self.networks, self.guidance, self.averaged_maps = networks, guidance, averaged_maps
        self.saving_memory = False  # low_memory
        s = networks.schedule
        self.abar = alphas_cumprod(s["num_train_timesteps"], s["beta_start"], s["beta_end"], s["snr_shift_scale"],
                                   s["rescale_betas_zero_snr"])  # float64 (T,)

    # ------------------------------------------------------------ what the attack reads
    @property
    def source(self):
        return self.networks.source

    @property
    def untrained(self):
        return self.networks.untrained

    @property
    def device(self):
        return next(self.networks.transformer.parameters()).device

    @property
    def num_frames(self):
        """The frame count of the learned position table (sample_frames: 49 as released)."""
        return self.networks.transformer.config.sample_frames

    @property
    def attention_names(self):
        """Every block's joint attention, whose frame-to-frame maps G can return."""
        return self.networks.transformer.attention_names

    def seen_box(self, photo_size, size):
        """(top, left, height, width): the part of a photo of photo_size = (H0, W0) the model sees: all of it, resized
        to `size` whatever its shape, as the reference pipeline does."""
        return (0, 0, *photo_size)

    def default_attn_blocks(self):
        """The middle of the stack, the paper's "middle blocks in the transformer": blocks n/2 - 1 and n/2 of n
        (20 and 21 of the release's 42)."""
        names = self.attention_names
        return names[len(names) // 2 - 1], names[len(names) // 2]

    def size_problem(self, size, num_frames):
        """Why the networks cannot make `num_frames` frames at `size` (H, W), or None: the VAE makes 4k + 1
        frames, its latents must tile into patches, and a learned position table takes only its own size."""
        cfg, k = self.networks.transformer.config, self.networks.transformer.config.temporal_compression_ratio
        scale = 2 ** (len(self.networks.vae.config.block_out_channels) - 1)  # the VAE's downsampling: 8
        h, w = (side // scale for side in size)
        if (num_frames - 1) % k:
            return f"--frames: CogVideoX makes {k}k + 1 frames ({cfg.sample_frames}, {cfg.sample_frames - k}, ...), " \
                   f"got {num_frames}"
        if cfg.use_learned_positional_embeddings and (h, w) != (cfg.sample_height, cfg.sample_width):
            return (f"--height/--width: this CogVideoX's learned position table takes {cfg.sample_height * scale}x"
                    f"{cfg.sample_width * scale} only, got {size[0]}x{size[1]}")
        if h % cfg.patch_size or w % cfg.patch_size or min(h, w) == 0:
            return (f"--height/--width: multiples of {scale * cfg.patch_size} for this CogVideoX, got "
                    f"{size[0]}x{size[1]}")
        return None

    def low_memory(self, on):
        """Recompute each transformer block's and the VAE encoder's activations in the backward pass instead of
        keeping them (benchmarks/cogvideox_memory.py: what that saves at 480x720x49)."""
        self.networks.transformer.checkpointing = self.networks.vae.checkpointing = self.saving_memory = on

    # ------------------------------------------------------------ the pieces of Algorithm 1
    def P(self, I, *, size, num_frames, steps, seed, progress=False):
        """V = P(I): the video (F,3,H,W) in [-1,1] made from the photo through the differentiable resize."""
        return generate_cogvideox(self.networks, to_model_input(I, size)[0], prompt_embeds=self.prompt_embeds,
                                  negative_embeds=self.negative_embeds, steps=steps, guidance=self.guidance,
                                  num_frames=num_frames, seed=seed, progress=progress)

    def video(self, rgb8, *, size, num_frames, steps, seed, progress=False):
        """The video (F,3,H,W) in [-1,1] the adversary makes from an 8-bit photo file (Lanczos resize)."""
        return generate_cogvideox(self.networks, model_input(rgb8, size), prompt_embeds=self.prompt_embeds,
                                  negative_embeds=self.negative_embeds, steps=steps, guidance=self.guidance,
                                  num_frames=num_frames, seed=seed, progress=progress)

    def encode_frames(self, V):
        """Frames (F,3,H,W) in [-1,1] -> denoiser latents X (1,f,16,H/8,W/8), f = (F-1)/4 + 1: the posterior MEAN
        of the video times 0.7, in float32 or wider. The mean, not a sample (the pipeline samples only the photo's
        latent): X_0 and X_tg are fixed references of the whole attack, and a sample would bake one arbitrary
        posterior draw into them; the mean is the posterior's own estimate, as SVDPipeline.encode_frames takes it."""
        vae = self.networks.vae
        dtype = next(vae.parameters()).dtype
        mean, _ = vae.encode(rearrange(V, "f c h w -> 1 c f h w").to(dtype))  # (1, C, f, h, w)
        return latent_scale(vae) * rearrange(mean, "b c f h w -> b f c h w").to(widened(dtype))

    def noise_levels(self, steps=50):
        """The timesteps t the adversary's `steps`-step DDIM visits (the release's trailing spacing: 999, 979, ...,
        19 for the release's 50)."""
        s = self.networks.schedule
        return timesteps(steps, s["timestep_spacing"], s["num_train_timesteps"], s["steps_offset"]).tolist()

    def draw(self, generator, size):
        """The pipeline's own randomness for one iteration: the noise d (1,16,1,H/8,W/8) of the posterior sample that
        E takes of the photo's latent (the pipeline draws it from its generator before the initial noise)."""
        cfg = self.networks.vae.config
        scale = 2 ** (len(cfg.block_out_channels) - 1)  # pixels per latent, each side
        return torch.randn((1, cfg.latent_channels, 1, size[0] // scale, size[1] // scale), generator=generator)

    def S(self, X_0, t, noise):
        """X_t = S(X_0, t, noise) = sqrt(abar_t) X_0 + sqrt(1 - abar_t) noise: the forward process at timestep t."""
        abar_t = abar_at(self.abar, t).item()
        return abar_t ** 0.5 * X_0 + (1 - abar_t) ** 0.5 * noise.to(X_0)

    def E(self, I, d, size):
        """x = E(I, d): the image latent the pipeline conditions on, (1,1,16,H/8,W/8) in float32 or wider. The photo
        (1,3,H0,W0) in [0,1], resized differentiably to `size`, is encoded by the causal VAE as one frame; x is the
        posterior SAMPLE mean + std * d with the draw d held (reparametrisation, so the gradient reaches I through
        both the mean and the std), times 0.7, as image_condition makes it for the sampler."""
        vae = self.networks.vae
        dtype = next(vae.parameters()).dtype
        mean, logvar = vae.encode(to_model_input(I, size)[:, :, None].to(dtype))  # (1, C, 1, h, w)
        wide = widened(dtype)
        z = mean.to(wide) + torch.exp(0.5 * logvar.to(wide)) * d.to(mean.device, wide)
        return latent_scale(vae) * rearrange(z, "b c f h w -> b f c h w")

    def embed(self, I):
        """None: the photo has no second conditioning path (the condition c is the prompt, fixed at construction)."""
        return None

    def G(self, X_t, t, x, c, d, attn_maps=(), maps_only=False):
        """(X0_hat (1,f,16,h,w), {block: frame-to-frame attention maps (P, heads, f, f)}) = G(X_t, t, x): the
        transformer's v-prediction turned into the predicted clean latents, X0_hat = sqrt(abar_t) X_t -
        sqrt(1 - abar_t) v. The image latent x is padded with zero frames to f frames and concatenated on the
        channels after X_t, as the pipeline does; c (None) is unused: the text is the prompt's fixed embedding.
        With maps_only it stops after the maps and returns (None, maps). The maps are per position P of a latent
        frame's tokens, as SVD's are per latent pixel (model/cogvideox/frame_attention.py); with averaged_maps,
        their mean over the positions, (1, heads, f, f).

        The denoiser the adversary runs, guidance included. In the image-only setting the guidance halves are the
        same network call (both prompts empty, both with the image latent), so v_u + g (v_c - v_u) = v_c exactly
        and one pass is G. With a prompt, G is the sampler's guided prediction: the empty prompt's pass and the
        prompt's, both with the photo's latent, combined at the pipeline's guidance (6), which doubles the memory
        and time of every iteration; the maps are then those of both passes, (2P, heads, f, f)."""
        transformer = self.networks.transformer
        dtype = next(transformer.parameters()).dtype
        frames = X_t.shape[1]
        image = torch.cat([x, x.new_zeros(x.shape[0], frames - x.shape[1], *x.shape[2:])], dim=1)  # (1, f, C, h, w)
        guided = self.guidance > 1 and self.prompt_embeds is not self.negative_embeds
        text = torch.cat([self.negative_embeds, self.prompt_embeds]) if guided else self.prompt_embeds  # (B, L, D)
        inputs = torch.cat([X_t.to(dtype), image.to(dtype)], dim=2).expand(len(text), -1, -1, -1, -1)  # (B,f,2C,h,w)
        v, maps = transformer(inputs, text.to(X_t.device, dtype), torch.tensor(t, device=X_t.device),
                              attn_maps=attn_maps, maps_only=maps_only)
        if self.averaged_maps:  # (B*P, heads, f, f) -> (B, heads, f, f)
            maps = {name: A.unflatten(0, (len(text), -1)).mean(1) for name, A in maps.items()}
        if maps_only:
            return None, maps
        wide = widened(X_t.dtype)
        v = v.to(wide)
        if guided:
            v_u, v_c = v.chunk(2)
            v = v_u + self.guidance * (v_c - v_u)
        return predicted_x0(X_t.to(wide), v, abar_at(self.abar, t).item()), maps
