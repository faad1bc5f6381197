"""Wan2.2-TI2V-5B (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models", arXiv 2503.20314): a
photo and a prompt -> 4k + 1 frames (121 at 24 fps by default, the frame of the photo's shape at about 704x1280).

    model = load_wan()                                                 # Wan-AI/Wan2.2-TI2V-5B-Diffusers, bfloat16
    tokenizer = load_tokenizer(model.source)
    with torch.no_grad():
        text, negative = (prompt_embeddings(model.text_encoder, *prompt_ids(tokenizer, p))
                          for p in ("A woman smiles.", RELEASE_NEGATIVE_PROMPT))
    model.text_encoder = None                                          # 11.4 GB freed: umT5 is needed once per prompt
    size = frame_size(photo.shape[-2:], model)                         # the release's best_output_size
    frames = generate_wan(model, release_input(photo, size), prompt_embeds=text, negative_embeds=negative, seed=0)

The release is in the diffusers layout; every key and shape is checked, any problem is a one-line WeightsError:

    transformer/config.json    transformer/diffusion_pytorch_model.safetensors.index.json + its shards
    vae/config.json            vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json   text_encoder/model.safetensors.index.json + its shards
    tokenizer/spiece.model     scheduler/scheduler_config.json

Image to video (diffusers' WanImageToVideoPipeline with expand_timesteps, as the release runs it): there is no
channel concatenation and no CLIP image. The photo's VAE latent (its posterior mean, normalised per channel) REPLACES
frame 0 of the noisy latents before every network call, and the tokens of frame 0 get timestep 0 (clean) while the
others get the step's; the sampled latents' frame 0 is replaced again before decoding. The sampler is UniPC with flow
prediction and shift 5 on the release's sigma grid (model/wan/scheduler.py; diffusers' grid on request), or Euler.
Guidance 5 against the release's negative prompt (pipelines/prompts.py) unless another is given. As the release
prepares the photo (wan/textimage2video.py): the frame is best_output_size's, 32-pixel multiples at about 704x1280
pixels of the photo's aspect; the photo is resized with its aspect kept (Lanczos) to cover it and centre-cropped.

For the attack, WanPipeline gives the pieces of Algorithm 1 that attack.py works through (svd.py names them):

    pipeline = WanPipeline(load_by_name("wan"))   # embeds the prompts once, then frees umT5
    I_adv, log = attack.protect(pipeline, photo, size=pipeline.frame_size(photo.shape[-2:]), num_frames=121)

tiny_wan() (--model tiny-wan) is the same structure with tiny RANDOM networks and a character-level tokenizer, for
tests only.
"""
import string
import sys
import warnings
from dataclasses import dataclass, field

import torch
from einops import rearrange
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from model.t5 import TIED_KEYS
from model.wan import UMT5Config, UMT5Encoder, WanTransformer, WanTransformerConfig, WanVAE, WanVAEConfig
from model.wan.transformer import FLOAT32_PARTS
from model.wan.scheduler import flow_sigmas, noised, predicted_x0, sample_euler, sample_unipc
from pipelines.prompts import ATTACK_PROMPTS, RELEASE_NEGATIVE_PROMPT, clean_prompt
from pipelines.svd import box_in_photo, seeded_generator
from pipelines.wan_photo import AREA, TINY_AREA, best_output_size, crop_box, release_crop, release_input
from pipelines.tokenizer import CONTROL, NORMAL, UNKNOWN, T5Tokenizer, model_proto
from weights import WeightsError, fetch, load_checked, read_config, shard_files, skeleton

DEFAULT_MODEL = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
TINY = "tiny-wan"  # the --model name of tiny_wan's random networks
TEXT_LENGTH = 512  # the pipeline pads (and truncates) every prompt to this many umT5 tokens
# what the samplers take from the config, and the sigma grid (the release's own sampler's; "diffusers" as the reference)
RELEASE_SCHEDULE = {"num_train_timesteps": 1000, "flow_shift": 5.0, "grid": "release"}
FRAMES, FPS = 121, 24  # the release's video: wan/configs/wan_ti2v_5B.py frame_num and sample_fps
# scheduler_config.json values the UniPC sampler is written for; any other is refused instead of sampled wrongly
SCHEDULE_FIXED = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "solver_order": 2,
                  "solver_type": "bh2", "predict_x0": True, "lower_order_final": True, "final_sigmas_type": "zero",
                  "disable_corrector": [], "thresholding": False, "use_dynamic_shifting": False,
                  "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                  "shift_terminal": None, "solver_p": None}


