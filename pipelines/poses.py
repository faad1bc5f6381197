"""Pose sequences for ControlNeXt-SVD-v2: generic body motions to protect against when the adversary's
poses are unknown, drawn as the release draws its DWPose skeletons, and pose frames read from files.

A pose is the 18 OpenPose body keypoints (KEYPOINTS, in that order) as (x, y) fractions of the frame's
width and height. The release starts every pose sequence with the photo's own pose, and moves and scales
each driving pose to fit the photo's body (its dwpose/preprocess.py). Given the photo's keypoints (read_body),
fitted_poses does the same: frame 0 is the photo's pose, the motion's frames follow, fitted by fit_motion.
Without them the generic sequences stay centred, and frame 0 is their neutral standing pose, not the photo's.
"""
import colorsys
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageSequence

from plumbing.cli import one_line
from plumbing.photos import to_8bit
from plumbing.reading import read_json

KEYPOINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
             "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")

# The drawing follows the release's ControlNeXt-SVD-v2/dwpose/util.py (draw_pose, draw_bodypose), which
# utils/pre_process.py (through dwpose/preprocess.py) uses for the reference photo and every driving frame.
# It also draws hands and face landmarks; these poses have none, so only the body is drawn here.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))  # limb i joins these (ear-shoulder: not drawn)
CANVAS_SIDE = 2160  # the release draws on a canvas whose shorter side is this, then resizes it to the frame
LIMB_HALF_WIDTH = 4  # canvas pixels: a limb is a filled ellipse with this minor semi-axis
JOINT_RADIUS = 4  # canvas pixels: a keypoint is a filled disc
LIMB_DIMMING = 0.6  # limbs are drawn at 60% brightness, keypoints at full

# The neutral pose, in frame heights, x from the frame's centre (the person's right is the image's
# left). Sequences are proportioned for the release's 576x1024 portrait frame; other shapes stretch them.
ASPECT = 576 / 1024
NECK, SHOULDER, HIP = (0.0, 0.25), (0.075, 0.26), (0.045, 0.52)  # SHOULDER, HIP: the left one; mirrored
UPPER_ARM, FOREARM, THIGH, SHIN = 0.13, 0.12, 0.18, 0.18


def colour(i):
    """The RGB colour (0..255) of limb i and keypoint i in the release's pose images: hue i * 20 degrees,
    with red and blue swapped (the release draws the hues on a canvas it then converts from BGR to RGB)."""
    r, g, b = (round(255 * c) for c in colorsys.hsv_to_rgb(i / 18, 1.0, 1.0))
    return b, g, r


def body(lean=0.0, turn=0.0, rise=0.0, arm_raise=(0, 0), elbow_bend=(0, 0), knee_lift=(0, 0)):
    """One pose (18, 2); with no arguments, the neutral standing pose.

    lean: the neck's sideways shift in frame heights, pivoting at the hips; turn: the head's turn in
    [-1, 1] (positive: towards the image's right); rise: the whole body's lift in frame heights.
    Per side (right, left), in degrees: arm_raise, the upper arm's swing out from hanging; elbow_bend,
    the forearm's further swing; knee_lift, the thigh's swing towards the camera (it looks shorter).
    """
    p = np.zeros((18, 2))
    p[1] = NECK
    p[0] = (0.02 * turn, 0.17)
    for k, side in enumerate((-1, 1)):  # right, left: the side's direction in x
        shoulder, elbow, wrist, hip, knee, ankle, eye, ear = (
            (2, 3, 4, 8, 9, 10, 14, 16), (5, 6, 7, 11, 12, 13, 15, 17))[k]
        p[shoulder] = (side * SHOULDER[0], SHOULDER[1])
        upper = math.radians(10 + arm_raise[k])  # hanging arms are 10 degrees out, elbows bent 5
        fore = upper + math.radians(5 + elbow_bend[k])
        p[elbow] = p[shoulder] + UPPER_ARM * np.array((side * math.sin(upper), math.cos(upper)))
        p[wrist] = p[elbow] + FOREARM * np.array((side * math.sin(fore), math.cos(fore)))
        p[hip] = (side * HIP[0], HIP[1])
        p[knee] = p[hip] + (0, THIGH * math.cos(math.radians(knee_lift[k])))
        p[ankle] = p[knee] + (0, SHIN)  # the shin stays upright
        p[eye] = (side * 0.015 + 0.018 * turn, 0.155)
        p[ear] = (side * 0.035 + 0.01 * turn, 0.165)
    p[:, 0] += lean * np.clip((HIP[1] - p[:, 1]) / (HIP[1] - NECK[1]), 0, None)  # legs stay put
    p[:, 1] -= rise
    return np.stack((0.5 + p[:, 0] / ASPECT, p[:, 1]), axis=1)


