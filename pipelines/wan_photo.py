"""The photo as Wan2.2-TI2V-5B's release prepares it (wan/textimage2video.py, i2v): a frame of the photo's own shape,
best_output_size's (wan/utils/utils.py), the photo resized with its aspect kept to cover it (Lanczos) and
centre-cropped; and the same, differentiably, for the attack.

    width, height = best_output_size(4032, 3024, 32, 32, AREA)   # a 4:3 phone photo -> 1088x800 (width x height)
    image = release_input(rgb8, (height, width))                 # (3, 800, 1088) in [-1, 1]
"""
from PIL import Image

from pipelines.resize import bicubic_rows, separable
from plumbing.photos import to_model_image

AREA = 704 * 1280  # the release's max_area: the frame's pixels, whatever the photo's shape
TINY_AREA = 96 * 128  # the tiny networks' frame area: a 3:4 photo makes a 96x128 portrait video


def best_output_size(w, h, dw, dh, expected_area):
    """(width, height) of the release's frame for a w x h photo (wan/utils/utils.py best_output_size): multiples of
    dw and dh of area at most expected_area whose aspect is closest to the photo's, trying the width rounded down
    first, then the height."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)  # the width first
    oh1 = int(expected_area / ow1 // dh * dh)
    oh2 = int(oh // dh * dh)  # the height first
    ow2 = int(expected_area / oh2 // dw * dw)
    if max(ratio / (ow1 / oh1), ow1 / oh1 / ratio) < max(ratio / (ow2 / oh2), ow2 / oh2 / ratio):
        return ow1, oh1
    return ow2, oh2


def crop_box(h0, w0, size):
    """(resized height, resized width, top, left): the release resizes an h0 x w0 photo with its aspect kept to cover
    size = (H, W) (each side times max(W / w0, H / h0), rounded) and crops the centre (offsets rounded down)."""
    scale = max(size[1] / w0, size[0] / h0)
    height, width = round(h0 * scale), round(w0 * scale)
    return height, width, (height - size[0]) // 2, (width - size[1]) // 2


def release_input(rgb8, size):
    """(3,H0,W0) uint8 -> (3,H,W) in [-1,1]: the photo resized with Lanczos on 8-bit levels and centre-cropped
    (crop_box), as the release prepares it."""
    height, width, top, left = crop_box(*rgb8.shape[-2:], size)
    im = Image.fromarray(rgb8.permute(1, 2, 0).numpy())
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS)
    return to_model_image(im.crop((left, top, left + size[1], top + size[0])))


def release_crop(I, size):
    """Photo (N,3,H0,W0) in [0,1] -> (N,3,H,W) in [-1,1], resized and cropped as release_input, differentiably: bicubic
    with antialiasing stands in for Lanczos (as pipelines/svd.py's to_model_input)."""
    height, width, top, left = crop_box(*I.shape[-2:], size)
    if (height, width) == tuple(I.shape[-2:]):
        return I[..., top:top + size[0], left:left + size[1]] * 2 - 1
    # the kept rows and columns of the resize (pipelines/resize.py): what is cropped away is never computed
    rows, columns = bicubic_rows(I.shape[-2], height, top, size[0]), bicubic_rows(I.shape[-1], width, left, size[1])
    return separable(I, rows, columns) * 2 - 1
