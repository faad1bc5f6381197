"""What the adversary would see, for attack.py's video check and --preview: how far the videos of the guarded photo
and of the photo with random noise of the same L_inf are from the clean photo's (video_check); the three videos
side by side, with how far each is from the clean photo's
video frame by frame; and the paper's Fig. 3: the temporal self-attention maps of the attacked blocks when the
adversary's model animates the source photo, beside the same maps for the guarded photo.

The random noise is the baseline that gives a distance its meaning: noise that changes the photo as much as the
guard does, but is not aimed at the model. Both attention passes denoise the same noisy latents of the source's
video at the middle noise level of the sampling schedule, with the same draw of the pipeline's randomness, so the
maps differ only through the photo.
"""
import io
import math
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from judging.metrics import held_out_seeds, psnr, video_distance
from plumbing.files import peak_memory, quantise
from plumbing.photos import model_input, to_images, to_uint8, video_bytes

CELL, LABEL = 24, 16  # pixels per entry of an F x F map; height of a label strip
FPS = 7  # frame rate of the preview GIFs
GAIN = 4  # the difference panels show |frame - clean frame| x GAIN in levels of 255: one gain for every panel
PANEL = 256  # the smallest width a panel is shown at: smaller videos (the toy's 64 pixels) are enlarged, pixels kept
INFINITE_DB = 60  # where the plot draws a frame equal to the clean one (an infinite PSNR)
FOOTER = 3 * LABEL + 4  # height of the three lines of text under the preview's panels
# the plot's lines: colours that a GIF's 256-colour palette keeps beside the videos' own
GUARDED_COLOUR, NOISE_COLOUR = (255, 64, 64), (235, 235, 235)


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


def frame_distances(V, V_src):
    """Per frame, the PSNR in dB of a video's 8-bit frames (F,H,W,3) uint8 to the clean video's."""
    return [psnr(torch.from_numpy(a).double() / 255, torch.from_numpy(b).double() / 255) for a, b in zip(V, V_src)]


def enlarged(array, size, resample=Image.Resampling.NEAREST):
    """(H,W,3) uint8 -> a PIL image of size (width, height)."""
    im = Image.fromarray(array)
    return im if im.size == size else im.resize(size, resample)


def difference(V, V_src):
    """|V - V_src| x GAIN in levels of 255, (F,H,W,3) uint8: black where nothing changed, white from 256 / GAIN."""
    return (np.abs(V.astype(np.int16) - V_src) * GAIN).clip(0, 255).astype(np.uint8)


