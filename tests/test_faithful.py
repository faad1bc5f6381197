"""What runs is what the paper and the reference pipeline say: the source pass sees the attacked pass's
conditioning, the term weights do not hinge on one random draw, evaluation videos are decoded as the
pipeline decodes them, the random baseline copies i2vguard's perturbation statistics, and VBench's
resize is reproduced on float frames."""
from pathlib import Path
import math
import subprocess
import sys

import pytest
import torch

import attack
import evaluate
from attack import TERMS, Objective, calibrate
from judging import metrics
from pipelines.svd import SVDPipeline, generate, load_model
from plumbing.photos import read_photo
from weights import TOY_MODEL, tiny_svd

EXAMPLES = TOY_MODEL.parents[1] / "examples"

SIZE, FRAMES, SAMPLE_STEPS = (64, 64), 3, 4


def make_photo():
    g = torch.Generator().manual_seed(5)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(64, 64), mode="bilinear")
    return (smooth[0] + 0.05 * torch.rand(3, 64, 64, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def photo():
    return make_photo()


def objective(svd, I_src, terms=TERMS, V_0=None):
    model = SVDPipeline(svd)
    return Objective(model, I_src[None], terms, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                     attn_blocks=model.default_attn_blocks(), sample_steps=SAMPLE_STEPS, seed=0, V_0=V_0)


def test_attention_distance_and_gradient_vanish_at_the_source(photo):
    svd = tiny_svd(0, dtype=torch.float64)
    I_src = photo.double()
    obj = objective(svd, I_src, ("img", "enc", "att"))
    g = torch.Generator().manual_seed(7)
    for step in range(SAMPLE_STEPS):  # every noise level, each with its own augmentation and X_t noise
        I_adv = I_src[None].clone().requires_grad_()
        values = obj(I_adv, obj.draw(g, step))
        distance = obj.tau2 - values["att"]  # L_att = tau2 - ||A_adv - A_src||^2
        grad, = torch.autograd.grad(distance, I_adv)
        assert distance.item() == 0 and grad.abs().max().item() == 0


def test_encoder_target_shares_the_augmentation_draw():
    """At I_adv = I_tg (black) L_enc is exactly zero: the target is encoded through the same noise."""
    svd = tiny_svd(0, dtype=torch.float64)
    black = torch.zeros(3, 64, 64, dtype=torch.float64)
    obj = objective(svd, black, ("img", "enc"))
    values = obj(black[None], obj.draw(torch.Generator().manual_seed(3), 0))
    assert values["enc"].item() == 0


def calibrated_ratios(svd, photo, seed, eps=8 / 255, V_0=None):
    g = torch.Generator().manual_seed(seed)
    start = (photo + eps * (torch.rand(photo.shape, generator=g) * 2 - 1)).clamp(0, 1)[None]
    weights, _ = calibrate(objective(svd, photo, V_0=V_0), start, {"img": 0.0, "enc": 1.0, "con": 1.0, "att": 1.0})
    return weights["con"] / weights["enc"], weights["att"] / weights["enc"]


def test_calibration_is_each_terms_mean_gradient_over_the_schedule(photo):
    """The weights of Eq. 4 written out: factor / mean |dL_k / dI_adv| over one draw from the middle of each of
    5 equal strata of the schedule (here 4 noise levels: each once), the draws seeded by CALIBRATION_SEED."""
    obj = objective(tiny_svd(0), photo)
    start = (photo + 4 / 255 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(2)).sign())[None]
    factors = {"img": 0.5, "enc": 1.0, "con": 2.0, "att": 3.0}
    weights, record = calibrate(obj, start.clamp(0, 1), factors)
    g, I = torch.Generator().manual_seed(attack.CALIBRATION_SEED), start.clamp(0, 1).requires_grad_()
    mean_abs = {name: 0.0 for name in factors}
    for step in range(SAMPLE_STEPS):
        values = obj(I, obj.draw(g, step))
        for name in factors:
            grad, = torch.autograd.grad(values[name], I, retain_graph=True)
            mean_abs[name] += grad.abs().mean().item() / SAMPLE_STEPS
    assert record["sigmas"] == list(obj.sigmas)
    for name, factor in factors.items():
        assert record["mean_abs_grad"][name] == pytest.approx(mean_abs[name], rel=1e-6)
        assert weights[name] == pytest.approx(factor / mean_abs[name], rel=1e-6)
    long = Objective(obj.model, photo[None], ("img", "enc"), num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                     attn_blocks=(), sample_steps=25, seed=0)
    _, record = calibrate(long, start.clamp(0, 1), {"img": 0.0, "enc": 1.0})
    assert record["sigmas"] == [long.sigmas[k] for k in (2, 7, 12, 17, 22)]  # the middles of 5 strata of 25


def test_calibrated_weights_agree_over_seeds():
    """On the trained toy (the random tiny network's own L_con gradient swings ninefold between random
    starts, so it cannot tell a calibration's stability): one objective, the random starts of seeds 0-3."""
    toy = load_model("toy", torch.device("cpu"), torch.float32)
    rgb8, _, _ = read_photo(EXAMPLES / "chelsea.png")
    photo = rgb8.float() / 255
    toy = SVDPipeline(toy)
    obj = Objective(toy, photo[None], TERMS, num_frames=8, size=(64, 64), tau1=0.5, tau2=0.5,
                    attn_blocks=toy.default_attn_blocks(), sample_steps=25, seed=0)
    ratios = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        start = (photo + 8 / 255 * (torch.rand(photo.shape, generator=g) * 2 - 1)).clamp(0, 1)[None]
        weights, _ = calibrate(obj, start, {"img": 0.0, "enc": 1.0, "con": 1.0, "att": 1.0})
        ratios.append((weights["con"] / weights["enc"], weights["att"] / weights["enc"]))
    print("\nbeta'/alpha', gamma'/alpha' over seeds 0-3:", [(f"{b:.4g}", f"{c:.4g}") for b, c in ratios])
    for k in range(2):
        values = [r[k] for r in ratios]
        assert max(values) / min(values) < 2


def test_calibrated_weights_do_not_depend_on_the_thread_count(photo):
    """In float64, with V_0 given: the random tiny network amplifies float32 rounding (its L_con gradient
    moves by up to 30% between float32 and float64 at the schedule's ends), and sampling it is chaotic,
    so V_0 itself changes with the thread count; the calibration must not add to either."""
    code = ("import sys, torch; sys.path.insert(0, 'tests'); torch.set_num_threads(int(sys.argv[1])); "
            "from test_faithful import calibrated_ratios, make_photo; from weights import tiny_svd; "
            "V_0 = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1; "
            "print(*calibrated_ratios(tiny_svd(0, dtype=torch.float64), make_photo().double(), 0, V_0=V_0))")
    root = Path(attack.__file__).parent
    outputs = [subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(n)], cwd=root, capture_output=True,
                              text=True, check=True).stdout.split() for n in (1, 2)]
    assert len(outputs[0]) == 2
    for one, two in zip(*outputs):
        assert math.isclose(float(one), float(two), rel_tol=1e-9)