# Motions are timed in frames at about 15 a second (the release keeps every 2nd frame of a driving video,
# typically 30 fps), so a longer sequence shows more of the same motion rather than a slower one.
def cycle(t, period):
    """sin of frame t's phase in a motion repeating every `period` frames: 0 at frame 0."""
    return math.sin(2 * math.pi * t / period)


def wave(frames):
    """(F, 18, 2): standing; the right forearm rises over 5 frames, then the hand waves, 8 frames a wave."""
    poses = []
    for t in range(frames):
        up = min(t / 5, 1)
        poses.append(body(arm_raise=(35 * up, 0), elbow_bend=(up * (130 + 25 * cycle(t, 8)), 0)))
    return np.stack(poses)


def sway(frames):
    """(F, 18, 2): the upper body sways, 20 frames a sway; the head turns, 12 frames a turn; arms hang."""
    return np.stack([body(lean=0.03 * cycle(t, 20), turn=0.8 * cycle(t, 12)) for t in range(frames)])


def walk(frames):
    """(F, 18, 2): walking in place, a step of each leg in 14 frames; the knees rise in turn and the
    opposite elbow bends."""
    poses = []
    for t in range(frames):
        step = cycle(t, 14)  # > 0: right knee up, weight on the left leg
        right, left = max(step, 0), max(-step, 0)
        poses.append(body(lean=0.012 * step, rise=0.008 * abs(step), elbow_bend=(40 * left, 40 * right),
                          knee_lift=(60 * right, 60 * left)))
    return np.stack(poses)


SEQUENCES = {"wave": wave, "sway": sway, "walk": walk}


def limb_polygon(start, end):
    """The filled ellipse the release draws for a limb between two canvas points, as a 361-point polygon:
    semi-axes half their distance and LIMB_HALF_WIDTH; centre, axis and angle truncated to whole pixels
    and whole degrees, as the release does."""
    cx, cy = (int(v) for v in (start + end) / 2)
    half_length = int(math.dist(start, end) / 2)
    angle = math.radians(int(math.degrees(math.atan2(start[1] - end[1], start[0] - end[0]))))
    t = np.radians(np.arange(361))
    along, across = half_length * np.cos(t), LIMB_HALF_WIDTH * np.sin(t)
    x = np.rint(cx + along * math.cos(angle) - across * math.sin(angle))
    y = np.rint(cy + along * math.sin(angle) + across * math.cos(angle))
    return list(zip(x.astype(int).tolist(), y.astype(int).tolist()))


def resize_like_opencv(image, height, width, at=(0, 0), size=None):
    """uint8 (h, w, 3) -> (height, width, 3) as OpenCV's bilinear resize, which the release uses: each
    output pixel interpolates the 2x2 input pixels around its centre, with no antialiasing (Pillow's
    bilinear resize would average every input pixel a shrunk output pixel covers). `image` may be the part at
    (top, left) = `at` of an input of `size` (h, w) that is black elsewhere: only the output pixels that read the
    part are computed."""
    size = size or image.shape[:2]

    def taps(out_size, in_size, start, stop):  # the output pixels that read [start, stop), their taps in it
        at = ((np.arange(out_size) + 0.5) * in_size / out_size - 0.5).clip(0, in_size - 1)
        low = np.floor(at).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        used = np.flatnonzero((high >= start) & (low < stop))
        inside = lambda i: (i - start).clip(-1, stop - start) + 1  # noqa: E731; a tap outside: the black border
        return used, inside(low[used]), inside(high[used]), (at - low)[used].astype(np.float32)
    (top, left), (h, w) = at, image.shape[:2]
    ys, y0, y1, wy = taps(height, size[0], top, top + h)
    xs, x0, x1, wx = taps(width, size[1], left, left + w)
    image = np.pad(image, ((1, 1), (1, 1), (0, 0)))  # (h + 2, w + 2, 3): the black around the part
    rows = image[y0].astype(np.float32) * (1 - wy)[:, None, None] + image[y1] * wy[:, None, None]
    out = np.zeros((height, width, 3), np.uint8)
    out[ys[:, None], xs] = np.rint(rows[:, x0] * (1 - wx)[:, None] + rows[:, x1] * wx[:, None])
    return out


def skeleton_shapes(points):
    """What the release draws for keypoints (18, 2) in canvas pixels (NaN: not seen): [(integer outline, RGB)], the
    limbs as filled polygons dimmed to LIMB_DIMMING, then the keypoints as discs, each a row of pixels (two ends)."""
    seen = np.isfinite(points).all(axis=1)
    shapes = [(limb_polygon(points[a], points[b]), tuple(int(c * LIMB_DIMMING) for c in colour(i)))
              for i, (a, b) in enumerate(LIMBS) if seen[a] and seen[b]]
    for i in np.flatnonzero(seen):
        x, y = (int(v) for v in points[i])
        for dy in range(-JOINT_RADIUS, JOINT_RADIUS + 1):  # the pixels within the radius, row by row
            dx = math.isqrt(JOINT_RADIUS ** 2 - dy ** 2)
            shapes.append((((x - dx, y + dy), (x + dx, y + dy)), colour(i)))
    return shapes


