"""ControlNeXt-SVD-v2 (Peng et al. 2024, "ControlNeXt", arXiv 2408.06070): SVD-XT made to follow a pose sequence.

    networks, pose_encoder = load_controlnext()                    # the release, from the hub
    networks, pose_encoder = load_controlnext("/path/to/folder")   # a folder in the layout below
    image = photo_input(rgb8, (1024, 576))                          # the photo as the release prepares it
    frames = generate_controlnext(networks, pose_encoder, image, poses, seed=0)
    model = ControlNeXtPipeline(networks, pose_encoder, [poses])   # P, E, S, G for attack.py (see pipelines/svd.py)

The release is SVD-XT 1.1's VAE and CLIP image encoder, a fine-tuned SVD UNet and a pose encoder
(model/controlnext.py). "controlnext" fetches them from the hub: vae/, image_encoder/ and unet/config.json of
stabilityai/stable-video-diffusion-img2vid-xt-1-1 (gated: accept its licence), and the two safetensors files of
Kijai/ControlNeXt-SVD-V2-Comfy (always float16; the original release ships pickles, never loaded here).
A local folder (or a hub repo) holds the official SVD layout with the fine-tuned UNet, plus controlnet/:

    unet/config.json            unet/diffusion_pytorch_model.fp16.safetensors        the fine-tuned UNet
    vae/config.json             vae/diffusion_pytorch_model.fp16.safetensors
    image_encoder/config.json   image_encoder/model.fp16.safetensors
    controlnet/config.json      controlnet/diffusion_pytorch_model.fp16.safetensors  the pose encoder

(".fp16" for variant "fp16"; without it for variant None). controlnet/config.json holds PoseEncoderConfig's
fields; those left out take the release's values, and unet_channels the UNet's block_out_channels[0].
"""
import sys
import warnings

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import PoseEncoder, PoseEncoderConfig
from model.edm import denoise, euler_step, karras_sigmas, precondition
from pipelines.poses import release_crop_box
from pipelines.resize import interpolation_rows, separable
from pipelines.svd import (SVDPipeline, added_time_ids, box_in_photo, decode, image_conditioning,
                           seeded_generator)
from plumbing.reading import read_json
from weights import SVD, WeightsError, build_network, fetch, load_checked, load_network, load_svd, skeleton, tiny_svd

BASE_REPO = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
RELEASE_REPO = "Kijai/ControlNeXt-SVD-V2-Comfy"
RELEASE_UNET = "controlnext-svd_v2-unet-fp16.safetensors"
RELEASE_POSE_ENCODER = "controlnext-svd_v2-controlnet-fp16.safetensors"
# The release's pipeline hard-codes its added time ids to [fps - 1, motion bucket, augmentation] = [6, 128, 0.02]
FPS, MOTION_BUCKET, NOISE_AUG = 7, 128, 0.02
WINDOW, OVERLAP = 24, 6  # frames denoised together, and shared by neighbouring windows (the official run's)
# A small pose encoder for tiny_svd's UNet (32 channels at its first level); the stem's widths are fixed by the release
TINY_POSE_ENCODER = PoseEncoderConfig(time_embed_dim=32, in_channels=(128, 32), out_channels=(32, 32), groups=(4, 8),
                                      unet_channels=32)


# ---------------------------------------------------------------- weights
def load_controlnext(source="controlnext", variant="fp16", dtype=torch.float32, device="cpu"):
    """(weights.SVD holding the fine-tuned UNet, PoseEncoder) from "controlnext" (the release on the hub) or a folder
    or hub repo in the layout above. Every key and shape is checked; any problem is a one-line WeightsError."""
    source = str(source)
    if source == "controlnext":
        vae, image_encoder = (load_network(BASE_REPO, f, variant, dtype, device) for f in ("vae", "image_encoder"))
        unet = load_checked(build_network(BASE_REPO, "unet"), fetch(RELEASE_REPO, RELEASE_UNET), dtype, device)
        networks = SVD(vae=vae, unet=unet, image_encoder=image_encoder, source=source)
        config, pose_file = None, fetch(RELEASE_REPO, RELEASE_POSE_ENCODER)
    else:
        networks = load_svd(source, variant, dtype, device)
        config = fetch(source, "controlnet/config.json")
        pose_file = fetch(source, f"controlnet/diffusion_pytorch_model{'.' + variant if variant else ''}.safetensors")
    unet_channels = networks.unet.config.block_out_channels[0]
    pose_encoder = load_checked(pose_encoder_on_meta(config, unet_channels), pose_file, dtype, device)
    if pose_encoder.config.unet_channels != unet_channels:
        raise WeightsError(f"{config}: unet_channels {pose_encoder.config.unet_channels} is not the UNet's "
                           f"block_out_channels[0] = {unet_channels}")
    return networks, pose_encoder


