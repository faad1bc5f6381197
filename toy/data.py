"""Short image-to-video clips made on the fly, for training the toy SVD.

Frame 0 is a still; the frames after it are what happens next: the camera pans, zooms or rotates
over the scene, and a subject (a cut-out of another picture with a soft, blob-shaped edge) moves
across it in a straight line. Speeds and directions are drawn per clip, so the model has to guess
the motion from the still, as SVD does. Scenes are crops of the training photos in toy/photos/ or
procedural pictures (smooth colour fields with shapes); the photos in examples/ are never used.

Clips are rendered at twice the model's resolution and shrunk with an antialiased resize, so that
frame 0 at full size can feed the CLIP path as a photo larger than the model's input would.
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PHOTOS = Path(__file__).parent / "photos"
MAX_SPEED = 3.0  # pixels per frame at the model's resolution, for the camera pan and the subject


def load_photos(folder=PHOTOS):
    """Every JPEG/PNG in folder -> list of (3,H,W) float32 in [0,1]."""
    photos = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as im:
                photos.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1))
    return photos


def procedural_picture(size, g):
    """A smooth random colour field with a few discs and boxes on it: (3,size,size) in [0,1]."""
    coarse = torch.rand(3, 3, 3, generator=g)
    x = F.interpolate(coarse[None], size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for _ in range(int(torch.randint(2, 7, (), generator=g))):
        colour = torch.rand(3, 1, 1, generator=g)
        cy, cx, r = torch.rand(3, generator=g).tolist()
        r = 0.05 + 0.2 * r
        if torch.rand((), generator=g) < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            inside = ((yy - cy).abs() < r) & ((xx - cx).abs() < r * 1.5)
        x = torch.where(inside, colour, x)
    return x


def blob_mask(size, g):
    """A soft-edged blob (union of 1-3 ellipses) filling most of a (size,size) square: (1,size,size) in [0,1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = torch.full((size, size), -1.0)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        cy, cx = (torch.rand(2, generator=g) * 0.6 - 0.3).tolist()
        ry, rx = (0.4 + 0.5 * torch.rand(2, generator=g)).tolist()
        inside = torch.maximum(inside, 1 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2)
    return (inside * 6).clamp(0, 1)[None]


class ClipMaker:
    """Draws clips: `make(batch, g)` -> (frames (B,F,3,size,size) in [-1,1], first frame at 2x size
    (B,3,2size,2size) in [-1,1], motion (B,) in pixels per frame)."""

    def __init__(self, photos, size=64, num_frames=8, photo_share=0.7):
        self.photos, self.size, self.num_frames, self.photo_share = photos, size, num_frames, photo_share

    def picture(self, g, size):
        """A square scene: a random crop of a training photo (flipped at random) or a procedural picture."""
        if self.photos and torch.rand((), generator=g) < self.photo_share:
            photo = self.photos[int(torch.randint(len(self.photos), (), generator=g))]
            h, w = photo.shape[-2:]
            side = int(min(h, w) * (0.35 + 0.65 * torch.rand((), generator=g).item()))
            top = int(torch.randint(h - side + 1, (), generator=g))
            left = int(torch.randint(w - side + 1, (), generator=g))
            crop = photo[:, top:top + side, left:left + side]
            if torch.rand((), generator=g) < 0.5:
                crop = crop.flip(-1)
            if torch.rand((), generator=g) < 0.3:  # recolour, so grey photos also give colour scenes
                crop = (crop * (0.5 + torch.rand(3, 1, 1, generator=g))).clamp(0, 1)
            return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        return procedural_picture(size, g)

    def camera(self, g):
        """Per-frame affine maps (F,2,3) from output to scene coordinates (normalised to [-1,1]): a pan,
        a zoom, a rotation, or a mix, from a random crop window of the scene; and the mean speed in pixels."""
        f = torch.arange(self.num_frames, dtype=torch.float32)
        kind = int(torch.randint(5, (), generator=g))  # 0 still, 1 pan, 2 zoom, 3 rotation, 4 pan and zoom
        u = torch.rand(4, generator=g)
        speed = MAX_SPEED * u[0].item()  # pixels per frame at the output resolution
        angle = 2 * math.pi * u[1].item()
        half = 0.55 + 0.25 * u[2].item()  # half-size of the crop window, in scene units
        pan = torch.tensor([math.cos(angle), math.sin(angle)]) * speed * (2 / self.size) * half * (kind in (1, 4))
        zoom = (1 + (0.04 * speed / MAX_SPEED) * (1 if u[3] < 0.5 else -1)) if kind in (2, 4) else 1.0
        spin = (0.05 * speed / MAX_SPEED) * (1 if u[3] < 0.5 else -1) if kind == 3 else 0.0
        centre = (torch.rand(2, generator=g) * 2 - 1) * (1 - half) * 0.5
        scale = half * zoom ** -f  # zooming in: the window shrinks
        cos, sin = torch.cos(spin * f), torch.sin(spin * f)
        theta = torch.stack([torch.stack([scale * cos, -scale * sin, centre[0] + pan[0] * f], -1),
                             torch.stack([scale * sin, scale * cos, centre[1] + pan[1] * f], -1)], 1)
        # mean displacement of a pixel per frame, in output pixels
        motion = {0: 0.0, 1: speed, 2: abs(zoom - 1) * self.size / 4, 3: abs(spin) * self.size / 3,
                  4: speed + abs(zoom - 1) * self.size / 4}[kind]
        return theta, motion

    def subject(self, g, size):
        """A cut-out (RGBA, side 1/4 to 1/2 of the frame) and its straight path: (4,s,s), start (2,), velocity (2,) in
        output pixels of the rendering size."""
        side = int(size * (0.25 + 0.25 * torch.rand((), generator=g).item()))
        rgba = torch.cat([self.picture(g, side), blob_mask(side, g)])
        start = torch.rand(2, generator=g) * size
        angle = 2 * math.pi * torch.rand((), generator=g).item()
        speed = MAX_SPEED * (0.3 + 0.7 * torch.rand((), generator=g).item()) * size / self.size
        return rgba, start, torch.tensor([math.cos(angle), math.sin(angle)]) * speed

    def clip(self, g):
        big = 2 * self.size
        scene = self.picture(g, 2 * big)  # scene larger than the view, so a moving camera stays inside it
        theta, motion = self.camera(g)
        grid = F.affine_grid(theta, (self.num_frames, 3, big, big), align_corners=False)
        frames = F.grid_sample(scene[None].expand(self.num_frames, -1, -1, -1), grid, mode="bilinear",
                               padding_mode="reflection", align_corners=False)  # (F, 3, big, big)
        if torch.rand((), generator=g) < 0.6:
            rgba, start, velocity = self.subject(g, big)
            side = rgba.shape[-1]
            f = torch.arange(self.num_frames, dtype=torch.float32)[:, None]
            centre = start + velocity * f  # (F, 2) in pixels (x, y)
            # output pixel p maps to sprite coordinates (p - centre) / (side / 2), normalised
            theta_s = torch.zeros(self.num_frames, 2, 3)
            theta_s[:, 0, 0] = theta_s[:, 1, 1] = big / side
            theta_s[:, :, 2] = (big / 2 - centre) / (side / 2)
            sprite = F.grid_sample(rgba[None].expand(self.num_frames, -1, -1, -1),
                                   F.affine_grid(theta_s, (self.num_frames, 4, big, big), align_corners=False),
                                   mode="bilinear", padding_mode="zeros", align_corners=False)
            a = sprite[:, 3:]
            frames = frames * (1 - a) + sprite[:, :3] * a
            area = a[0].mean().item()
            motion += velocity.norm().item() * self.size / big * min(1.0, 4 * area)
        small = F.interpolate(frames, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        return small.clamp(0, 1) * 2 - 1, frames[0].clamp(0, 1) * 2 - 1, motion

    def make(self, batch, g):
        clips = [self.clip(g) for _ in range(batch)]
        frames, first, motion = zip(*clips)
        return torch.stack(frames), torch.stack(first), torch.tensor(motion)


def motion_bucket(motion):
    """Pixels per frame -> SVD's motion_bucket_id in 0..255, 255 sqrt(motion / MAX_SPEED): the median
    training clip (0.75 pixels per frame) lands near the pipeline's default of 127."""
    return (255 * (motion / MAX_SPEED).clamp(0, 1).sqrt()).round()