def skeleton_image(keypoints, height, width):
    """Keypoints (18, 2) in fractions of width and height (a NaN one is not drawn, like an undetected one)
    -> the body on black as the release draws it, (H, W, 3) uint8: on a canvas whose shorter side is CANVAS_SIDE,
    resized to the frame. Only the part of the canvas the body covers is drawn and read (the box around every
    pixel drawn, kept inside the canvas; shapes moved by whole pixels): the rest, most of its tens of megabytes,
    stays black."""
    scale = CANVAS_SIDE / min(height, width)
    canvas_size = (int(width * scale), int(height * scale))  # (W, H)
    shapes = skeleton_shapes(np.asarray(keypoints, dtype=np.float64) * canvas_size)
    xy = np.array([p for outline, _ in shapes for p in outline]).reshape(-1, 2)
    if not len(xy):
        return np.zeros((height, width, 3), np.uint8)
    (left, top), (right, bottom) = xy.min(0).clip(0, canvas_size), (xy.max(0) + 1).clip(0, canvas_size)
    if right <= left or bottom <= top:  # the body is outside the canvas
        return np.zeros((height, width, 3), np.uint8)
    part = Image.new("RGB", (int(right - left), int(bottom - top)))
    draw = ImageDraw.Draw(part)
    for outline, fill in shapes:
        outline = [(x - left, y - top) for x, y in outline]
        if len(outline) > 2:  # a limb
            draw.polygon(outline, fill=fill)
        draw.line(outline, fill=fill)  # OpenCV's fill also covers the pixels its outline crosses
    return resize_like_opencv(np.asarray(part), height, width, (top, left), canvas_size[::-1])


def draw_skeleton(keypoints, height, width):
    """skeleton_image as (3, H, W) float32 in [0, 1], what the pose encoder takes."""
    return torch.from_numpy(skeleton_image(keypoints, height, width)).permute(2, 0, 1).float() / 255  # (3, H, W)


def generic_keypoints(frames, height, width, body=None):
    """Every generic sequence's keypoints: name -> (F, 18, 2) in fractions of the frame. With the photo's keypoints
    `body` (18, 2) in fractions of the frame (NaN: not seen), each is fitted to it (fitted_poses); without, the
    sequences stay centred and one line on stderr says so."""
    if body is None:
        print("poses: the motions are not fitted to the body (no body keypoints given): centred generic sequences",
              file=sys.stderr)
        return {name: sequence(frames) for name, sequence in SEQUENCES.items()}
    return fitted_poses(frames, body, height, width)


def generic_poses(frames, height, width, body=None):
    """Every generic sequence drawn (generic_keypoints): name -> (F, 3, H, W) float32 in [0, 1]."""
    return {name: torch.stack([draw_skeleton(p, height, width) for p in sequence])
            for name, sequence in generic_keypoints(frames, height, width, body).items()}


# ---------------------------------------------------------------- the photo's body
# The keypoints the release fits a motion on (its dwpose/preprocess.py): all but the elbows and wrists, which move
FIT_KEYPOINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)


def fit_motion(motion, body, height, width, motion_aspect=ASPECT):
    """Driving poses (F, 18, 2) in fractions of their own frame (width / height = motion_aspect) -> the same poses
    moved and scaled onto the photo's body (18, 2) in fractions of the height x width frame, as the release does.

    Over the fit keypoints the body shows (FIT_KEYPOINTS), the driving y of every frame is mapped to the body's y by
    one least-squares line y' = a_y y + b_y; x is scaled so that a pixel stays square, a_x = a_y / ((1 /
    motion_aspect) * (width / height)) in fractions, and shifted by b_x = mean(x_body - a_x x) over the same points.
    Every keypoint moves with the same (a, b). ValueError if the body shows fewer than two fit keypoints at
    different heights."""
    body = np.asarray(body, dtype=np.float64)
    seen = check_fittable(body)
    y, y_body = motion[:, seen, 1].ravel(), np.tile(body[seen, 1], len(motion))  # (F * K,) each
    a_y = ((y - y.mean()) * (y_body - y_body.mean())).sum() / ((y - y.mean()) ** 2).sum()
    b_y = y_body.mean() - a_y * y.mean()
    a_x = a_y / ((1 / motion_aspect) * (width / height))
    b_x = (np.tile(body[seen, 0], len(motion)) - motion[:, seen, 0].ravel() * a_x).mean()
    return motion * (a_x, a_y) + (b_x, b_y)