def test_protect_records_the_calibration(photo):
    svd = tiny_svd(0)
    _, history = attack.protect(SVDPipeline(svd), photo, steps=1, size=SIZE, num_frames=FRAMES, sample_steps=SAMPLE_STEPS,
                                fidelity=1.0)
    calibration = history["calibration"]
    assert len(calibration["sigmas"]) == min(attack.CALIBRATION_DRAWS, SAMPLE_STEPS)
    assert history["weights"]["img"] == pytest.approx(1.0 / calibration["mean_abs_grad"]["img"])
    assert all(history["weights"][name] > 0 for name in TERMS)


class Args:
    height, width, frames, sample_steps, low_memory, decode_chunk = 64, 64, FRAMES, 2, True, None


def test_evaluation_videos_decode_all_frames_at_once():
    svd = tiny_svd(0)
    rgb8 = (torch.rand(3, 64, 64) * 255).to(torch.uint8)
    video8 = evaluate.make_video(svd, rgb8, Args, 0)
    expected = generate(svd, evaluate.model_input(rgb8, (64, 64)), num_frames=FRAMES, steps=2, seed=0,
                        clip_image=rgb8.float() / 127.5 - 1, low_memory=True, decode_chunk_size=FRAMES)
    assert torch.equal(video8, torch.from_numpy(evaluate.to_uint8(expected)).permute(0, 3, 1, 2))
    Args.decode_chunk = 1  # a chunk of one frame per decode changes the video: the temporal decoder mixes frames
    try:
        assert not torch.equal(video8, evaluate.make_video(svd, rgb8, Args, 0))
    finally:
        Args.decode_chunk = None


def test_random_baseline_copies_the_perturbation_statistics():
    g = torch.Generator().manual_seed(0)
    rgb8 = torch.full((3, 96, 96), 128, dtype=torch.uint8)  # mid-grey: no clipping
    guarded8 = (rgb8.int() + torch.randint(-8, 9, rgb8.shape, generator=g) + 2).to(torch.uint8)
    random8 = evaluate.matched_noise(rgb8, guarded8, seed=0)
    d_guard, d_random = guarded8.double() - 128, random8.double() - 128
    standard_error = d_guard.std().item() / d_guard.numel() ** 0.5
    assert d_random.mean().item() == pytest.approx(d_guard.mean().item(), abs=4 * standard_error)
    assert d_random.std().item() == pytest.approx(d_guard.std().item(), rel=0.02)
    assert d_random.abs().max() > 8  # Gaussian: no L_inf budget


def interpolation_matrix(n_in, n_out, mode):
    """(n_out, n_in) weights of PyTorch's 1-D linear / cubic (A = -0.75) resize, align_corners=False, no antialias."""
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        if mode == "bilinear":
            src = max(src, 0.0)
            i0, t = math.floor(src), src - math.floor(src)
            M[i, min(i0, n_in - 1)] += 1 - t
            M[i, min(i0 + 1, n_in - 1)] += t
        else:
            A, i0 = -0.75, math.floor(src)
            t = src - i0

            def near(x):
                return ((A + 2) * x - (A + 3)) * x * x + 1

            def far(x):
                return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

            for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
                M[i, min(max(i0 + offset, 0), n_in - 1)] += w
    return M


@pytest.mark.parametrize("mode, size", [("bilinear", (30, 47)), ("bicubic", (30, 47)), ("bicubic", (9, 5))])
def test_vbench_resize_is_float_without_rounding_or_clamping(mode, size):
    g = torch.Generator().manual_seed(0)
    frames8 = (torch.rand(2, 3, 13, 17, generator=g) > 0.5).to(torch.uint8) * 255  # hard edges: bicubic overshoots
    expected = interpolation_matrix(13, size[0], mode) @ frames8.double() @ interpolation_matrix(17, size[1], mode).T
    resized = metrics.resize_frames(frames8, size, mode)
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized.double(), expected, rtol=0, atol=1e-3)
    if mode == "bicubic":
        assert resized.min() < 0 and resized.max() > 255
