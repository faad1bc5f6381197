"""The whole run's memory, estimated before loading (plumbing/memory.py): the estimate on the meta device equals the
peak the CPU allocator measures for the same run with the same tiny networks, within 10% of what the run holds beyond
its weights, for every model (SVD in both modes, the others in one each); no phase keeps what the one before it made
(a calibration draw its predecessor's graph, an iteration the last's); the mode is the lightest that fits in the free
memory, said in one line, and where none fits the run is refused in one line before any weights are read; --eot's
transformations rehearse, and a run that cannot be rehearsed takes the lighter mode."""
import bisect
import math

import pytest
import torch
import torch.profiler as tp

import attack
from attack import calibrate, protect, selected_terms
from pipelines import loader
from plumbing.flags import attack_args
from plumbing.memory import GiB, LiveBytes, gpu_attention, memory_mode, rehearsal, rehearse

PHOTO = "examples/astronaut.png"
SIZES = {"tiny": 64, "tiny-controlnext": 64, "tiny-cogvideox": 32, "tiny-wan": 64}


def flags(model, *more):
    args = attack_args("", ["--image", PHOTO, "--model", model, "--height", str(SIZES[model]), "--width",
                            str(SIZES[model]), "--steps", "2", *more])
    args.dtype = "float32"
    return args


WORKSPACE_KERNELS = ("aten::slow_conv3d_forward", "aten::slow_conv3d_backward", "aten::mkldnn_convolution")


def allocator_peak(work):
    """The peak bytes the CPU allocator holds while `work()` runs, from the profiler's record of every allocation
    and release (independent of the dispatch-level counting the estimate uses). What the CPU's convolutions allocate
    and release inside themselves (a kernel's own workspace, which the estimate leaves out: plumbing/memory.py) is
    not part of a peak; what they leave allocated is, at their end. The 3-D convolution's are its column buffers;
    oneDNN's 2-D one has buffers of its own (inside the JND's convolution of a strip of a 512x512 photo the
    allocator held 18.5 MB, where the run's tensors were at most 12.2 MB, for tiny CogVideoX)."""
    with tp.profile(activities=[tp.ProfilerActivity.CPU], profile_memory=True) as profile:
        work()
    events = profile.profiler.kineto_results.events()
    inside = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in events if e.name() in WORKSPACE_KERNELS)
    now = peak = 0
    for start, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        k = bisect.bisect_right(inside, (start, math.inf)) - 1  # the last kernel begun by then
        in_kernel = k >= 0 and start <= inside[k][1]
        peak = peak if in_kernel else max(peak, now)
        now += nbytes
        peak = peak if in_kernel else max(peak, now)
    return max(peak, now)


@pytest.mark.parametrize("model, modes", [("tiny", (False, True)), ("tiny-controlnext", (True,)),
                                          ("tiny-cogvideox", (False,)), ("tiny-wan", (True,))])
def test_estimate_equals_the_cpu_allocators_peak(model, modes):
    """The estimate attack.py makes before loading, against the same run on the CPU: loading, V_0, the calibration,
    two iterations and the video check, with and without --low-memory (each model in one mode at least, to keep the
    suite short); within 10% of what the run holds beyond its weights (stricter than 10% of the whole: the weights
    are up to 60% of a tiny model's run)."""
    args = flags(model)
    photo = (512, 512)  # examples/astronaut.png's
    run = rehearsal(protect, args, selected_terms(), photo)
    estimates, weights, _ = rehearse(loader(args), run, modes)
    for mode in modes:
        def whole_run():
            pipeline = loader(args)(torch.device("cpu"))
            pipeline.low_memory(mode)
            run(pipeline)
        measured = allocator_peak(whole_run)
        beyond_weights = measured - weights  # what the run holds beyond its weights: what the estimate may get wrong
        assert abs(estimates[mode] - measured) <= 0.1 * beyond_weights, (model, mode, estimates[mode], measured)


def test_no_phase_keeps_the_one_before():
    """Two calibration draws peak where one does, two iterations where one does: each frees its graph before the
    next begins (calibrate kept each draw's graph while the next was built: twice an iteration's memory)."""
    args = flags("tiny")
    pipeline = loader(args)(torch.device("meta"))
    I = torch.rand(1, 3, 64, 64).to("meta")
    objective = attack.Objective(pipeline, I, selected_terms(), num_frames=4, size=(64, 64), tau1=0.5, tau2=0.5,
                                 attn_blocks=pipeline.default_attn_blocks(), sample_steps=4, seed=0)
    factors = dict(img=0.0, enc=1.0, con=1.0, att=1.0)
    peaks = []
    for draws in (1, 2):
        with gpu_attention(), LiveBytes() as live:
            calibrate(objective, I.clone(), factors, draws=draws)
        peaks.append(live.peak)
    assert peaks[1] == pytest.approx(peaks[0], rel=0.01)
    peaks = []
    for steps in (1, 2):
        with gpu_attention(), LiveBytes() as live:
            protect(pipeline, I[0], steps=steps, size=(64, 64), num_frames=4, sample_steps=2)
        peaks.append(live.peak)
    assert peaks[1] == pytest.approx(peaks[0], rel=0.01)