def check_fittable(body):
    """The fit keypoints a body (18, 2) shows (FIT_KEYPOINTS, not NaN); a ValueError if fewer than two of them, or
    all at one height: no motion can be fitted to it."""
    seen = [i for i in FIT_KEYPOINTS if np.isfinite(body[i]).all()]
    if len(seen) < 2 or np.ptp(body[seen, 1]) == 0:
        raise ValueError("the body shows fewer than two of the keypoints a motion is fitted on (all but the elbows "
                         "and wrists) at different heights")
    return seen


def fitted_poses(frames, body, height, width):
    """name -> (F, 18, 2): frame 0 the photo's own pose `body` (18, 2) (NaN: not seen, not drawn), frames 1..F-1
    the generic motion's first F - 1 frames fitted to it (fit_motion), as the release builds a sequence from the
    photo's pose and a driving video of F - 1 frames."""
    body = np.asarray(body, dtype=np.float64)
    return {name: np.concatenate([body[None], fit_motion(sequence(frames - 1), body, height, width)])
            if frames > 1 else body[None] for name, sequence in SEQUENCES.items()}


def read_body(path, photo_size, size):
    """A JSON file of the photo's 18 body keypoints in KEYPOINTS' order, each [x, y] in the photo's pixels or null
    when not seen -> (18, 2) float64 in fractions of the model's frame, NaN where not seen: the photo of
    photo_size = (H0, W0) resized and centre-cropped to size = (H, W) as the release does (release_crop_box).
    A point may lie outside the photo by at most the photo's own size (a detector's points lie inside it), so that no
    number makes the drawing slow; the body must show enough to fit a motion on (check_fittable). Anything else is
    a one-line ValueError."""
    try:
        points = read_json(path, "body")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({one_line(e)})") from None
    if not isinstance(points, list) or len(points) != len(KEYPOINTS):
        raise ValueError(f"{path}: a JSON list of {len(KEYPOINTS)} keypoints ([x, y] or null) is expected")
    (h0, w0), (height, width) = photo_size, size
    body = np.full((len(KEYPOINTS), 2), np.nan)
    for i, point in enumerate(points):
        if point is None:
            continue
        numbers = isinstance(point, list) and all(type(v) in (int, float) for v in point)  # true and false are not
        if not numbers or len(point) != 2:
            raise ValueError(f"{path}: keypoint {i} ({KEYPOINTS[i]}) is {json.dumps(point)[:40]}, not [x, y] or null")
        if not all(-side <= v <= 2 * side for v, side in zip(point, (w0, h0))):  # nor are NaN and infinity
            raise ValueError(f"{path}: keypoint {i} ({KEYPOINTS[i]}) is {json.dumps(point)[:40]}: x and y must lie in "
                             f"the {w0}x{h0} photo, or outside it by less than its size")
        body[i] = point
    resized_height, resized_width, top, left = release_crop_box(h0, w0, height, width)
    body[:, 0] = (body[:, 0] * resized_width / w0 - left) / width
    body[:, 1] = (body[:, 1] * resized_height / h0 - top) / height
    check_fittable(body)
    return body


def release_crop_box(h0, w0, height, width):
    """(resized height, resized width, top, left): the release resizes a h0 x w0 photo to cover height x width with
    its aspect ratio kept, the side that fits rounded up, then crops the centre (its utils/pre_process.py; the
    offsets rounded half to even, as torchvision's centre crop rounds them)."""
    if (h0, w0) == (height, width):
        return height, width, 0, 0
    if h0 / w0 < height / width:
        resized = height, math.ceil(height / (h0 / w0))
    else:
        resized = math.ceil(width * (h0 / w0)), width
    return (*resized, round((resized[0] - height) / 2), round((resized[1] - width) / 2))


def read_poses(path, height, width, limit):
    """Pose frames -> (F, 3, H, W) float32 in [0, 1], each resized (bilinear) to height x width.

    path: a folder of frame images (.png, .jpg, .jpeg, .webp, in name order) or one image file (every
    frame of an animated GIF or WebP). Only the first limit + 1 frames are decoded, so a long sequence costs
    no more memory than a short one; F > limit tells the caller there are more. 16-bit frames are scaled
    to 8 bits as photos are. Anything unreadable is a one-line ValueError.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise ValueError(f"{path}: no .png, .jpg or .webp pose images in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{path}: no such pose file or folder")
    frames = []
    for file in files:
        if not file.is_file():  # a FIFO would block the read, a folder named *.png cannot be read
            raise ValueError(f"{file}: not a regular file")
        try:
            with Image.open(file) as im:
                for frame in itertools.islice(ImageSequence.Iterator(im), limit + 1 - len(frames)):
                    frames.append(np.asarray(to_8bit(frame).convert("RGB").resize((width, height), Image.BILINEAR)))
        except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise ValueError(f"{file}: not a readable image ({one_line(e)})") from None
        if len(frames) > limit:
            break
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