@dataclass
class Wan:
    """The three networks of Wan2.2-TI2V-5B, each keeping its config as `.config`; text_encoder may be set to None
    once the prompt embeddings are made. schedule: flow_shift and num_train_timesteps."""
    transformer: WanTransformer
    vae: WanVAE
    text_encoder: UMT5Encoder | None
    source: str  # hub repo id, local directory, or TINY
    schedule: dict = field(default_factory=lambda: dict(RELEASE_SCHEDULE))

    @property
    def untrained(self):
        return self.source == TINY


# ---------------------------------------------------------------- weights
def network_on_meta(source, folder, network, config_class, class_name):
    """A network built on the meta device from `folder`/config.json."""
    path, d = read_config(source, f"{folder}/config.json", (class_name,), "Wan's")
    try:
        with skeleton():
            return network(config_class.from_json_dict(d))
    except (ValueError, TypeError, ZeroDivisionError, IndexError, RuntimeError) as e:
        raise WeightsError(f"{path}: no {network.__name__} can be built from it ({e})") from None


def read_schedule(source):
    """flow_shift and num_train_timesteps of scheduler/scheduler_config.json (UniPCMultistepScheduler), the keys of
    SCHEDULE_FIXED checked, each value's type and range too."""
    path, d = read_config(source, "scheduler/scheduler_config.json", ("UniPCMultistepScheduler",), "Wan's")
    for key, value in SCHEDULE_FIXED.items():
        if d.get(key, value) != value:
            raise WeightsError(f"{path}: {key} = {d[key]!r}, the sampler is written for {value!r} only")
    shift, T = d.get("flow_shift", 5.0), d.get("num_train_timesteps", 1000)
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= 100_000:
        raise WeightsError(f"{path}: num_train_timesteps = {T!r} is not an integer from 1 to 100000")
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not 0.01 <= shift <= 100:
        raise WeightsError(f"{path}: flow_shift = {shift!r} is not a number from 0.01 to 100 (the release's: 5)")
    return {"num_train_timesteps": T, "flow_shift": float(shift), "grid": "release"}


def load_text_encoder(source, dtype, device):
    """The umT5 encoder from text_encoder/; its token embedding, one tensor under two names, loaded from
    `shared.weight` (as load_cogvideox's T5)."""
    t5 = network_on_meta(source, "text_encoder", UMT5Encoder, UMT5Config, "UMT5EncoderModel")
    del t5.encoder.embed_tokens  # = t5.shared: its weight has one name while loading
    load_checked(t5, shard_files(source, "text_encoder/model.safetensors.index.json"), dtype, device,
                 ignored=tuple(TIED_KEYS))
    t5.encoder.embed_tokens = t5.shared
    return t5


def keep_float32(transformer, files, device):
    """The transformer's FLOAT32_PARTS read again from its files in float32, as the reference keeps them when the
    rest runs in half precision (the timestep's MLP, the modulation tables, the cross-attention norms)."""
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if any(part in key for part in FLOAT32_PARTS):
                    owner, _, name = key.rpartition(".")
                    module = transformer.get_submodule(owner)
                    value = (torch.empty(f.get_slice(key).get_shape(), device="meta") if torch.device(device).type
                             == "meta" else f.get_tensor(key).to(device, torch.float32))
                    setattr(module, name, nn.Parameter(value, requires_grad=False))
    return transformer


def load_wan(source=DEFAULT_MODEL, dtype=torch.bfloat16, device="cpu"):
    """Wan2.2-TI2V-5B from a hub repo id or a local folder in the layout above, in `dtype` on `device`, one tensor at
    a time (the transformer's FLOAT32_PARTS stay float32): 5.00B transformer, 0.70B VAE, 5.68B umT5 parameters."""
    source = str(source)
    transformer = network_on_meta(source, "transformer", WanTransformer, WanTransformerConfig,
                                  "WanTransformer3DModel")
    vae = network_on_meta(source, "vae", WanVAE, WanVAEConfig, "AutoencoderKLWan")
    if vae.config.latents_mean is None or vae.config.latents_std is None:
        raise WeightsError(f"{source}/vae/config.json: latents_mean and latents_std are needed")
    schedule = read_schedule(source)
    files = shard_files(source, "transformer/diffusion_pytorch_model.safetensors.index.json")
    transformer = load_checked(transformer, files, dtype, device)
    if dtype in (torch.float16, torch.bfloat16):
        keep_float32(transformer, files, device)
    vae = load_checked(vae, fetch(source, "vae/diffusion_pytorch_model.safetensors"), dtype, device)
    return Wan(transformer, vae, load_text_encoder(source, dtype, device), source, schedule)


