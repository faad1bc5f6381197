"""The paper's Fig. 3 for one photo: the temporal self-attention maps of the attacked blocks when the
adversary's model animates the source photo, beside the same maps for the guarded photo.

Both passes denoise the same noisy latents of the source's video at the middle noise level of the
sampling schedule, with the same draw of the pipeline's randomness, so the maps differ only through the photo.
"""
import numpy as np
import torch
from PIL import Image, ImageDraw


CELL, LABEL = 24, 16  # pixels per entry of an F x F map; height of a label strip


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
    the maps changed (mean |A_adv - A_src| per latent pixel), or for maps without a pixel axis (a DiT's,
    (1, heads, F, F)) which of their entries changed."""
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
            change, where = (A_adv - A_src).abs().mean((1, 2, 3)).reshape(hh, ww).numpy(), "pixel"
        else:  # one map per video (a DiT's frame-to-frame shares): which entries changed
            hh = ww = frames
            change, where = (A_adv - A_src).abs().mean((0, 1)).numpy(), "entry"
        peak = max(change.max(), 1e-12)
        tiles.append(np.asarray(Image.fromarray(heat(change / peak)).resize((round(side * ww / hh), side),
                                                                            Image.Resampling.NEAREST)))
        labels = [f"source: row i attends j, white {top:.2f}", "guarded", f"|A_adv - A_src| per {where}, max {peak:.2g}"]
        rows.append((block, tiles, labels))
    width = max(sum(t.shape[1] + 8 for t in tiles) for _, tiles, _ in rows)
    height = sum(2 * LABEL + tiles[0].shape[0] + 8 for _, tiles, _ in rows)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for block, tiles, labels in rows:
        draw.text((2, y + 2), f"temporal attention of {block} (mean over pixels and heads)", fill="black")
        x = 0
        for tile, label in zip(tiles, labels):
            draw.text((x + 2, y + LABEL + 2), label, fill="black")
            sheet.paste(Image.fromarray(tile), (x, y + 2 * LABEL))
            x += tile.shape[1] + 8
        y += 2 * LABEL + tiles[0].shape[0] + 8
    return sheet
