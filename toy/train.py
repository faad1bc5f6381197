"""Train the toy SVD: the official network classes at a small size, on stills and clips from toy/data.py.

    python -m toy.train --out run               # toy/weights was made so
    python -m toy.train --out /tmp/toy --device cuda

Three phases, as SVD's networks were made:
1. the autoencoder (image encoder and temporal decoder) on stills: batches of 32 random 32x32 crops,
   each decoded as a 1-frame video, with MSE (what PSNR measures) on the reconstruction from the
   posterior mean (the only latent the pipeline and the attack use) and a tiny KL term. Peak learning
   rate 2e-3, from 300-step runs at 1e-3, 2e-3 and 4e-3 (22.5, 22.8 and 22.0 dB on the example photos);
2. the decoder alone on 8-frame clips, a short phase for its temporal layers, their neighbour-frame taps
   zeroed first (`only_centre_taps`): stills never train them (a 1-frame decode does not use them), and
   left at their random start, 300 steps left 8-frame decodes at 14 to 21 dB where stills decode at 28.
   Then the scaling factor = 1 / std of the latents, as Stable Diffusion set its 0.18215;
3. the UNet with the EDM objective (`model/edm.py`'s preconditioning, loss weight (sigma^2+1)/sigma^2,
   i.e. unit weight on the network output) and SVD's conditioning: the noise-augmented first frame's
   latent concatenated to every frame, the CLIP embedding of the first frame, and the added time ids
   [fps - 1, motion_bucket_id, noise_aug_strength]. Both image conditions are dropped together for 10%
   of the clips, which is what the sampler's classifier-free guidance takes as unconditional.

The CLIP image encoder stays a small FROZEN RANDOM network: its embedding is a fixed random feature of
the photo. The UNet's weights are an exponential moving average. Writes the official folder layout
(unet/, vae/, image_encoder/: config.json and float16 *.fp16.safetensors), loss_curve.png (every
step's loss) and training.json (settings, per-phase wall time, final losses).
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model import VAE, CLIPConfig, CLIPImageEncoder, UNet, UNetConfig, VAEConfig
from model.edm import denoise
from pipelines.svd import clip_embedding, image_latents
from toy.data import ClipMaker, load_photos, motion_bucket
from toy.plot import loss_curve

SIZE, FRAMES, FPS = 64, 8, 7
# log sigma ~ N(P_MEAN, P_STD^2) for most clips (EDM's lognormal, shifted up as SVD shifted it for video:
# 8 correlated frames carry more signal than one image), and log-uniform over the sampler's whole range
# [0.002, 700] for UNIFORM_SHARE of them, so that no noise level the 25-step sampler visits is untrained.
P_MEAN, P_STD, UNIFORM_SHARE, SIGMA_MIN, SIGMA_MAX = 0.4, 1.6, 0.1, 0.002, 700.0
COND_DROPOUT = 0.1
KL_WEIGHT = 1e-6  # small: only the posterior mean is ever decoded, but the log-variance needs some pull


def toy_configs():
    """Every level 64 channels wide: the networks' GroupNorms have 32 groups, and with fewer than two
    channels per group a norm erases each channel's mean, so no network could carry a colour or a level.
    To stay under 10 MB in float16, the UNet has one res block per level and its (spatio-temporal)
    transformers on the way down at the second level (8x8 latents) and in the middle only. The attack's
    temporal term pushes on the last down level with attention: at 8x8 it has 64 positions, each with
    its own frame-to-frame map per head, and 4 heads of 16 channels (the first toy had 4x4 and 2 heads,
    and its maps barely moved under the attack)."""
    vae = VAEConfig(down_block_types=("DownEncoderBlock2D",) * 3, block_out_channels=(64, 64, 64), layers_per_block=1,
                    sample_size=SIZE)
    clip = CLIPConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=32,
                      projection_dim=32)
    unet = UNetConfig(sample_size=SIZE // 4, block_out_channels=(64, 64, 64, 64), num_attention_heads=4,
                      layers_per_block=1, cross_attention_dim=32, addition_time_embed_dim=32,
                      projection_class_embeddings_input_dim=96, num_frames=FRAMES,
                      down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                        "DownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                      up_block_types=("UpBlockSpatioTemporal",) * 4)
    return vae, unet, clip


def lr_at(step, total, peak, warmup=100):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def still_crops(maker, batch, crop, g):
    """A batch of random crop x crop windows of stills at the model's scale: (B, 3, crop, crop) in [-1,1].
    Convolutions do not care about the size, so small crops give many images per step for little compute."""
    out = []
    for _ in range(batch):
        picture = maker.picture(g, SIZE)
        top, left = (int(v) for v in torch.randint(SIZE - crop + 1, (2,), generator=g))
        out.append(picture[:, top:top + crop, left:left + crop])
    return torch.stack(out) * 2 - 1


def train_vae_stills(vae, maker, steps, batch, crop, peak, g, device, log):
    """Phase 1a: the whole autoencoder on stills, each decoded as a 1-frame video, with MSE (what PSNR
    measures) on the reconstruction from the posterior mean and a tiny KL term."""
    opt = torch.optim.AdamW(vae.parameters(), lr=peak, weight_decay=0.0)
    for step in (bar := tqdm(range(steps), desc="vae stills")):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak)
        frames = still_crops(maker, batch, crop, g).to(device)  # (B, 3, crop, crop)
        mean, logvar = vae.encode(frames)
        recon = vae.decode(mean, 1)  # the pipeline and the attack only ever use the posterior mean
        mse = (recon - frames).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        opt.zero_grad(set_to_none=True)
        (mse + KL_WEIGHT * kl).backward()
        opt.step()
        psnr = 10 * math.log10(4 / mse.item())
        log.append({"phase": "vae", "step": step, "loss": mse.item(), "psnr_db": psnr})
        bar.set_postfix(mse=f"{mse.item():.5f}", psnr=f"{psnr:.1f}")


def only_centre_taps(decoder):
    """Zero the neighbour-frame taps of the decoder's temporal convolutions (kernel (3,1,1)). Trained on
    stills, decoded as 1-frame videos, those taps never saw a neighbour and keep their random start; with
    them zeroed an 8-frame decode starts equal to decoding each frame alone, and the clips teach them."""
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size == (3, 1, 1):
                module.weight[:, :, 0].zero_()
                module.weight[:, :, 2].zero_()


def train_vae_clips(vae, maker, steps, batch, peak, g, device, log):
    """Phase 1b: the decoder alone on 8-frame clips, so that its temporal layers learn to keep neighbouring
    frames consistent; the encoder, and so the latents the UNet will learn, stay as the stills made them."""
    params = list(vae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.0)
    for step in (bar := tqdm(range(steps), desc="vae clips")):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak, warmup=min(100, steps // 10))
        frames = maker.make(batch, g)[0].flatten(0, 1).to(device)  # (B*F, 3, H, W)
        with torch.no_grad():
            mean = vae.encode(frames)[0]
        recon = vae.decode(mean, FRAMES)
        mse = (recon - frames).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        psnr = 10 * math.log10(4 / mse.item())
        log.append({"phase": "vae clips", "step": step, "loss": mse.item(), "psnr_db": psnr})
        bar.set_postfix(mse=f"{mse.item():.5f}", psnr=f"{psnr:.1f}")


@torch.no_grad()
def latent_scale(vae, maker, g, device, clips=64):
    frames = maker.make(clips, g)[0].flatten(0, 1).to(device)
    means = torch.cat([vae.encode(chunk)[0] for chunk in frames.split(64)])
    return 1 / means.std().item()


def draw_sigmas(batch, g):
    lognormal = (P_MEAN + P_STD * torch.randn(batch, generator=g)).exp()
    uniform = (math.log(SIGMA_MIN) + torch.rand(batch, generator=g) * math.log(SIGMA_MAX / SIGMA_MIN)).exp()
    return torch.where(torch.rand(batch, generator=g) < UNIFORM_SHARE, uniform, lognormal)


def train_unet(unet, ema, vae, clip, maker, steps, batch, g, device, log):
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-4, weight_decay=0.0)
    scale = vae.config.scaling_factor
    for step in (bar := tqdm(range(steps), desc="unet")):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 3e-4)
        frames, first, motion = maker.make(batch, g)
        frames, first = frames.to(device), first.to(device)
        aug = torch.where(torch.rand(batch, generator=g) < 0.5, torch.full((batch,), 0.02),
                          0.1 * torch.rand(batch, generator=g))
        with torch.no_grad():
            X_0 = vae.encode(frames.flatten(0, 1))[0].unflatten(0, (batch, FRAMES)) * scale  # (B, F, 4, h, w)
            noise_aug = torch.randn(frames[:, 0].shape, generator=g).to(device) * aug.view(-1, 1, 1, 1).to(device)
            cond = image_latents(vae, frames[:, 0], 1.0, noise_aug)  # unscaled, as the pipeline passes it
            embeds = clip_embedding(clip, first)  # (B, 1, D)
            keep = (torch.rand(batch, generator=g) >= COND_DROPOUT).float().to(device)
            cond = cond * keep.view(-1, 1, 1, 1)
            embeds = embeds * keep.view(-1, 1, 1)
        latents = cond[:, None].expand(-1, FRAMES, -1, -1, -1)
        time_ids = torch.stack([torch.full((batch,), FPS - 1.0), motion_bucket(motion), aug], 1).to(device)
        sigma = draw_sigmas(batch, g).to(device)
        x = X_0 + sigma.view(-1, 1, 1, 1, 1) * torch.randn(X_0.shape, generator=g).to(device)
        D, _ = denoise(unet, x, sigma, latents, embeds, time_ids)
        weight = (sigma**2 + 1) / sigma**2  # EDM's lambda(sigma) with sigma_data = 1
        loss = (weight.view(-1, 1, 1, 1, 1) * (D - X_0).pow(2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        log.append({"phase": "unet", "step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.4f}")


def final_loss(log, phase, last=200):
    """Mean loss of the last `last` steps of a phase."""
    values = [r["loss"] for r in log if r["phase"] == phase][-last:]
    return sum(values) / len(values) if values else None


def save_component(folder, network, class_name, stem, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": class_name, **{k: list(v) if isinstance(v, tuple) else v
                                            for k, v in vars(network.config).items()}, **(extra or {})}
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / f"{stem}.fp16.safetensors"))


def flags():
    """The command's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (official layout)")
    p.add_argument("--still-steps", type=int, default=2500, help="autoencoder steps on stills")
    p.add_argument("--still-batch", type=int, default=32, help="crops per still step")
    p.add_argument("--still-crop", type=int, default=32, help="side of a still crop, in pixels")
    p.add_argument("--vae-lr", type=float, default=2e-3, help="peak learning rate of the autoencoder")
    p.add_argument("--clip-steps", type=int, default=300, help="decoder steps on clips")
    p.add_argument("--clip-batch", type=int, default=2, help="clips per decoder step")
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--unet-batch", type=int, default=4, help="clips per UNet step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None):
    args = flags().parse_args(argv)
    out, device = Path(args.out), torch.device(args.device)
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty")

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    vae_cfg, unet_cfg, clip_cfg = toy_configs()
    vae, unet, clip = VAE(vae_cfg).to(device), UNet(unet_cfg).to(device), CLIPImageEncoder(clip_cfg).to(device)
    clip.eval().requires_grad_(False)
    ema = UNet(unet_cfg).to(device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    maker = ClipMaker(load_photos(), SIZE, FRAMES)
    log, times = [], {}

    start = time.perf_counter()
    train_vae_stills(vae.train(), maker, args.still_steps, args.still_batch, args.still_crop, args.vae_lr, g,
                     device, log)
    only_centre_taps(vae.decoder)
    train_vae_clips(vae, maker, args.clip_steps, args.clip_batch, args.vae_lr / 3, g, device, log)
    vae.eval().requires_grad_(False)
    vae.config.scaling_factor = latent_scale(vae, maker, g, device)
    times["vae_s"] = time.perf_counter() - start
    print(f"vae: {times['vae_s']:.0f} s, scaling factor {vae.config.scaling_factor:.4f}")

    start = time.perf_counter()
    train_unet(unet.train(), ema, vae, clip, maker, args.unet_steps, args.unet_batch, g, device, log)
    times["unet_s"] = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    save_component(out / "vae", vae, "AutoencoderKLTemporalDecoder", "diffusion_pytorch_model")
    save_component(out / "unet", ema, "UNetSpatioTemporalConditionModel", "diffusion_pytorch_model")
    save_component(out / "image_encoder", clip, "CLIPVisionModelWithProjection", "model",
                   {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model"})
    loss_curve(log, out / "loss_curve.png")
    summary = {"settings": vars(args), "size": SIZE, "frames": FRAMES, "p_mean": P_MEAN, "p_std": P_STD,
               "uniform_share": UNIFORM_SHARE, "cond_dropout": COND_DROPOUT, "threads": torch.get_num_threads(),
               "scaling_factor": vae.config.scaling_factor, **times,
               "final_vae_loss": final_loss(log, "vae"), "final_unet_loss": final_loss(log, "unet")}
    (out / "training.json").write_text(json.dumps(summary))
    print(f"wrote {out}: vae {times['vae_s']:.0f} s, unet {times['unet_s']:.0f} s")


if __name__ == "__main__":
    main()
