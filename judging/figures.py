"""What the adversary would see, for attack.py's video check and --preview: how far the video of the guarded
photo is from that of the source (video_check); the two videos side by side, and the paper's Fig. 3: the
temporal self-attention maps of the attacked blocks when the adversary's model animates the source photo,
beside the same maps for the guarded photo.

Both passes denoise the same noisy latents of the source's video at the middle noise level of the
sampling schedule, with the same draw of the pipeline's randomness, so the maps differ only through the photo.
"""
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from judging.metrics import held_out_seeds, video_distance
from plumbing.photos import model_input, to_images, to_uint8, video_bytes

CELL, LABEL = 24, 16  # pixels per entry of an F x F map; height of a label strip
FPS = 7  # frame rate of the preview GIFs
# How much the difference panels amplify, in units of [-1, 1] (so x10 on 0..255 levels for PHOTO_GAIN = 20)
PHOTO_GAIN, VIDEO_GAIN = 20, 8


def heat(values):
    """(H,W) array in [0,1] -> RGB uint8, black through red and yellow to white."""
    v = np.clip(values, 0, 1)[..., None]
    return (255 * np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], -1), 0, 1)).astype(np.uint8)


def temporal_maps(model, photos, X_t, sigma, d, size, blocks):
    """{photo name: {block: temporal attention probabilities (h*w, heads, F, F)}} for each photo
    (name: (photo at the model's size (1,3,H,W) in [0,1], the photo at its own size)), through the
    model's denoiser G at noise level sigma, every photo encoded through the same draw d."""
    with torch.no_grad():
        return {name: model.G(X_t, sigma, model.E(image, d, size), model.embed(full), d, blocks, maps_only=True)[1]
                for name, (image, full) in photos.items()}