# The tiny networks: the release's structure (the Wan2.2 VAE's four levels and residual shortcuts, the DiT with
# per-token timesteps) at widths of a few channels, for 64x64 photos (4x4 latents, 2x2 tokens a frame) and 17 frames
# (5 latent frames).
TINY_TRANSFORMER = WanTransformerConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                        text_dim=16, freq_dim=8, ffn_dim=40, num_layers=4, rope_max_seq_len=64)
TINY_VAE = WanVAEConfig(base_dim=8, decoder_base_dim=12, dim_mult=(1, 2, 2, 2), num_res_blocks=1, z_dim=4,
                        latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.5, 2.0, 1.0))
TINY_UMT5 = UMT5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=37, num_layers=2, num_heads=2)
TINY_FRAMES = 17


def tiny_wan(seed=0, dtype=torch.float32, device="cpu"):
    """Small seeded RANDOM networks with Wan2.2-TI2V-5B's structure (TINY_*), as load_wan returns them, for tests and
    teaching. UNTRAINED: their videos are noise and protecting against them protects nothing."""
    warnings.warn("tiny_wan: random untrained networks; their videos mean nothing and protection with them protects "
                  "nothing", stacklevel=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = WanTransformer(TINY_TRANSFORMER), WanVAE(TINY_VAE), UMT5Encoder(TINY_UMT5)
    transformer, vae, t5 = (m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in nets)
    return Wan(transformer, vae, t5, TINY)


def load_by_name(name, dtype=torch.bfloat16, device="cpu"):
    """The networks for a --model name: "tiny-wan" (random, said loudly on stderr), "wan" (the release from the hub),
    or load_wan's hub repo id or folder."""
    if name != TINY:
        return load_wan(DEFAULT_MODEL if name == "wan" else name, dtype, device)
    print("WARNING: --model tiny-wan is UNTRAINED, with random weights: its videos are noise, for smoke tests only.",
          file=sys.stderr)
    with warnings.catch_warnings():  # tiny_wan's own warning, said louder above
        warnings.simplefilter("ignore")
        return tiny_wan(0, dtype, device)


# ---------------------------------------------------------------- prompt
def tiny_tokenizer():
    """tiny-wan's tokenizer: one piece per printable ASCII character and the word boundary, <pad> 0, </s> 1, <unk> 2
    (any other character), within TINY_UMT5's 99 embeddings."""
    characters = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0, CONTROL), ("</s>", 0.0, CONTROL), ("<unk>", 0.0, UNKNOWN), ("\u2581", -2.0, NORMAL)]
    return T5Tokenizer(model_proto(pieces + [(c, -3.0, NORMAL) for c in characters]))


def load_tokenizer(source):
    """The release's umT5 tokenizer (tokenizer/spiece.model, read by pipelines/tokenizer.py), or tiny_tokenizer() for
    tiny-wan. A file that is not a SentencePiece Unigram model is a WeightsError. As the release's users run it
    (transformers' tokenizer, converted from the same file): without byte fallback, a run of characters outside the
    vocabulary one <unk>."""
    if source == TINY:
        return tiny_tokenizer()
    path = fetch(source, "tokenizer/spiece.model")
    try:
        tokenizer = T5Tokenizer.from_file(path)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    tokenizer.byte_fallback = False
    return tokenizer


def prompt_ids(tokenizer, prompt, length=TEXT_LENGTH):
    """(ids (1, length), mask (1, length)) as the pipeline feeds umT5: the cleaned prompt's tokens (clean_prompt), at
    most length - 1 of them, </s>, then <pad> (0) up to `length`; the mask 1 on the tokens and </s>."""
    ids = tokenizer.encode(clean_prompt(prompt))[:length - 1] + [tokenizer.eos_id]
    n = len(ids)
    ids = torch.tensor(ids + [tokenizer.pad_id] * (length - n))[None]
    return ids, (torch.arange(length) < n).long()[None]


