"""How much device memory a run needs, found before it starts: the run rehearsed on the meta device, where every op
computes only shapes (seconds on a CPU, no weights read, no GPU), while LiveBytes counts every tensor storage from
its creation to its release. The estimate of a run is its weights plus the peak of the storages alive at once.

Where the meta device differs from a GPU, the GPU's behaviour is put in (gpu_attention): on meta,
scaled_dot_product_attention takes the math path, which keeps every attention matrix; a GPU (and a CPU) takes a
fused kernel, which keeps q, k, v, the output and the log-sum-exp. A value read back from the device (.item(),
a tensor's truth) reads 1 on meta: the rehearsal follows the run's shapes, not its numbers. What the estimate leaves
out: the CUDA context and the kernels' own workspaces, and the caching allocator's fragmentation (MARGIN).
"""
import sys
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from plumbing.cli import FAILURE, fail, one_line
from plumbing.flags import protect_settings
from weights import SKELETONS

GiB = 2**30
MARGIN = 0.1  # the share of the free memory kept for what the estimate leaves out
READ_BACK = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


def storage_key(t):
    return t.untyped_storage()._cdata


def like(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def grads(mask, *like_these):
    """The gradients a norm's backward returns: one shaped like each input its output_mask asks for, else None."""
    return tuple(like(t) if wanted and t is not None else None for wanted, t in zip(mask, like_these))


def norm_statistics(batch_shape):
    """A norm's mean and reciprocal standard deviation per normalised group."""
    return tuple(torch.empty(batch_shape, dtype=torch.float32, device="meta") for _ in range(2))


def elementwise(a, b, *args, **kwargs):
    return torch.empty(torch.broadcast_shapes(a.shape, getattr(b, "shape", ())), dtype=torch.result_type(a, b),
                       device="meta")


aten = torch.ops.aten
# Output shapes of the ops whose meta kernels are written in Python (decompositions into many small ops, a
# millisecond or more a call): the same outputs, found directly. Every other op runs its own meta kernel.
SHAPES = {
    aten.native_group_norm.default: lambda x, w, b, N, C, HxW, group, eps: (like(x), *norm_statistics((N, group))),
    aten.native_group_norm_backward.default: lambda dy, x, mean, rstd, w, N, C, HxW, group, mask: grads(mask, x, w, w),
    aten.native_layer_norm.default: lambda x, shape, w, b, eps: (
        like(x), *norm_statistics((*x.shape[:x.dim() - len(shape)], *[1] * len(shape)))),
    aten.native_layer_norm_backward.default: lambda dy, x, shape, mean, rstd, w, b, mask: grads(mask, x, w, b),
    aten.add.Tensor: elementwise, aten.sub.Tensor: elementwise, aten.mul.Tensor: elementwise,
    aten.gelu.default: lambda x, approximate="none": like(x),
    aten.gelu_backward.default: lambda dy, x, approximate="none": like(x),
    aten.addmm.default: lambda b, m1, m2, beta=1, alpha=1: torch.empty(m1.shape[0], m2.shape[1], dtype=m1.dtype,
                                                                       device="meta"),
}


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive, and their peak, over every op run under this mode (forward and backward).
    Storages made before it (the weights) or named in `ignore` are not counted. A meta tensor's value read back
    (.item(), bool()) is 1."""

    def __init__(self, ignore=()):
        super().__init__()
        self.live, self.now, self.peak, self.ignore = {}, 0, 0, set(ignore)

    def release(self, key):
        self.now -= self.live.pop(key)

    def track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "meta" or SKELETONS:  # the device's, not the host's
            return
        key = storage_key(t)
        if key in self.live or key in self.ignore:
            return
        storage = t.untyped_storage()
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self.release, key)

    def reset_peak(self):
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READ_BACK and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool or func is torch.ops.aten.is_nonzero.default else 1
        fast = SHAPES.get(func) if isinstance(args[0], torch.Tensor) and args[0].device.type == "meta" else None
        out = fast(*args, **(kwargs or {})) if fast else func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            self.track(t)
        return out


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """scaled_dot_product_attention as a GPU runs it: a fused kernel that keeps no attention matrix (its meta
    kernel gives the output's shape). With a mask (T5's position bias) the math path, as before."""
    if attn_mask is not None or q.device.type != "meta":
        return REAL_ATTENTION(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                              **kwargs)
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[0]


REAL_ATTENTION = F.scaled_dot_product_attention


@contextmanager
def gpu_attention():
    """Within it, attention on the meta device keeps what a fused kernel keeps (see the module docstring)."""
    F.scaled_dot_product_attention = fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = REAL_ATTENTION


def rehearsal(protect, args, terms, photo):
    """run(pipeline): the device work of protecting a photo of photo = (H0, W0) pixels with attack.py's flags `args`
    and attack.protect, cut to two iterations and two sampling steps (each frees what the one before made), then a
    video if the run makes them: what rehearse runs on the meta device."""
    def run(model):
        size = (args.height, args.width) if args.height else model.frame_size(photo)
        I = torch.rand(3, *photo, generator=torch.Generator().manual_seed(0)).to(model.device)  # (3, H0, W0)
        protect(model, I, mask=I[0] if args.mask else None,
                **protect_settings(args, terms, size) | dict(steps=2, sample_steps=min(args.sample_steps, 2)))
        if args.video_check or args.preview:
            with torch.no_grad():
                model.P(I[None], size=size, num_frames=args.frames or model.num_frames, steps=2, seed=0)
    return run


def rehearse(pipeline_on, run, modes=(False, True)):
    """The peak device memory in bytes of loading the pipeline, pipeline_on(device), and of run(pipeline), with
    --low-memory off and on (`modes`), estimated on the meta device: ({False: bytes, True: bytes}, the weights'
    bytes, the pipeline's own number of frames). A mode whose rehearsal fails (an op with no meta kernel) is None,
    said in one line."""
    with gpu_attention(), LiveBytes() as live:
        pipeline = pipeline_on(torch.device("meta"))  # shapes only: no weights read
        loading, weights, peaks = live.peak, live.now, {}
        for mode in modes:
            pipeline.low_memory(mode)
            live.reset_peak()
            try:
                run(pipeline)
                peaks[mode] = max(loading, live.peak)
            except (NotImplementedError, RuntimeError) as e:  # an op the meta device cannot run: no estimate
                peaks[mode] = None
                print(f"memory: the run cannot be rehearsed on the meta device ({one_line(e)})", file=sys.stderr)
    return peaks, weights, pipeline.num_frames


def chooses_mode(device, low_memory):
    """Whether a run on `device` with --low-memory's value `low_memory` (None: not given) picks its mode itself."""
    return device.type == "cuda" and low_memory is None


def free_memory(device):
    """Bytes free on a CUDA device now."""
    return torch.cuda.mem_get_info(device)[0]


def fitting(peaks, free):
    """The modes, lightest first, whose estimated peak fits in (1 - MARGIN) of the `free` bytes."""
    return [mode for mode in (False, True) if peaks[mode] <= free * (1 - MARGIN)]


def memory_mode(peaks, weights, free, frames):
    """--low-memory's value: the lightest mode whose estimated peak (rehearse) fits in (1 - MARGIN) of the `free`
    bytes, said in one line; where none fits, a refusal in one line with what would (fewer frames, fewer pixels:
    the activations taken to grow in proportion to them)."""
    if None in peaks.values():
        print("memory: --low-memory (activations recomputed in the backward pass), the lighter mode, without an "
              "estimate", file=sys.stderr)
        return True
    room = free * (1 - MARGIN)
    fits = fitting(peaks, free)
    what = {False: "default mode", True: "--low-memory (activations recomputed in the backward pass)"}
    if fits:
        other = f"without it {peaks[False] / GiB:.1f} GiB" if fits[0] else f"with --low-memory {peaks[True] / GiB:.1f}"
        print(f"memory: {what[fits[0]]}: the whole run estimated at {peaks[fits[0]] / GiB:.1f} GiB ({other}), "
              f"{free / GiB:.1f} GiB free on the GPU", file=sys.stderr)
        return fits[0]
    share = (room - weights) / (peaks[True] - weights)
    hint = "the weights alone do not fit" if share <= 0 else (
        f"about {share:.0%} of the activations would: fewer frames (--frames, about {max(1, int(frames * share))})"
        " or a smaller --height and --width")
    fail(f"the whole run needs about {peaks[True] / GiB:.1f} GiB even with --low-memory, {free / GiB:.1f} GiB are free "
         f"on the GPU: {hint}", status=FAILURE)
