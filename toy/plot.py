"""A loss curve as a PNG, drawn with Pillow alone: one panel per training phase, log-scale losses,
the raw values in grey and a running mean in colour."""
import math

from PIL import Image, ImageDraw

W, H, MARGIN = 480, 300, 48


def running_mean(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def panel(values, title):
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    logs = [math.log10(max(v, 1e-12)) for v in values]
    lo, hi = min(logs), max(logs)
    hi = hi if hi > lo else lo + 1

    def xy(i, v):
        return (MARGIN + (W - 2 * MARGIN) * i / max(len(values) - 1, 1),
                H - MARGIN - (H - 2 * MARGIN) * (v - lo) / (hi - lo))

    d.rectangle([MARGIN, MARGIN, W - MARGIN, H - MARGIN], outline="black")
    for decade in range(math.floor(lo), math.ceil(hi) + 1):
        if lo <= decade <= hi:
            y = xy(0, decade)[1]
            d.line([MARGIN - 4, y, MARGIN, y], fill="black")
            d.text((4, y - 6), f"1e{decade}", fill="black")
    d.line([xy(i, v) for i, v in enumerate(logs)], fill=(200, 200, 200))
    smooth = running_mean(values, max(len(values) // 50, 1))
    d.line([xy(i, math.log10(max(v, 1e-12))) for i, v in enumerate(smooth)], fill=(200, 40, 40), width=2)
    d.text((MARGIN, 16), f"{title}: {len(values)} steps, last mean {smooth[-1]:.4g}", fill="black")
    d.text((W - MARGIN - 30, H - MARGIN + 8), "step", fill="black")
    return im


def loss_curve(log, path):
    """log: rows {"phase", "loss"} -> PNG with a panel per phase, side by side."""
    phases = list(dict.fromkeys(r["phase"] for r in log))
    panels = [panel([r["loss"] for r in log if r["phase"] == p], f"{p} loss") for p in phases]
    sheet = Image.new("RGB", (W * len(panels), H), "white")
    for i, im in enumerate(panels):
        sheet.paste(im, (i * W, 0))
    sheet.save(path)