def load_by_name(name, variant="fp16", dtype=torch.float32, device="cpu"):
    """The networks for a --model name: "tiny-controlnext" (random, said loudly on stderr) or load_controlnext's."""
    if name != "tiny-controlnext":
        return load_controlnext(name, variant, dtype, device)
    print("WARNING: --model tiny-controlnext is UNTRAINED, with random weights: its videos are noise, for smoke "
          "tests only.", file=sys.stderr)
    with warnings.catch_warnings():  # tiny_svd's own warning, said louder above
        warnings.simplefilter("ignore")
        return tiny_controlnext(0, dtype, device)


def tiny_controlnext(seed=0, dtype=torch.float32, device="cpu"):
    """tiny_svd and a small pose encoder: seeded RANDOM networks with the release's structure, for tests only."""
    networks = tiny_svd(seed, dtype, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        pose_encoder = PoseEncoder(TINY_POSE_ENCODER)
    return networks, pose_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def pose_encoder_on_meta(path, unet_channels):
    """A PoseEncoder on the meta device from a controlnet/config.json, or the release's when path is None."""
    try:
        d = read_json(path, "config") if path else {}
        if not isinstance(d, dict):
            raise ValueError(f"a JSON object is expected, not a {type(d).__name__}")
        d.setdefault("unet_channels", unet_channels)
        with skeleton():
            return PoseEncoder(PoseEncoderConfig.from_json_dict(d))
    except (OSError, ValueError, TypeError, ZeroDivisionError, IndexError) as e:
        raise WeightsError(f"{path}: no PoseEncoder can be built from it ({e})") from None


# ---------------------------------------------------------------- the photo, as the release prepares it
def release_crop(I, size):
    """Photo (N,3,H0,W0) -> (N,3,H,W), as the release's utils/pre_process.py prepares it for the pipeline: resized
    with its aspect ratio kept to cover size = (H, W), bilinear without antialiasing (torchvision's resize of a
    tensor with antialias=None), then its centre cropped (poses.release_crop_box). Differentiable."""
    resized_height, resized_width, top, left = release_crop_box(*I.shape[-2:], *size)
    if not torch.is_tensor(I):  # a guarded photo made lazily (pipelines/guarded.py): the same map, as two matrices
        return separable(I, interpolation_rows(I.shape[-2], resized_height, top, size[0], "bilinear"),
                         interpolation_rows(I.shape[-1], resized_width, left, size[1], "bilinear"))
    if (resized_height, resized_width) != tuple(I.shape[-2:]):
        I = F.interpolate(I, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
    return I[..., top:top + size[0], left:left + size[1]]


def photo_input(rgb8, size):
    """(3,H0,W0) uint8 -> (3,H,W) in [-1,1]: the photo the release's pipeline receives, resized on 8-bit levels
    (rounded, as torchvision resizes a uint8 tensor) and centre-cropped (release_crop). The CLIP path sees it too."""
    return release_crop(rgb8[None].float(), size).round()[0] / 127.5 - 1


# ---------------------------------------------------------------- sampling
def fit_poses(poses, size):
    """Pose frames (F,3,h,w) in [0,1] at the frame size `size`: resized (bicubic, antialiased, clamped) if needed."""
    if tuple(poses.shape[-2:]) == tuple(size):
        return poses
    return F.interpolate(poses, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def pose_control(pose_encoder, poses, sigma, dtype):
    """The pose encoder's features (F,C,h',w') of poses (F,3,H,W) in [0,1], at the UNet's c_noise = ln(sigma) / 4."""
    param = next(pose_encoder.parameters())
    return pose_encoder(poses.to(param), precondition(sigma)[3].to(param.device)).to(dtype)


def windows(num_frames, window, overlap):
    """(window length, first frame of each window): a window every window - overlap frames, the last one moved back
    to end at the last frame, as the release slides them. A clip shorter than a window is one window."""
    if overlap < 1:
        raise ValueError(f"overlap must be at least 1 frame, got {overlap}")  # else a window's frame 0 has no average
    window = min(window, num_frames)
    overlap = min(overlap, window - 1)
    return window, [min(s, num_frames - window) for s in range(0, num_frames - overlap, window - overlap)]


def guided_denoise(unet, x, sigma, cond, control, guidance):
    """D = D_uncond + w (D_cond - D_uncond), both branches in one batch. The unconditional branch has zero image
    latents, a zero CLIP embedding and the control weighted 0, as the release runs classifier-free guidance."""
    latents, embeds, time_ids = cond
    both = (torch.cat([torch.zeros_like(latents), latents]), torch.cat([torch.zeros_like(embeds), embeds]),
            time_ids.repeat(2, 1))
    D_uncond, D_cond = denoise(unet, x.to(latents.dtype).repeat(2, 1, 1, 1, 1), sigma, *both,
                               control=control.repeat(2, 1, 1, 1), control_scale=torch.tensor([0.0, 1.0]))[0].chunk(2)
    return D_uncond + guidance * (D_cond - D_uncond)


def sample_windows(unet, pose_encoder, x, sigmas, cond, poses, guidance, window, overlap, progress=False):
    """EDM Algorithm 1 (Euler, no churn) over sliding windows of frames. At each step every window is denoised with
    guidance and stepped on its own, and each frame becomes the mean of its stepped copies; a window that does not
    start at frame 0 leaves its first frame out of the mean. Every window's first pose is the reference pose, poses[0].
    x (1,F,4,h,w) at sigmas[0], float32 or wider; cond = (image latents (1,window,4,h,w), CLIP embedding, time ids)."""
    num_frames = x.shape[1]
    window, starts = windows(num_frames, window, overlap)
    steps = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))
    for sigma, sigma_next in tqdm(steps, desc="denoising", disable=not progress):
        total, count = torch.zeros_like(x), x.new_zeros(1, num_frames, 1, 1, 1)
        for s in starts:
            control = pose_control(pose_encoder, torch.cat([poses[:1], poses[s + 1:s + window]]), sigma, cond[0].dtype)
            x_s = x[:, s:s + window]
            x_s = euler_step(x_s, guided_denoise(unet, x_s, sigma, cond, control, guidance), sigma, sigma_next)
            first = int(s > 0)  # the frame this window shares with the reference pose is not averaged
            total[:, s + first:s + window] += x_s[:, first:]
            count[:, s + first:s + window] += 1
        x = total / count
    return x


def generate_controlnext(networks, pose_encoder, image, poses, *, steps=25, guidance=3.0, window=WINDOW,
                         overlap=OVERLAP, decode_chunk_size=2, seed=None, noise=None, clip_image=None,
                         return_latents=False, progress=False):
    """Image (3,H,W) in [-1,1] at model resolution and poses (F,3,H,W) in [0,1], poses[0] the image's own pose ->
    frames (F,3,H,W) in [-1,1], or with return_latents the final latents (F,4,H/8,W/8), as the release's pipeline
    makes them: SVD's conditioning with noise augmentation 0.02, time ids [6, 128, 0.02], Karras sigmas, constant
    guidance over sliding windows (sample_windows), decoding decode_chunk_size frames at a time.

    noise is the unit-variance initial noise (F,4,H/8,W/8); otherwise it is drawn after the augmentation noise from
    a CPU generator seeded with `seed` (random when None), as svd.py's generate draws them. clip_image (3,H0,W0) in
    [-1,1] is the photo the CLIP path sees (default: image, as the release's pipeline, given the cropped photo,
    does: photo_input)."""
    if image.shape[-2] % 8 or image.shape[-1] % 8:
        raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of 8")
    unet, vae = networks.unet, networks.vae
    param = next(unet.parameters())
    generator = seeded_generator(seed)
    with torch.no_grad():
        # (1, 4, h, w), (1, 1, D)
        latents, embeds = image_conditioning(networks, image, clip_image, NOISE_AUG, generator)
        if noise is None:
            noise = torch.randn(len(poses), *latents.shape[1:], generator=generator)
        if noise.shape != (len(poses), *latents.shape[1:]):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(len(poses), *latents.shape[1:])}")
        sigmas = karras_sigmas(steps)
        wide = torch.promote_types(param.dtype, torch.float32)  # the steps and averages in float32 or wider
        x = noise[None].to(param.device, wide) * (sigmas[0].item() ** 2 + 1) ** 0.5  # (1, F, 4, h, w)
        latents = latents[:, None].expand(-1, min(window, len(poses)), -1, -1, -1)  # (1, window, 4, h, w)
        cond = (latents, embeds, added_time_ids(FPS, MOTION_BUCKET, NOISE_AUG).to(param))
        poses = fit_poses(poses.to(param.device, wide), image.shape[-2:])
        x = sample_windows(unet, pose_encoder, x, sigmas, cond, poses, guidance, window, overlap, progress)[0]
        if return_latents:
            return x
        return decode(vae, x, decode_chunk_size).clamp(-1, 1)


