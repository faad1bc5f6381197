"""The survival report: does a guarded photo still protect after what happens to photos online?

For each transformation T (judging/transforms.py, the real ones: Pillow's JPEG codec and resizing), the source
photo and every guarded photo are transformed and animated with the run's seed. Each guarded photo's
video is compared with V_0^T, the video of the transformed source: what the adversary would have made
from the unprotected photo after the same T. A perturbation that T erases gives a video close to V_0^T
(high PSNR). The source's own row compares V_0^T with V_0: how much T alone changes the video. Per photo,
the worst case of a method is the transformation that leaves its video closest to V_0^T (BlurGuard's
worst case over purifications), over every transformation given, chains and purifiers included.

A crop changes the framing: a guarded photo cropped and the source cropped alike frame the same region, so
their videos are compared whole; V_0, made from the whole source, is compared with V_0^T on the region they
share, its frames' centre crop of the same fraction (the product of a chain's crops) resized to V_0^T's size
with Pillow's bicubic filter.
"""
import torch

from judging.metrics import video_distance
from judging.transforms import crop_box, kept_fraction, name, pil_resize, real

# The rows of the second contact sheet, per transformation: the source and these methods' photos.
SHEET_METHODS = ("i2vguard", "i2vguard-eot")
WORST = {"video_psnr": max, "video_ssim": max}  # the least moved video is the worst for the protector


def survive(rows, specs, make_video, seed, vae=None):
    """rows: [(name, photo8 (3,H,W), _, frames8)], the source ("original") first, as evaluate.py makes them.
    -> ({transformation: {row name: scores}}, the rows of the second contact sheet). Noise draws are seeded
    by `seed`, the same for every photo of a row set; `vae`, the adversary's VAE (purifiers.VAERoundTrip), is
    what the vae transformation runs."""
    (_, src8, _, clean8), guarded = rows[0], rows[1:]
    results, sheet = {}, []
    for spec in specs:
        def transform(rgb8, spec=spec):
            return real(spec, rgb8, torch.Generator().manual_seed(seed), vae)

        src_t = transform(src8)
        reference = make_video(src_t)  # V_0^T
        t = name(spec)
        results[t] = {"original": video_distance(reference, common_region(clean8, kept_fraction(spec)))}
        sheet.append((f"source, {t}", src_t, None, reference))
        for method, photo8, _, _ in guarded:
            photo_t = transform(photo8)
            frames8 = make_video(photo_t)
            results[t][method] = video_distance(frames8, reference)
            if method in SHEET_METHODS:
                sheet.append((f"{method}, {t}", photo_t, (photo_t.int() - src_t.int()).abs(), frames8))
    return results, sheet


def common_region(frames8, fraction):
    """Frames (F,3,H,W) uint8 as a crop keeping `fraction` of each side frames them: the centre crop, resized back
    to (H, W); the frames themselves when nothing is cut off."""
    if fraction == 1:
        return frames8
    h, w = frames8.shape[-2:]
    top, left, ch, cw = crop_box(h, w, fraction)
    return torch.stack([pil_resize(f[:, top:top + ch, left:left + cw].contiguous(), (h, w)) for f in frames8])


def worst_case(transformed, method, key):
    return WORST[key](scores[method][key] for scores in transformed.values())


def survival_tables(records, methods, names, mean_std):
    """Markdown: per metric, a table of methods x (no transformation, each transformation, worst case), mean ±
    std over the photos. `names` maps a method to its row name; `mean_std(values, scale)` formats a cell."""
    specs = list(records[0]["transformed"])
    parts = [f"Survival. Each photo transformed before its video is made (real JPEG codec and resizing; a chain "
             "a+b applies a, then b); "
             f"videos compared with V_0^T, the video of the source after the same transformation; "
             f"{len(records)} photos, static videos included. Worst case: per photo, the transformation "
             "that leaves the video closest to V_0^T. The first row is V_0^T against V_0: the "
             "transformation's own effect (after a crop, on the region both videos show)."]
    for key, title in (("video_psnr", "PSNR to V_0^T (dB, lower = protected)"),
                       ("video_ssim", "SSIM to V_0^T (lower = protected)")):
        header = ["Source", "none"] + specs + ["worst case"]
        lines = [f"\n{title}\n", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for method in ["original"] + methods:
            untransformed = "–" if method == "original" else mean_std([r["videos"][method][0][key] for r in records], 1)
            cells = [mean_std([r["transformed"][t][method][key] for r in records], 1) for t in specs]
            worst = "–" if method == "original" else mean_std(
                [worst_case(r["transformed"], method, key) for r in records], 1)
            lines.append(f"| {names[method]} | {untransformed} | " + " | ".join(cells) + f" | {worst} |")
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"
