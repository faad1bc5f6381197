"""The pipelines' differentiable resizes of a photo of any size, as two matrix products. Each resize is separable, one
1-D map along the columns and one along the rows, so resize(I) = R_h I R_w^T with R_h (h, H0) and R_w (w, W0) those
maps written as matrices. The numbers are the maps' own (F.interpolate, the Gaussian blur); the cost is not: a
12-megapixel photo blurred for CLIP with a 33-tap kernel the direct way holds a (3, H0, W0, 33) tensor and its
gradient, gigabytes and seconds per step. The matrices are banded (an output sample reads a few dozen inputs), and
each product reads only the band of each block of rows (BandedProduct).

    small = separable(I, bicubic_matrix(H0, 64), bicubic_matrix(W0, 64))   # (N, C, 64, 64), F.interpolate's numbers
"""
from functools import lru_cache

import torch
import torch.nn.functional as F


def blur_last_axis(x, sigma):
    """Gaussian blur along the last axis of (N,C,H,W): kernel int(max(4 sigma, 3)) taps made odd, reflect padding."""
    taps = int(max(4 * sigma, 3)) | 1  # odd
    t = torch.arange(taps, dtype=x.dtype, device=x.device) - taps // 2
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    x = F.pad(x, (taps // 2, taps // 2, 0, 0), mode="reflect")
    return x.unfold(-1, taps, 1) @ (kernel / kernel.sum())  # (N, C, H, W, taps) -> (N, C, H, W)


def clip_sigma(n, m):
    """The blur's sigma before resizing n samples to m for CLIP: max((factor - 1) / 2, 0.001), skimage's rule."""
    return max((n / m - 1) / 2, 0.001)


def jacobian(row_map, n, m):
    """(m, n) float64: the matrix of a linear map acting on the last axis, n samples to m: the images of the n unit
    vectors where n <= m (one call on an identity), else the gradient of each output (m backward passes)."""
    if n <= m:
        return row_map(torch.eye(n, dtype=torch.float64)[None, None])[0, 0].T
    v = torch.zeros(1, 1, 1, n, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        out = row_map(v).flatten()
        rows = [torch.autograd.grad(out[k], v, retain_graph=k < len(out) - 1)[0].flatten() for k in range(len(out))]
    return torch.stack(rows)


@lru_cache(maxsize=64)  # one photo size gives the same matrices at every attack step
def bicubic_matrix(n, m):
    """(m, n): F.interpolate's bicubic resize with antialiasing (align_corners False) of n samples to m."""
    return jacobian(lambda v: F.interpolate(v, size=(v.shape[-2], m), mode="bicubic", antialias=True,
                                            align_corners=False), n, m)


@lru_cache(maxsize=64)
def bicubic_rows(n, m, start, count):
    """Rows start ... start + count - 1 of bicubic_matrix(n, m): what a crop keeps of the resize."""
    return bicubic_matrix(n, m)[start:start + count].clone()


@lru_cache(maxsize=64)
def clip_matrix(n, m):
    """(m, n): SVD's resize for CLIP of n samples to m: the Gaussian blur of clip_sigma, then bicubic with
    align_corners True and no antialiasing."""
    return jacobian(lambda v: F.interpolate(blur_last_axis(v, clip_sigma(n, m)), size=(v.shape[-2], m),
                                            mode="bicubic", align_corners=True), n, m)


@lru_cache(maxsize=64)
def interpolation_matrix(n, m, mode):
    """(m, n): F.interpolate's `mode` resize (align_corners False, no antialiasing) of n samples to m."""
    return jacobian(lambda v: F.interpolate(v, size=(v.shape[-2], m), mode=mode, align_corners=False), n, m)


@lru_cache(maxsize=64)
def interpolation_rows(n, m, start, count, mode):
    """Rows start ... start + count - 1 of interpolation_matrix(n, m, mode): what a crop keeps of the resize."""
    return interpolation_matrix(n, m, mode)[start:start + count].clone()


@lru_cache(maxsize=64)
def placed_matrix(n, m, offset, total, mode):
    """(total, n): interpolation_matrix(n, m, mode) placed at offset ... offset + m - 1 of `total` samples, zero
    elsewhere: a working grid spread over the part of a photo a model sees."""
    placed = torch.zeros(total, n, dtype=torch.float64)
    placed[offset:offset + m] = interpolation_matrix(n, m, mode)
    return placed


@lru_cache(maxsize=128)
def reach(matrix):
    """(first, last) nonzero column of each row of a (m, n) matrix; (n, -1) for a row of zeros."""
    nonzero = matrix != 0
    first = torch.where(nonzero.any(1), nonzero.byte().argmax(1), matrix.shape[1])
    last = torch.where(nonzero.any(1), matrix.shape[1] - 1 - nonzero.flip(1).byte().argmax(1), -1)
    return first, last


def spans(first, last):
    """Each row's (first input, end input) from reach(), or None for a row of zeros (it reads nothing)."""
    return [(int(a), int(b) + 1) if b >= 0 else None for a, b in zip(first, last)]


@lru_cache(maxsize=128)
def bands(matrix):
    """[(rows, first input, end input)]: a (m, n) matrix's rows in consecutive blocks, each with the inputs it reads;
    a block grows while what it reads stays within twice the widest row's reach, so that little of each product
    multiplies zeros."""
    return blocks(spans(*reach(matrix)))


def blocks(reach):
    """bands() of the rows whose reaches are `reach`: each (first input, end input), or None for a row of zeros."""
    widest = max((end - first for first, end in filter(None, reach)), default=0)
    found, start, band = [], 0, None  # band: (first, end) of what the block so far reads
    for k, row in enumerate(reach):
        joined = row if band is None else band if row is None else (min(band[0], row[0]), max(band[1], row[1]))
        if band is not None and joined[1] - joined[0] > 2 * widest:  # the block would read too much: close it
            found.append((slice(start, k), *band))
            start, joined = k, row
        band = joined
    found.append((slice(start, len(reach)), *(band or (0, 0))))
    return found


@lru_cache(maxsize=128)
def cast(matrix, dtype, device):
    """The matrix in this dtype on this device, made once."""
    return matrix.to(dtype=dtype, device=device)


@lru_cache(maxsize=128)
def transposed(matrix):
    """matrix^T, made once: the gradient's product."""
    return matrix.T.contiguous()


def banded(matrix, x):
    """matrix (m, n) (float64, on the CPU, where its bands are found) @ x (..., n, k) -> (..., m, k) in x's dtype on
    its device, each block of the matrix's rows (bands) multiplied with the rows of x it reads only: contiguous
    slices of x, each product written in its place in the output."""
    return product(cast(matrix, x.dtype, x.device), bands(matrix), x)


def product(on_x, blocks, x):
    """on_x (m, n) @ x (..., n, k) -> (..., m, k), by the blocks of rows of `bands`. Each block's product is made,
    then copied into place: a product written into a strided slice makes its own copy where no one counts it
    (plumbing/memory.py)."""
    out = x.new_empty(*x.shape[:-2], on_x.shape[0], x.shape[-1])  # (..., m, k)
    for rows, a, b in blocks:
        out[..., rows, :] = on_x[rows, a:b] @ x[..., a:b, :]
    return out


class BandedProduct(torch.autograd.Function):
    """banded(matrix, x), its gradient banded(matrix^T, grad): written once, no zeros filled and added to."""

    @staticmethod
    def forward(ctx, matrix, x):
        ctx.matrix = matrix  # the cached tensor itself (a constant): its bands are cached by identity
        return banded(matrix, x)

    @staticmethod
    def backward(ctx, grad):
        return None, banded(transposed(ctx.matrix), grad)


def left(matrix, x):
    """matrix (m, n) @ x (..., n, k), differentiable in x."""
    return BandedProduct.apply(matrix, x)


def separable(x, rows, columns):
    """(N,C,H0,W0) -> (N,C,h,w): rows (h, H0) applied along the height and columns (w, W0) along the width, in x's
    dtype; a guarded photo made lazily (pipelines/guarded.py) resizes itself. The height first, whose bands are whole
    rows of x in memory; the width then by bands of the (small) transposed result where it shrinks, as one product
    where it grows (an upsampling, whose output is then laid out as the photo is)."""
    if not torch.is_tensor(x):
        return x.resized(rows, columns)
    x = left(rows, x)  # (N, C, h, W0)
    if columns.shape[0] > columns.shape[1]:
        return x @ cast(transposed(columns), x.dtype, x.device)  # (N, C, h, w)
    return left(columns, x.transpose(-1, -2)).transpose(-1, -2)  # (N, C, h, w)


def upsampled_onto(x, photo, box, mode):
    """(N,C,g_h,g_w) -> (N,C,*photo): x resized with `mode` onto box = (top, left, height, width) of a photo, zero
    elsewhere (a working grid spread over the part of the photo a model sees)."""
    top, left, height, width = box
    return separable(x, placed_matrix(x.shape[-2], height, top, photo[0], mode),
                     placed_matrix(x.shape[-1], width, left, photo[1], mode))