def distance_plot(distances, frame, size, noise_label):
    """A panel of size (width, height): the per-frame PSNR to the clean video of the guarded photo's video and of the
    noise's (distances: two lists of dB), frame `frame` marked. Lower is further from the clean video."""
    width, height = size
    panel = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(panel)
    values = [min(v, INFINITE_DB) for d in distances for v in d]
    low, high = math.floor(min(values)) - 1, math.ceil(max(values)) + 1
    left, right, top, bottom = 30, width - 8, 2 * LABEL + 4, height - LABEL - 4
    frames = len(distances[0])

    def at(t, db):
        x = left + (right - left) * (t / max(frames - 1, 1))
        return x, bottom - (bottom - top) * (min(db, INFINITE_DB) - low) / (high - low)
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    x = at(frame, low)[0]
    draw.line((x, top, x, bottom), fill=(200, 200, 200))
    for d, colour in zip(distances, (GUARDED_COLOUR, NOISE_COLOUR)):
        points = [at(t, db) for t, db in enumerate(d)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.ellipse((points[frame][0] - 3, points[frame][1] - 3, points[frame][0] + 3, points[frame][1] + 3),
                     fill=colour)
    draw.text((3, 2), "PSNR to the clean video, dB", fill="white")
    draw.text((3, LABEL + 2), "guarded", fill=GUARDED_COLOUR)
    draw.text((3 + draw.textlength("guarded  "), LABEL + 2), noise_label, fill=NOISE_COLOUR)
    draw.text((2, top - 2), f"{high}", fill="white")
    draw.text((2, bottom - 10), f"{low}", fill="white")
    draw.text((left, bottom + 2), f"frame {frame} of {frames} (lower = further)", fill="white")
    return panel


def side_by_side(photos, videos, seed, eps, poses=None):
    """The frames of .preview.gif: columns clean | guarded | noise; rows: the photos as the pipeline resizes them, their
    videos (frame t) with its PSNR to the clean video's frame t, and |video - clean video| x GAIN beside a plot of the
    per-frame PSNR. photos: three (3,H,W) in [-1,1]; videos: three (F,3,H,W) in [-1,1]; poses: the poses the videos
    follow (F,3,h,w) in [0,1], a fourth column, or None."""
    photos8 = [to_uint8(p[None])[0] for p in photos]  # (H, W, 3) uint8 each
    V_src, V_adv, V_noise = (to_uint8(V) for V in videos)  # (F, H, W, 3) uint8 each
    distances = [frame_distances(V, V_src) for V in (V_adv, V_noise)]
    levels = f"{eps * 255:.3g}/255"  # 8/255 for --eps 8/255
    noise_label = f"±{levels} noise"
    labels = [["clean photo", "guarded photo", f"{noise_label} photo"],
              [f"clean photo's video (seed {seed})", "guarded's video: {:.1f} dB", "noise's video: {:.1f} dB"],
              ["", f"|guarded's - clean's| x{GAIN}", f"|noise's - clean's| x{GAIN}"]]
    h, w = photos8[0].shape[:2]
    widest = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label.format(99.9))
                 for row in labels for label in row) + 8
    scale = max(math.ceil(PANEL / w), math.ceil(widest / w), 1)
    size = (w * scale, h * scale)
    columns = 3 + (poses is not None)
    footer = [f"Photos as the model takes them ({h}x{w}); videos at seed {seed}, which the attack never used; panels "
              f"enlarged x{scale}.",
              f"Noise: each pixel the guard may change, moved by ±{levels} at random in each channel (the guard's "
              "L_inf).",
              f"Difference panels: one gain for both, x{GAIN} on levels of 255 ({256 // GAIN} levels or more show "
              "white)."]
    photo_panels = [enlarged(p, size) for p in photos8]
    frames = []
    for t in range(len(V_src)):
        sheet = Image.new("RGB", (columns * size[0], 3 * size[1] + FOOTER), "black")
        panels = [photo_panels, [enlarged(V[t], size) for V in (V_src, V_adv, V_noise)],
                  [distance_plot(distances, t, size, noise_label),
                   *(enlarged(difference(V[t], V_src[t]), size) for V in (V_adv, V_noise))]]
        if poses is not None:
            pose = to_uint8(poses[t:t + 1].float() * 2 - 1)[0]
            panels[1].append(enlarged(pose, size, Image.Resampling.BILINEAR))
        draw = ImageDraw.Draw(sheet)
        for r, row in enumerate(panels):
            for c, panel in enumerate(row):
                sheet.paste(panel, (c * size[0], r * size[1]))
                label = labels[r][c] if c < 3 else "the poses followed"
                if label:
                    label = label.format(distances[c - 1][t]) if r == 1 and c in (1, 2) else label
                    draw.text((c * size[0] + 3, r * size[1] + 2), label, fill="yellow", stroke_width=1,
                              stroke_fill="black")
        for k, line in enumerate(footer):
            draw.text((3, 3 * size[1] + 2 + k * LABEL), line, fill="white")
        frames.append(sheet)
    return frames