def attention_figure(maps, latent_size):
    """PNG image of the maps from temporal_maps (keys "source" and "guarded"): a row per block with the
    frame-to-frame map averaged over pixels and heads, source then guarded, and where in the frame
    the maps changed (mean |A_adv - A_src| per latent pixel, or per token position of a DiT), or for maps
    without a pixel axis (a DiT's averaged over positions, (1, heads, F, F)) which of their entries changed."""
    h, w = latent_size  # of the denoiser's latents
    rows = []
    for block in maps["source"]:
        A_src, A_adv = (maps[k][block].float().cpu() for k in ("source", "guarded"))  # (h*w, heads, F, F)
        frames = A_src.shape[-1]
        side = CELL * frames
        means = [A.mean((0, 1)).numpy() for A in (A_src, A_adv)]  # (F, F) each, rows sum to 1
        top = max(m.max() for m in means)  # one colour scale for both
        tiles = [heat(m / top).repeat(CELL, 0).repeat(CELL, 1) for m in means]
        if A_src.shape[0] > 1:  # a map per pixel (a UNet's temporal attention): where in the frame it changed
            hh, ww = h, w
            while hh * ww > A_src.shape[0]:  # the block's own resolution: the latents halved (rounding up) per level
                hh, ww = -(-hh // 2), -(-ww // 2)
            # (a batch of two, a guided DiT's passes, is averaged)
            change, where = (A_adv - A_src).abs().mean((1, 2, 3)).reshape(-1, hh, ww).mean(0).numpy(), "pixel"
        else:  # one map per video (a DiT's frame-to-frame shares): which entries changed
            hh = ww = frames
            change, where = (A_adv - A_src).abs().mean((0, 1)).numpy(), "entry"
        peak = max(change.max(), 1e-12)
        tiles.append(np.asarray(Image.fromarray(heat(change / peak)).resize((round(side * ww / hh), side),
                                                                            Image.Resampling.NEAREST)))
        labels = [f"source (white = {top:.2f})", "guarded",
                  f"|A_adv - A_src| per {where}, max {peak:.2g}"]
        rows.append((block, tiles, labels))
    def advance(tile, label):  # room for a tile and its label (Pillow's default font: about 6 pixels a letter)
        return max(tile.shape[1], 6 * len(label)) + 8

    width = max(360, max(sum(advance(t, s) for t, s in zip(tiles, labels)) for _, tiles, labels in rows))
    height = sum(2 * LABEL + tiles[0].shape[0] + 8 for _, tiles, _ in rows) + 3 * LABEL
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for block, tiles, labels in rows:
        draw.text((2, y + 2), f"temporal attention of {block} (mean over pixels and heads)", fill="black")
        x = 0
        for tile, label in zip(tiles, labels):
            draw.text((x + 2, y + LABEL + 2), label, fill="black")
            sheet.paste(Image.fromarray(tile), (x, y + 2 * LABEL))
            x += advance(tile, label)
        y += 2 * LABEL + tiles[0].shape[0] + 8
    # the colour scale, shared by every tile: 0 at the left, each tile's own maximum (its label) at the right
    ramp = heat(np.linspace(0, 1, 160)[None].repeat(LABEL // 2, 0))
    sheet.paste(Image.fromarray(ramp), (2, y + 2))
    draw.text((168, y), "0 ... each tile's max (in its label)", fill="black")
    draw.text((2, y + LABEL + 2), "maps: row i = query frame, column j = key frame (frame 0 top left)", fill="black")
    return sheet


def video_check(model, src8, guarded8, out, args, size):
    """Does it protect? The videos the model makes of the source photo and of the guarded one at `size` (attack.py's
    flags `args` give their frames and steps) at a seed the attack never used, and how far apart they are ->
    (the report's fields, {path: bytes}: with --preview, the files of `preview` beside the guarded photo `out`)."""
    seed = held_out_seeds(args.seed)[0]
    V_src, V_adv = (model.video(x, size=size, num_frames=args.frames, steps=args.sample_steps, seed=seed,
                                progress=f"video of the {name} photo").cpu()
                    for name, x in (("source", src8), ("guarded", guarded8)))
    distance = video_distance(*(torch.from_numpy(to_uint8(V)).permute(0, 3, 1, 2) for V in (V_adv, V_src)))
    fields = {"video_seed": seed, "video_psnr_db": distance["video_psnr"], "video_ssim": distance["video_ssim"]}
    if not args.preview:
        return fields, {}
    videos = preview(model, src8, guarded8, size, seed, args.sample_steps, args.attn_blocks, (V_src, V_adv))
    return fields, {out.with_suffix(suffix): data for suffix, data in videos.items()}


def preview(model, src8, guarded8, size, seed, steps, attn_blocks, frames):
    """The videos the model made from the source photo and from the guarded one with `seed` (one the attack
    did not use), `frames` = (V_src, V_adv) (F,3,H,W) in [-1,1], as the adversary would make them, and the
    paper's Fig. 3 for them: file bytes by suffix, .before.gif, .after.gif, .preview.gif side by side
    (photos on top, their videos below, each column labelled; for a pose-conditioned model, the poses the
    videos follow in a fourth column), and .attention.png, the temporal attention maps of the attacked blocks."""
    videos, inputs = [], {}
    device = model.device
    for (name, rgb8), V in zip((("source", src8), ("guarded", guarded8)), frames):
        # (3, H, W) in [-1, 1], resized as the pipeline resizes (ControlNeXt: centre-cropped as its release does)
        image = model.model_input(rgb8, size) if hasattr(model, "model_input") else model_input(rgb8, size)
        videos.append((image, V))
        inputs[name] = ((image[None].to(device) + 1) / 2, (rgb8.float() / 255)[None].to(device))
    (src, V_src), (adv, V_adv) = videos
    # values in [-1, 1]: a difference d is shown as -1 + GAIN * |d|, black where nothing changed
    top = torch.cat([src, adv, (-1 + PHOTO_GAIN * (adv - src).abs()).clamp(-1, 1)], dim=-1)  # (3, H, 3W)
    rows = [torch.cat([a, b, (-1 + VIDEO_GAIN * (a - b).abs()).clamp(-1, 1)], dim=-1) for a, b in zip(V_src, V_adv)]
    labels = ["source photo", "guarded photo", f"|difference| x{PHOTO_GAIN // 2}", f"its video (seed {seed})",
              "guarded's video", f"|difference| x{VIDEO_GAIN // 2}"]
    if hasattr(model, "pose_sequences"):  # a pose-conditioned model: the poses the videos follow, in a fourth column
        poses = F.interpolate(model.poses(0, len(V_src)).float(), size=tuple(src.shape[-2:]), mode="bilinear")
        top = torch.cat([top, -torch.ones_like(src)], dim=-1)  # (3, H, 4W)
        rows = [torch.cat([row, pose.to(row) * 2 - 1], dim=-1) for row, pose in zip(rows, poses)]
        labels[3:3] = [""]
        labels.append("the poses followed")
    grid = torch.stack([torch.cat([top, row], dim=-2) for row in rows])  # (F, 3, 2H, columns * W)
    side_by_side = to_images(grid)
    columns = len(labels) // 2
    w, h = side_by_side[0].width // columns, side_by_side[0].height // 2
    # panels narrower than their labels (the toy's 64 pixels) are enlarged, pixels kept sharp, until every label fits
    widest = max(ImageDraw.Draw(side_by_side[0]).textlength(label) for label in labels) + 8
    if (scale := math.ceil(widest / w)) > 1:
        side_by_side = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in side_by_side]
        w, h = w * scale, h * scale
    labels = [(k % columns * w, k // columns * h, label) for k, label in enumerate(labels)]
    for im in side_by_side:
        draw = ImageDraw.Draw(im)
        for x, y, label in labels:
            draw.text((x + 3, y + 2), label, fill="yellow", stroke_width=1, stroke_fill="black")

    # Fig. 3: both photos' maps on the same noisy latents of the source's video, at the schedule's middle
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        X_0 = model.encode_frames(V_src.to(device))  # (1, F, C, h, w)
    sigma = model.noise_levels(steps)[steps // 2]
    X_t = model.S(X_0, sigma, torch.randn(X_0.shape, generator=g))
    d = model.draw(g, size)
    maps = temporal_maps(model, inputs, X_t, sigma, d, size, attn_blocks)
    figure = io.BytesIO()
    attention_figure(maps, X_0.shape[-2:]).save(figure, format="PNG")
    fps = getattr(model, "fps", FPS)  # the rate the release writes its videos at, where it has one
    return {".before.gif": video_bytes(to_images(V_src), fps), ".after.gif": video_bytes(to_images(V_adv), fps),
            ".preview.gif": video_bytes(side_by_side, fps), ".attention.png": figure.getvalue()}