def prompt_embeddings(text_encoder, token_ids, mask):
    """The prompt embeddings (B, L, 4096) of token ids and mask (B, L), in the encoder's dtype: its last hidden state
    run WITH the mask, zero past the prompt's tokens, as the pipeline makes them. Call it under torch.no_grad(). Token
    ids beyond the encoder's embeddings are a WeightsError: the tokenizer and the encoder do not belong together."""
    vocabulary = text_encoder.shared.num_embeddings
    if int(token_ids.max()) >= vocabulary:
        raise WeightsError(f"the tokenizer gives token id {int(token_ids.max())}, beyond the text encoder's "
                           f"{vocabulary} embeddings: tokenizer/spiece.model and text_encoder/ do not belong together")
    device = next(text_encoder.parameters()).device
    mask = mask.to(device)
    out = text_encoder(token_ids.to(device), mask)
    return out.masked_fill(~mask.bool()[..., None], 0)


# ---------------------------------------------------------------- the photo's frame
def frame_size(photo_size, networks):
    """(H, W): the release's frame for a photo of photo_size = (H0, W0) (wan_photo.best_output_size): at its area
    (704x1280; 96x128 for the tiny networks) in multiples of a token's pixels (32)."""
    tile = networks.vae.config.scale_factor_spatial * networks.transformer.config.patch_size[1]
    width, height = best_output_size(photo_size[1], photo_size[0], tile, tile,
                                     TINY_AREA if networks.untrained else AREA)
    return height, width


# ---------------------------------------------------------------- sampling
def latent_statistics(vae, like):
    """(mean, std) (1, z, 1, 1, 1) of the release's per-channel latent normalisation, like `like`."""
    cfg = vae.config
    mean, std = (torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
                 for v in (cfg.latents_mean, cfg.latents_std))
    return mean, std


def encode_latents(vae, video):
    """Video (1,3,F,H,W) in [-1,1] -> the normalised latents (1,z,f,H/16,W/16) the transformer sees, in float32 or
    wider: the posterior MEAN (the pipeline takes it, "argmax"), minus latents_mean, times 1 / latents_std."""
    dtype = next(vae.parameters()).dtype
    mean, _ = vae.encode(video.to(dtype))
    mean = mean.to(torch.promote_types(dtype, torch.float32))
    mu, std = latent_statistics(vae, mean)
    return (mean - mu) * (1.0 / std)


def decode_latents(vae, X):
    """Normalised latents (1,z,f,h,w) -> frames (F,3,16h,16w) in [-1,1], float32."""
    dtype = next(vae.parameters()).dtype
    mu, std = latent_statistics(vae, X)
    video = vae.decode((X / (1.0 / std) + mu).to(dtype))  # (1, 3, F, H, W)
    return rearrange(video[0], "c f h w -> f c h w").float()


def with_first_frame(X, x):
    """X (B,z,f,h,w) with frame 0 replaced by the photo's latent x (B,z,1,h,w): the pipeline's
    (1 - mask) x + mask X with the first-frame mask."""
    return torch.cat([x.to(X.dtype), X[:, :, 1:]], dim=2)


def token_timesteps(transformer, latents, t):
    """(1, L) per-token timesteps of latents (B,z,f,h,w): 0 on frame 0's tokens, t on every other token."""
    f, h, w = latents.shape[2:]
    per_frame = transformer.tokens_per_frame(h, w)
    t = torch.full((1, f * per_frame), float(t), device=latents.device)
    t[:, :per_frame] = 0
    return t


def velocity(transformer, X_t, x, t, text, guidance, attn_maps=(), maps_only=False):
    """(v (1,z,f,h,w) in float32 or wider, maps) for noisy latents X_t whose frame 0 is replaced by x, at timestep t
    (frame 0's tokens at 0). text (B,L,D): one prompt's embedding, or [negative; prompt] for guidance, combined as
    v_u + g (v_c - v_u). maps: the transformer's, for every pass (B*P, heads, f, f)."""
    dtype = next(transformer.parameters()).dtype
    inputs = with_first_frame(X_t, x).to(dtype).expand(len(text), -1, -1, -1, -1)
    timestep = token_timesteps(transformer, inputs, t).expand(len(text), -1)
    v, maps = transformer(inputs, timestep, text.to(inputs.device, dtype), attn_maps=attn_maps, maps_only=maps_only)
    if maps_only:
        return None, maps
    v = v.to(torch.promote_types(dtype, torch.float32))
    if len(text) == 2:
        v_u, v_c = v.chunk(2)
        v = v_u + guidance * (v_c - v_u)
    return v, maps


