"""Draw the pose sequences attack.py assumes for ControlNeXt-SVD-v2 (--model controlnext): the generic motions of
pipelines/poses.py, side by side in one animated GIF or WebP. With --body, each starts from the photo's own pose
and is fitted to its body as the release fits its driving poses; without, they are centred and start neutral.

example: python poses.py --body examples/astronaut_body.json --image examples/astronaut.png --out poses.gif
"""
if __name__ == "__main__":  # Ctrl-C or SIGTERM while the modules below import: one line
    from plumbing.starting import quiet_start
    quiet_start()

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, features

from pipelines.controlnext import WINDOW
from pipelines.poses import generic_keypoints, read_body, skeleton_image
from plumbing.cli import (MAX_FRAMES, MAX_SIDE, Parser, check_writable, command, fail, integer, model_size, path,
                          refuse_clashes, write_files)
from plumbing.files import inputs_of
from plumbing.photos import read_photo, video_bytes

VIDEO_FORMATS = {".gif": "GIF", ".webp": "WEBP"}


def flags():
    p = Parser(description=__doc__)
    p.add_argument("--out", type=path, required=True, help="the sequences side by side, .gif or .webp")
    p.add_argument("--body", type=path, metavar="JSON",
                   help="the photo's 18 OpenPose body keypoints, a JSON list of [x, y] in "
                   "the photo's pixels (null: not seen); default: none, the motions centred")
    p.add_argument("--image", type=path,
                   help="the photo --body's pixels belong to: the release resizes and centre-crops it to "
                   "the frame (default: --body is in pixels of the height x width frame)")
    p.add_argument("--height", type=integer(8, MAX_SIDE), help="frame height, a multiple of 8 (default: 1024, "
                   "ControlNeXt's portrait frame)")
    p.add_argument("--width", type=integer(8, MAX_SIDE), help="frame width, a multiple of 8 (default: 576)")
    p.add_argument("--frames", type=integer(1, MAX_FRAMES), default=WINDOW, help="frames per sequence")
    p.add_argument("--fps", type=integer(1, 1000), default=7, help="playback frame rate")
    return p


def side_by_side(frames, names):
    """Frames (H, W, 3) uint8, one per sequence -> one PIL image, each frame labelled with its sequence's name."""
    im = Image.fromarray(np.concatenate(frames, axis=1))  # (H, K*W, 3)
    draw = ImageDraw.Draw(im)
    for k, name in enumerate(names):
        draw.text((k * frames[0].shape[1] + 3, 2), name, fill="white")
    return im


@command
def main(argv=None):
    args = flags().parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_FORMATS:
        fail(f"--out must be a file ending in .gif or .webp, got {out}")
    if out.suffix.lower() == ".webp" and not features.check("webp"):
        fail("this Pillow cannot write WebP; use .gif")
    if args.image and not args.body:
        fail("--image only says whose pixels --body is in: give --body too")
    check_writable(out.parent)
    if out.exists() and not out.is_file():
        fail(f"--out {out} is there and is not a file")
    refuse_clashes([(args.body, out)], inputs_of(args))
    size = model_size(args.height, args.width, "controlnext")
    body = None
    if args.body:
        try:
            photo_size = read_photo(args.image)[0].shape[-2:] if args.image else size
        except ValueError as e:
            fail(f"--image {args.image}: {e}")
        try:
            body = read_body(args.body, photo_size, size)
        except ValueError as e:
            fail(f"--body: {e}")
    sequences = generic_keypoints(args.frames, *size, body)
    images = [side_by_side([skeleton_image(keypoints[t], *size) for keypoints in sequences.values()], sequences)
              for t in range(args.frames)]
    write_files({out: video_bytes(images, args.fps, VIDEO_FORMATS[out.suffix.lower()])})
    fitted = "fitted to the body in " + args.body if body is not None else "centred, not fitted to a body"
    print(f"wrote {out}: {', '.join(sequences)} side by side, {args.frames} frames of {size[0]}x{size[1]}, {fitted}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