def test_the_lightest_mode_that_fits(capsys):
    peaks = {False: 50 * GiB, True: 15 * GiB}
    assert memory_mode(peaks, 4 * GiB, 80 * GiB, 14) is False
    assert memory_mode(peaks, 4 * GiB, 23 * GiB, 14) is True
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "default mode" in lines[0] and "50.0 GiB" in lines[0] and "80.0 GiB free" in lines[0]
    assert "--low-memory" in lines[1] and "15.0 GiB" in lines[1] and "without it 50.0 GiB" in lines[1]
    with pytest.raises(SystemExit) as refused:
        memory_mode(peaks, 4 * GiB, 12 * GiB, 14)
    assert refused.value.code == 1
    line, = capsys.readouterr().err.splitlines()
    # (12 * 0.9 - 4) / (15 - 4) of the activations fit: 61%, about 8 of the 14 frames
    assert "15.0 GiB even with --low-memory" in line and "about 8)" in line and "--height" in line
    with pytest.raises(SystemExit):
        memory_mode(peaks, 4 * GiB, 4 * GiB, 14)
    assert "the weights alone do not fit" in capsys.readouterr().err


def test_a_run_that_cannot_fit_is_refused_before_loading(monkeypatch, tmp_path, capsys):
    """On a GPU with too little free memory attack.py says so in one line and reads no weights: every pipeline it
    built was on the meta device."""
    devices = []

    def rehearse(pipeline_on, run):  # the estimate itself is test_estimate_equals_the_cpu_allocators_peak's
        pipeline_on(torch.device("meta"))
        return {False: 3 * GiB, True: 2 * GiB}, GiB, 4
    real_loader = attack.loader
    monkeypatch.setattr(attack, "loader", lambda *a: lambda device: devices.append(device.type) or
                        real_loader(*a)(device))
    monkeypatch.setattr(attack, "rehearse", rehearse)
    monkeypatch.setattr(attack, "chooses_mode", lambda device, low_memory: low_memory is None)
    monkeypatch.setattr(attack, "free_memory", lambda device: GiB)
    out = tmp_path / "guarded.png"
    with pytest.raises(SystemExit) as refused:
        attack.main(["--image", PHOTO, "--model", "tiny", "--height", "64", "--width", "64", "--out", str(out)])
    assert refused.value.code == 1 and devices == ["meta"] and not list(tmp_path.iterdir())
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "2.0 GiB even with --low-memory" in errors[0]


def test_header_size_follows_the_exif_orientation(tmp_path):
    from PIL import Image
    from plumbing.photos import MIN_SIDE, ORIENTATION, largest, pixels
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # a quarter turn: a 40x30 image shown 30 wide and 40 high
    Image.new("RGB", (40, 30)).save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (50, 20)).save(tmp_path / "wide.png")
    assert pixels(tmp_path / "turned.jpg") == (40, 30)
    assert largest([tmp_path / "turned.jpg", tmp_path / "wide.png"]) == (40, 30)
    assert pixels(tmp_path / "missing.png") == (MIN_SIDE, MIN_SIDE)  # refused later, when its turn comes


@pytest.mark.parametrize("spec", ["jpeg75", "resize0.5", "down0.5", "long48", "crop0.8", "blur1", "noise0.05",
                                  "denoise1", "jpeg90+long48+noise0.02"])
def test_eot_transformations_rehearse_on_the_meta_device(spec):
    """--eot's exact pass is made from the photo's data on the CPU; rehearsed, it takes the approximation's shape,
    and the gradient still flows through the approximation."""
    from judging.transforms import differentiable, links, parse, smooth
    spec = parse(spec)
    I = torch.zeros(1, 3, 64, 80, device="meta", requires_grad=True)
    out = differentiable(spec, I, torch.Generator().manual_seed(0))
    expected = torch.zeros(1, 3, 64, 80, device="meta")
    for link in links(spec):
        expected = smooth(link, expected, torch.zeros(3, *expected.shape[-2:], device="meta"))
    assert out.device.type == "meta" and out.shape == expected.shape and out.requires_grad


def test_a_run_the_meta_device_cannot_rehearse_takes_the_lighter_mode(capsys):
    def pipeline_on(device):
        return loader(flags("tiny"))(device)

    def run(pipeline):
        torch.zeros(2, device="meta").cpu()  # no data to copy: the meta device cannot run this

    peaks, _, _ = rehearse(pipeline_on, run)
    assert peaks == {False: None, True: None}
    assert memory_mode(peaks, GiB, 80 * GiB, 14) is True
    assert "without an estimate" in capsys.readouterr().err.splitlines()[-1]


def test_a_pass_for_one_term_gives_that_terms_value_and_gradient():
    """--low-memory's calibration makes a pass per term (Objective(..., only=name)): the same value and gradient as
    the pass that computes every term."""
    args = flags("tiny-cogvideox")
    pipeline = loader(args)(torch.device("cpu"))
    pipeline.low_memory(True)
    I = torch.rand(1, 3, 40, 48)
    objective = attack.Objective(pipeline, I, selected_terms(), num_frames=pipeline.num_frames, size=(32, 32),
                                 tau1=0.5, tau2=0.5, attn_blocks=pipeline.default_attn_blocks(), sample_steps=4, seed=0)
    I_adv = (I + 0.01 * torch.randn_like(I)).clamp(0, 1).requires_grad_()
    draw = objective.draw(torch.Generator().manual_seed(3), 1)
    every = objective(I_adv, draw)
    for name in ("enc", "con", "att"):
        expected, = torch.autograd.grad(every[name], I_adv, retain_graph=True)
        alone = objective(I_adv, draw, only=name)
        assert sorted(alone) == sorted(["img", name])
        got, = torch.autograd.grad(alone[name], I_adv)
        assert alone[name].item() == every[name].item() and torch.equal(got, expected)