def generate_wan(model, image, *, prompt_embeds, negative_embeds, steps=50, guidance=5.0, num_frames=FRAMES, seed=None,
                 noise=None, sampler="unipc", return_latents=False, progress=False):
    """Image (3,H,W) in [-1,1] (H, W multiples of 32) and prompt embeddings (1,L,D) -> frames (F,3,H,W) in [-1,1], or
    with return_latents the final latents (z,f,H/16,W/16), as diffusers' WanImageToVideoPipeline (expand_timesteps)
    makes them:

    1. x = the photo's normalised posterior mean, encoded as one frame;
    2. X = noise (1,z,f,h,w), f = (F-1)/4 + 1, drawn in float32 from a CPU generator seeded with `seed` unless given;
    3. for each sigma of flow_sigmas(steps, flow_shift, grid): v of X with frame 0 replaced by x and frame 0's tokens at
       timestep 0, guided v_u + g (v_c - v_u) when guidance > 1 (the negative prompt's pass first), X0_hat =
       X - sigma v; the UniPC (or Euler) step;
    4. frame 0 replaced by x, latents un-normalised and decoded one latent frame at a time."""
    if sampler not in ("unipc", "euler"):
        raise ValueError(f"sampler must be 'unipc' or 'euler', got {sampler!r}")
    transformer, vae = model.transformer, model.vae
    scale, k = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    tile = scale * transformer.config.patch_size[1]
    if image.shape[-2] % tile or image.shape[-1] % tile:
        raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of {tile}")
    if num_frames < 1 or (num_frames - 1) % k:
        raise ValueError(f"num_frames must be {k}k + 1 ({FRAMES} by default), got {num_frames}")
    device = next(transformer.parameters()).device
    shape = (1, vae.config.z_dim, (num_frames - 1) // k + 1, image.shape[-2] // scale, image.shape[-1] // scale)
    generator = seeded_generator(seed)
    text = torch.cat([negative_embeds, prompt_embeds]) if guidance > 1 else prompt_embeds
    sigmas, timesteps = flow_sigmas(steps, *(model.schedule[k] for k in ("flow_shift", "num_train_timesteps", "grid")))
    bar = tqdm(total=steps, desc="denoising", disable=not progress)
    with torch.no_grad():
        x = encode_latents(vae, image[None, :, None].to(next(vae.parameters()).device)).to(device)  # (1, z, 1, h, w)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")

        def denoise(X, i):
            v, _ = velocity(transformer, X, x, timesteps[i], text, guidance)
            bar.update()
            return predicted_x0(X, v, sigmas[i].to(device))

        X = (sample_unipc if sampler == "unipc" else sample_euler)(denoise, noise.to(device), sigmas)
        X = with_first_frame(X, x)
        bar.close()
        return X[0] if return_latents else decode_latents(vae, X).clamp(-1, 1)


# ---------------------------------------------------------------- the attack's view
def size_problem(size, num_frames, k=4, tile=32):
    """Why Wan cannot make `num_frames` frames at `size` (H, W), or None: its VAE makes k·n + 1 frames and latents
    that tile into the transformer's patches every `tile` pixels (the release's: 4 and 16 x 2). size None: the
    photo's own frame, a multiple of `tile` by construction."""
    if num_frames < 1 or (num_frames - 1) % k:
        return f"--frames: Wan makes {k}k + 1 frames (121, 81, ...), got {num_frames}"
    if size is not None and (size[0] % tile or size[1] % tile or min(size) <= 0):
        return f"--height/--width: multiples of {tile} for Wan, got {size[0]}x{size[1]}"
    return None


class WanPipeline:
    """Wan2.2-TI2V-5B as the pieces of Algorithm 1 (svd.py says what each piece is), with the release's pipeline
    settings: UniPC over the release's flow sigmas (shift 5), guidance 5 against its negative prompt, the photo
    resized and centre-cropped to a frame of its own shape.

    The condition c of the paper is the prompt's umT5 embedding. The defender does not know the adversary's prompt:
    by default the attack assumes one of ATTACK_PROMPTS (pipelines/prompts.py), drawn per iteration, with one V_0 per
    prompt, as ControlNeXt draws its motions (`motions`, `motion(d)`); `prompts` gives others ([""]: the paper's
    image-only setting). The embeddings are made once, here, and then `networks.text_encoder` is set to None. The
    photo reaches the transformer through one path only: its latent x = E(I) replaces frame 0, so embed(I) is None."""

    def __init__(self, networks, prompts=ATTACK_PROMPTS, negative_prompt=RELEASE_NEGATIVE_PROMPT, guidance=5.0,
                 averaged_maps=False, tokenizer=None):
        if networks.text_encoder is None:
            raise ValueError("WanPipeline embeds the prompts once with the text encoder, which is gone")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts is a non-empty list of prompts")
        tokenizer = tokenizer or load_tokenizer(networks.source)
        with torch.no_grad():
            self.negative_embeds, *self.prompt_embeds = (prompt_embeddings(networks.text_encoder,
                                                                           *prompt_ids(tokenizer, text))
                                                         for text in (negative_prompt, *prompts))  # each (1, L, D)
        # where a prompt equals the negative prompt, guidance changes nothing and G makes one pass
        self.unguided = [clean_prompt(text) == clean_prompt(negative_prompt) for text in prompts]
        networks.text_encoder = None
        self.networks, self.guidance, self.averaged_maps = networks, guidance, averaged_maps
        self.saving_memory = False  # low_memory
        self.prompts = tuple(prompts)
        self.timestep_of = {}  # sigma -> the sampler's integer timestep, for the levels noise_levels gave

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
        """The pipeline's default frame count: the release's 121 (17 for the tiny networks)."""
        return TINY_FRAMES if self.untrained else FRAMES

    @property
    def fps(self):
        """The frame rate the release writes its videos at."""
        return FPS

    @property
    def motions(self):
        """How many prompts the attack draws from: it needs a reference video V_0 for each."""
        return len(self.prompt_embeds)

    def motion(self, d):
        """The prompt a draw d follows."""
        return d

    def frame_size(self, photo_size):
        """(H, W): the release's frame for a photo of photo_size = (H0, W0) (frame_size)."""
        return frame_size(photo_size, self.networks)

    def seen_box(self, photo_size, size):
        """(top, left, height, width): the part of a photo of photo_size = (H0, W0) the model sees at `size`, in the
        photo's pixels: the release's centre crop (crop_box)."""
        height, width, top, left = crop_box(*photo_size, size)
        return box_in_photo(photo_size, (height, width), top, left, size)

    def model_input(self, rgb8, size):
        """The photo (3,H,W) in [-1,1] the model sees from an 8-bit photo: release_input."""
        return release_input(rgb8, size)

    @property
    def attention_names(self):
        """Every block's self-attention, whose frame-to-frame maps G can return."""
        return self.networks.transformer.attention_names

    def default_attn_blocks(self):
        """The middle of the stack, the paper's "middle blocks in the transformer": blocks n/2 - 1 and n/2 of n
        (14 and 15 of the release's 30)."""
        names = self.attention_names
        return names[len(names) // 2 - 1], names[len(names) // 2]

    def size_problem(self, size, num_frames):
        """Why the networks cannot make `num_frames` frames at `size` (H, W), or None (size_problem)."""
        vae, transformer = self.networks.vae.config, self.networks.transformer.config
        return size_problem(size, num_frames, vae.scale_factor_temporal,
                            vae.scale_factor_spatial * transformer.patch_size[1])

    def low_memory(self, on):
        """Recompute each transformer block's and the VAE encoder's activations in the backward pass instead of
        keeping them (benchmarks/wan_memory.py: what that saves at 480x832x49)."""
        self.networks.transformer.checkpointing = self.networks.vae.checkpointing = self.saving_memory = on

    # ------------------------------------------------------------ the pieces of Algorithm 1
    def sample(self, image, motion, **settings):
        """generate_wan on a prepared photo (3,H,W) in [-1,1], following prompt `motion`."""
        return generate_wan(self.networks, image, prompt_embeds=self.prompt_embeds[motion],
                            negative_embeds=self.negative_embeds,
                            guidance=1.0 if self.unguided[motion] else self.guidance, **settings)

    def P(self, I, *, size, num_frames, steps, seed, motion=0, progress=False):
        """V = P(I): the video (F,3,H,W) in [-1,1] made from the photo, cropped differentiably, following prompt
        `motion`."""
        return self.sample(release_crop(I, size)[0], motion, num_frames=num_frames, steps=steps, seed=seed,
                           progress=progress)

    def video(self, rgb8, *, size, num_frames, steps, seed, progress=False):
        """The video (F,3,H,W) in [-1,1] the adversary makes from an 8-bit photo file (release_input), following the
        first prompt."""
        return self.sample(release_input(rgb8, size), 0, num_frames=num_frames, steps=steps, seed=seed,
                           progress=progress)

    def encode_frames(self, V):
        """Frames (F,3,H,W) in [-1,1] -> denoiser latents X (1,z,f,H/16,W/16), f = (F-1)/4 + 1: the normalised
        posterior mean, as the pipeline encodes the photo."""
        return encode_latents(self.networks.vae, rearrange(V, "f c h w -> 1 c f h w").to(self.device))

    def noise_levels(self, steps=50):
        """The sigmas the adversary's `steps`-step UniPC visits (0.9998, ... for shift 5), as floats."""
        s = self.networks.schedule
        sigmas, timesteps = flow_sigmas(steps, s["flow_shift"], s["num_train_timesteps"], s["grid"])
        levels = sigmas[:-1].tolist()
        self.timestep_of.update(zip(levels, timesteps.tolist()))
        return levels

    def draw(self, generator, size):
        """The prompt one iteration follows: the index of one of `prompts`, uniform (the expectation over conditions);
        with one prompt, 0, and nothing drawn."""
        return int(torch.randint(self.motions, (), generator=generator)) if self.motions > 1 else 0

    def S(self, X_0, sigma, noise):
        """X_t = S(X_0, sigma, noise) = (1 - sigma) X_0 + sigma noise: the flow-matching forward process."""
        return noised(X_0, sigma, noise.to(X_0))

    def E(self, I, d, size):
        """x = E(I): the latent that replaces frame 0, (1,z,1,H/16,W/16) in float32 or wider: the photo (1,3,H0,W0) in
        [0,1], resized and cropped differentiably to `size` (release_crop), encoded by the causal VAE as one frame,
        its posterior mean normalised per channel. d is unused: the pipeline conditions on the mean."""
        return encode_latents(self.networks.vae, release_crop(I, size)[:, :, None].to(self.device))

    def embed(self, I):
        """None: the photo has no second conditioning path (the condition c is the prompt, fixed at construction)."""
        return None

    def G(self, X_t, sigma, x, c, d, attn_maps=(), maps_only=False):
        """(X0_hat (1,z,f,h,w), {block: frame-to-frame attention maps (P, heads, f, f)}) = G(X_t, sigma, x): the
        transformer's velocity for X_t with frame 0 replaced by x (its tokens at timestep 0, the others at the
        sampler's timestep for sigma), turned into the predicted clean latents X0_hat = X_t - sigma v, whose frame 0
        is x again, as the pipeline's output is. d is the prompt drawn; c (None) is unused. With maps_only it stops
        after the maps and returns (None, maps). The maps are per position P of a latent frame's tokens
        (model/cogvideox/frame_attention.py); with averaged_maps, their mean over the positions, (1, heads, f, f).

        The denoiser the adversary runs, guidance included: the negative prompt's pass and the prompt's, combined
        as v_neg + 5 (v_prompt - v_neg), and the maps are both passes', (2P, heads, f, f); where the prompt is the
        negative prompt, one pass."""
        transformer = self.networks.transformer
        T = self.networks.schedule["num_train_timesteps"]
        t = self.timestep_of.get(float(sigma), float(sigma) * T)
        prompt = self.prompt_embeds[d]
        guided = self.guidance > 1 and not self.unguided[d]
        text = torch.cat([self.negative_embeds, prompt]) if guided else prompt  # (B, L, D)
        v, maps = velocity(transformer, X_t, x, t, text, self.guidance, attn_maps, maps_only)
        if self.averaged_maps:  # (B*P, heads, f, f) -> (B, heads, f, f)
            maps = {name: A.unflatten(0, (len(text), -1)).mean(1) for name, A in maps.items()}
        if maps_only:
            return None, maps
        wide = torch.promote_types(X_t.dtype, torch.float32)
        return with_first_frame(predicted_x0(X_t.to(wide), v, sigma), x), maps