# ---------------------------------------------------------------- the attack's view
class ControlNeXtPipeline(SVDPipeline):
    """ControlNeXt-SVD-v2 as the pieces of Algorithm 1 (svd.py), in expectation over pose sequences: each draw d
    is (the augmentation noise, the index of one of `pose_sequences`, (F,3,H,W) in [0,1], each starting with the
    photo's pose). The release's settings: time ids [6, 128, 0.02], guidance 3, windows of 24 frames overlapping
    by 6, decoding 2 frames at a time. Every piece sees the photo resized and centre-cropped as the release prepares
    it (release_crop), the CLIP path included. P follows the pose sequence `motion` (default 0), video sequence 0;
    the attack makes one reference per motion (motions, motion(d))."""

    def __init__(self, networks, pose_encoder, pose_sequences):
        super().__init__(networks, fps=FPS, motion_bucket_id=MOTION_BUCKET, noise_aug=NOISE_AUG)
        if not pose_sequences:
            raise ValueError("ControlNeXtPipeline needs at least one pose sequence")
        self.pose_encoder, self.pose_sequences = pose_encoder, list(pose_sequences)
        self.size = tuple(self.pose_sequences[0].shape[-2:])  # the frame: the CLIP path's photo is cropped to it
        self.last_control = None  # (what it was made for, control): G's two passes of an iteration share it

    @property
    def num_frames(self):
        """One window of the release's sampler, or the shortest pose sequence if shorter."""
        return min(WINDOW, *(len(poses) for poses in self.pose_sequences))

    def poses(self, index, num_frames):
        poses = self.pose_sequences[index]
        if len(poses) < num_frames:
            raise ValueError(f"pose sequence {index} has {len(poses)} frames, {num_frames} are needed")
        return poses[:num_frames]

    @property
    def motions(self):
        """How many pose sequences the attack draws from: it needs a reference video V_0 for each."""
        return len(self.pose_sequences)

    def motion(self, d):
        """The pose sequence a draw d follows."""
        return d[1]

    def seen_box(self, photo_size, size):
        """(top, left, height, width): the part of a photo of photo_size = (H0, W0) the model sees at `size`, in the
        photo's pixels: the release's centre crop (release_crop_box)."""
        height, width, top, left = release_crop_box(*photo_size, *size)
        return box_in_photo(photo_size, (height, width), top, left, size)

    def model_input(self, rgb8, size):
        """The photo (3,H,W) in [-1,1] the model sees from an 8-bit photo: photo_input."""
        return photo_input(rgb8, size)

    def P(self, I, *, size, num_frames, steps, seed, motion=0, progress=False):
        """V = P(I): the video (F,3,H,W) in [-1,1] made from the photo, cropped differentiably, along pose sequence
        `motion`."""
        return generate_controlnext(self.networks, self.pose_encoder, release_crop(I, size)[0] * 2 - 1,
                                    self.poses(motion, num_frames), steps=steps, seed=seed, progress=progress)

    def video(self, rgb8, *, size, num_frames, steps, seed, progress=False):
        """The video (F,3,H,W) in [-1,1] the adversary makes from an 8-bit photo file, along pose sequence 0."""
        return generate_controlnext(self.networks, self.pose_encoder, photo_input(rgb8, size),
                                    self.poses(0, num_frames), steps=steps, seed=seed, progress=progress)

    def draw(self, generator, size):
        """The pipeline's randomness for one iteration: its augmentation noise (1,3,H,W), drawn as SVDPipeline draws
        it, then the index of a pose sequence, uniform (the expectation over conditions)."""
        return super().draw(generator, size), int(torch.randint(len(self.pose_sequences), (), generator=generator))

    def E(self, I, d, size):
        """x = E(I): SVDPipeline.E of the cropped photo (release_crop)."""
        return super().E(release_crop(I, size), d[0], size)

    def embed(self, I):
        """The CLIP image embedding (1,1,D) of the cropped photo, which the release's CLIP path sees."""
        return super().embed(release_crop(I, self.size))

    def G(self, X_t, sigma, x, c, d, attn_maps=(), maps_only=False):
        """SVDPipeline.G with the control of the drawn pose sequence's first F frames (at the decoded frame size)."""
        unet, vae = self.networks.unet, self.networks.vae
        dtype = next(unet.parameters()).dtype
        frames, factor = X_t.shape[1], 2 ** (len(vae.config.block_out_channels) - 1)  # latent -> frame size
        size = (X_t.shape[-2] * factor, X_t.shape[-1] * factor)
        key = (d[1], frames, size, sigma, dtype, X_t.device)
        if self.last_control is None or self.last_control[0] != key:
            # the control depends on no photo: made once per draw, without gradients, for both passes
            with torch.no_grad():
                poses = fit_poses(self.poses(d[1], frames).to(X_t.device, torch.float32), size)
                self.last_control = key, pose_control(self.pose_encoder, poses, sigma, dtype)  # (F, C, h', w')
        control = self.last_control[1]
        latents = x.to(dtype)[:, None].expand(-1, frames, -1, -1, -1)  # (1, F, 4, h, w)
        time_ids = added_time_ids(self.fps, self.motion_bucket_id, self.noise_aug).to(X_t.device, dtype)  # (1, 3)
        return denoise(unet, X_t.to(dtype), sigma, latents, c.to(dtype), time_ids, attn_maps, maps_only,
                       control=control)