def random_sign(I_src, eps, mask=None, seed=0):
    """I_src (1,3,H0,W0) in [0,1] with uniform-sign noise of size eps (within the mask (H0,W0) of 0/1): the
    random-sign baseline, attack.protect's method "random-sign"; its draws are protect's for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    m = torch.ones_like(I_src[:, :1]) if mask is None else mask.to(I_src)[None, None]  # (1, 1, H0, W0)
    noise = (torch.rand(I_src.shape, generator=generator) * 2 - 1).to(I_src) * eps * m
    return (I_src + eps * noise.sign()).clamp(0, 1)


def video_check(model, src8, guarded8, out, args, size, mask=None):
    """Does it protect? The videos the model makes at `size` (attack.py's flags `args` give their frames and steps) at
    a seed the attack never used, of the source photo, of the guarded one and of the photo with random-sign noise of
    the same L_inf (--eps, --mask, --seed: the baseline that gives a distance its meaning), and how far the latter two
    are from the first -> (the report's fields, {path: bytes}: with --preview, preview's files beside `out`)."""
    seed = held_out_seeds(args.seed)[0]
    noise8 = guarded8 if args.method == "random-sign" else quantise(
        src8, random_sign((src8.float() / 255)[None], args.eps, mask, args.seed)[0], args.eps, mask)
    photos = {"source": src8, "guarded": guarded8, "noise": noise8}
    videos = {name: model.video(x, size=size, num_frames=args.frames, steps=args.sample_steps, seed=seed,
                                progress=f"video of the {name} photo").cpu()
              for name, x in photos.items() if name != "noise" or noise8 is not guarded8}
    videos.setdefault("noise", videos["guarded"])
    frames8 = {name: torch.from_numpy(to_uint8(V)).permute(0, 3, 1, 2) for name, V in videos.items()}
    distance, noise = (video_distance(frames8[name], frames8["source"]) for name in ("guarded", "noise"))
    fields = {"video_seed": seed, "video_psnr_db": distance["video_psnr"], "video_ssim": distance["video_ssim"],
              "noise_video_psnr_db": noise["video_psnr"], "noise_video_ssim": noise["video_ssim"],
              "peak_memory_with_videos_bytes": peak_memory(model.device)}  # the protection's and the videos'
    if not args.preview:
        return fields, {}
    print("preview: drawing the side-by-side video and the attention maps", file=sys.stderr)
    files = preview(model, tuple(photos.values()), size, seed, args.sample_steps, args.attn_blocks,
                    tuple(videos[name] for name in photos), args.eps)
    return fields, {out.with_suffix(suffix): data for suffix, data in files.items()}


def preview(model, photos, size, seed, steps, attn_blocks, videos, eps):
    """What the adversary's model makes of the clean photo, the guarded photo and the photo with random noise of the
    same L_inf `eps`, photos = (clean, guarded, noise) (3,H0,W0) uint8, at `seed` (one the attack did not use),
    videos = (V_src, V_adv, V_noise) (F,3,H,W) in [-1,1]; and the paper's Fig. 3 for the clean and guarded photos:
    file bytes by suffix, .before.gif, .after.gif, .preview.gif (side_by_side; for a pose-conditioned model, the poses
    the videos follow in a fourth column), and .attention.png, the temporal attention maps of the attacked blocks."""
    device = model.device
    # (3, H, W) in [-1, 1], resized as the pipeline resizes (ControlNeXt, Wan: centre-cropped as their releases do)
    inputs = [model.model_input(rgb8, size) if hasattr(model, "model_input") else model_input(rgb8, size)
              for rgb8 in photos]
    V_src, V_adv, _ = videos
    poses = model.poses(0, len(V_src)) if hasattr(model, "pose_sequences") else None
    frames = side_by_side(inputs, videos, seed, eps, poses)

    # Fig. 3: both photos' maps on the same noisy latents of the source's video, at the schedule's middle
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        X_0 = model.encode_frames(V_src.to(device))  # (1, F, C, h, w)
    sigma = model.noise_levels(steps)[steps // 2]
    X_t = model.S(X_0, sigma, torch.randn(X_0.shape, generator=g))
    d = model.draw(g, size)
    maps = temporal_maps(model, {name: ((image[None].to(device) + 1) / 2, (rgb8.float() / 255)[None].to(device))
                                 for name, image, rgb8 in zip(("source", "guarded"), inputs, photos)},
                         X_t, sigma, d, size, attn_blocks)
    figure = io.BytesIO()
    attention_figure(maps, X_0.shape[-2:]).save(figure, format="PNG")
    fps = getattr(model, "fps", FPS)  # the rate the release writes its videos at, where it has one
    return {".before.gif": video_bytes(to_images(V_src), fps), ".after.gif": video_bytes(to_images(V_adv), fps),
            ".preview.gif": video_bytes(frames, fps), ".attention.png": figure.getvalue()}
