"""pipelines/controlnext.py (controlnext.md): the sliding-window sampler equals the release's loop written out here from the
facts (windows, constant guidance with the control off in the unconditional half, a separate Euler step per window,
per-frame averages); a folder in the documented layout loads strictly and gives the same video as the networks it
was written from, and a wrong key or shape is a one-line WeightsError naming it; ControlNeXtPipeline draws as
SVDPipeline does plus a pose sequence, and its G is the controlled denoiser. Tiny random networks, no downloads."""
import json
import math
import shutil
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
from oracles import max_abs_diff
from safetensors.torch import load_file, save_file

import sample
from judging import figures
from model import PoseEncoder, PoseEncoderConfig
from model.edm import denoise, karras_sigmas
from pipelines import svd as svd_pipeline
from pipelines.controlnext import TINY_POSE_ENCODER, ControlNeXtPipeline, generate_controlnext, load_controlnext
from pipelines.svd import SVDPipeline
from weights import WeightsError, tiny_svd

H, W = 64, 64
TINY_POSE = TINY_POSE_ENCODER
# the documented local layout: folder -> (class name in its config.json, weights file stem)
LAYOUT = {"unet": ("UNetSpatioTemporalConditionModel", "diffusion_pytorch_model"),
          "vae": ("AutoencoderKLTemporalDecoder", "diffusion_pytorch_model"),
          "image_encoder": ("CLIPVisionModelWithProjection", "model"),
          "controlnet": ("ControlNeXtSDVModel", "diffusion_pytorch_model")}


@pytest.fixture(scope="module")
def networks():
    """tiny_svd and a tiny pose encoder in float64: random untrained networks are ill-conditioned (a 1e-7 change of
    the initial noise moves their float32 video by 1e-3), so parity with the written-out loop is checked in float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svd = tiny_svd(seed=0, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        pose_encoder = PoseEncoder(TINY_POSE).double().eval().requires_grad_(False)
    return svd, pose_encoder


def photo_and_poses(frames, seed=0, size=(H, W)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, *size, generator=g) * 2 - 1, torch.rand(frames, 3, *size, generator=g)


def reference_video(svd, pose_encoder, image, poses, *, seed, steps, guidance, window, overlap):
    """The release's sampler as controlnext.md states it, written out with plain loops."""
    num_frames = len(poses)
    g = torch.Generator().manual_seed(seed)
    aug_noise = torch.randn(1, 3, H, W, generator=g)  # the pipeline's draws: augmentation noise, then initial noise
    noise = torch.randn(num_frames, 4, H // 8, W // 8, generator=g)
    embeds = svd_pipeline.clip_embedding(svd.image_encoder, image[None])  # (1, 1, D)
    latents = svd_pipeline.image_latents(svd.vae, image[None], 0.02, aug_noise)  # (1, 4, h, w), unscaled
    time_ids = torch.tensor([[6.0, 128.0, 0.02]], dtype=torch.float64)
    cond = (latents[:, None].repeat(1, window, 1, 1, 1), embeds, time_ids)
    uncond = (torch.zeros_like(cond[0]), torch.zeros_like(embeds), cond[2])
    starts, s = [], 0  # a window every window - overlap frames, the last one aligned to the end
    while s < num_frames - overlap:
        starts.append(min(s, num_frames - window))
        s += window - overlap
    sigmas = karras_sigmas(steps).tolist()
    x = noise.double() * (sigmas[0] ** 2 + 1) ** 0.5
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        total, count = torch.zeros_like(x), torch.zeros(num_frames, dtype=torch.float64)
        for k, s in enumerate(starts):
            pose = poses[s:s + window].clone()
            pose[0] = poses[0]  # each window's first pose is the reference image's
            control = pose_encoder(pose.double(), torch.tensor(math.log(sigma) / 4))
            x_w = x[s:s + window][None]
            D_u = denoise(svd.unet, x_w, sigma, *uncond, control=control, control_scale=0.0)[0]
            D_c = denoise(svd.unet, x_w, sigma, *cond, control=control, control_scale=1.0)[0]
            w = torch.linspace(guidance, guidance, window).view(1, -1, 1, 1, 1)
            D = D_u + w * (D_c - D_u)
            stepped = (x_w + (x_w - D) / sigma * (sigma_next - sigma))[0]  # Euler
            for i in range(window):
                if k > 0 and i == 0:  # a window after the first drops its frame 0
                    continue
                total[s + i] += stepped[i]
                count[s + i] += 1
        x = total / count.view(-1, 1, 1, 1)
    z = x / svd.vae.config.scaling_factor
    frames = torch.cat([svd.vae.decode(chunk, num_frames=len(chunk)) for chunk in z.split(2)]).float()
    return x, frames.clamp(-1, 1), starts


@torch.no_grad()
def test_sliding_window_sampler_matches_written_out_loop(networks):
    svd, pose_encoder = networks
    image, poses = photo_and_poses(7)
    settings = dict(steps=3, guidance=2.5, window=4, overlap=2)
    ref_latents, ref_frames, starts = reference_video(svd, pose_encoder, image, poses, seed=3, **settings)
    assert starts == [0, 2, 3]
    latents = generate_controlnext(svd, pose_encoder, image, poses, seed=3, return_latents=True, **settings)
    frames = generate_controlnext(svd, pose_encoder, image, poses, seed=3, **settings)
    assert max_abs_diff("controlnext final latents, 7 frames, windows 4/2", latents, ref_latents) <= 1e-5
    assert max_abs_diff("controlnext frames, 7 frames, windows 4/2", frames, ref_frames) <= 1e-5
    assert frames.shape == (7, 3, H, W)
    other = poses.clone()
    other[5] = 1 - other[5]
    changed = generate_controlnext(svd, pose_encoder, image, other, seed=3, return_latents=True, **settings)
    assert (changed - latents).abs().max() > 1e-3  # the poses steer the video


def write_folder(root, svd, pose_encoder):
    """The documented local layout, variant None (*.safetensors)."""
    for folder, (class_name, stem) in LAYOUT.items():
        module = pose_encoder if folder == "controlnet" else getattr(svd, folder)
        (root / folder).mkdir(parents=True)
        (root / folder / "config.json").write_text(json.dumps({"_class_name": class_name, **asdict(module.config)}))
        save_file({k: v.clone() for k, v in module.state_dict().items()}, root / folder / f"{stem}.safetensors")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory, networks):
    return write_folder(tmp_path_factory.mktemp("controlnext"), *networks)


@torch.no_grad()
def test_local_folder_loads_strictly_and_gives_the_same_video(folder, networks):
    svd, pose_encoder = networks
    loaded, loaded_pose_encoder = load_controlnext(folder, variant=None, dtype=torch.float64)
    assert loaded.source == str(folder) and loaded_pose_encoder.config == TINY_POSE
    for a, b in [(loaded.unet, svd.unet), (loaded.vae, svd.vae), (loaded.image_encoder, svd.image_encoder),
                 (loaded_pose_encoder, pose_encoder)]:
        loaded_state = a.state_dict()
        assert all(torch.equal(loaded_state[k], v) for k, v in b.state_dict().items())
    image, poses = photo_and_poses(3, seed=1)
    out = generate_controlnext(loaded, loaded_pose_encoder, image, poses, steps=2, seed=0, return_latents=True)
    ref = generate_controlnext(svd, pose_encoder, image, poses, steps=2, seed=0, return_latents=True)
    assert max_abs_diff("controlnext from a folder vs in memory", out, ref) <= 1e-9  # equal weights (float64)


@pytest.mark.parametrize("case", ["renamed key", "wrong shape"])
def test_wrong_key_or_shape_is_one_line_naming_it(tmp_path, folder, case):
    root = shutil.copytree(folder, tmp_path / "broken")
    if case == "renamed key":
        path = root / "controlnet" / "diffusion_pytorch_model.safetensors"
        state = load_file(path)
        state["mid_convs.1.kernel"] = state.pop("mid_convs.1.weight")
        named = ["mid_convs.1.kernel", "mid_convs.1.weight"]
    else:
        path = root / "unet" / "diffusion_pytorch_model.safetensors"
        state = load_file(path)
        state["conv_in.weight"] = state["conv_in.weight"][:, :4].contiguous()
        named = ["conv_in.weight", "shape"]
    save_file(state, path)
    with pytest.raises(WeightsError) as e:
        load_controlnext(root, variant=None)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and all(n in message for n in named), message


def test_pipeline_draws_and_controlled_denoiser(networks):
    svd, pose_encoder = networks
    sequences = [photo_and_poses(4, seed=10 + i)[1] for i in range(3)]
    pipe, plain = ControlNeXtPipeline(svd, pose_encoder, sequences), SVDPipeline(svd)
    size = (H, W)
    d = pipe.draw(torch.Generator().manual_seed(5), size)
    assert torch.equal(d[0], plain.draw(torch.Generator().manual_seed(5), size))
    g = torch.Generator().manual_seed(0)
    assert {pipe.draw(g, size)[1] for _ in range(30)} == {0, 1, 2}
    assert pipe.num_frames == 4

    I = (photo_and_poses(1, seed=2)[0][None] + 1) / 2  # (1, 3, H, W) in [0, 1]
    x, c = pipe.E(I, d, size), pipe.embed(I).requires_grad_()
    assert torch.equal(x, plain.E(I, d[0], size))
    X_t = torch.randn(1, 4, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1)) * 2
    sigma = 2.0
    out, _ = pipe.G(X_t, sigma, x, c, (d[0], 1))
    with torch.no_grad():  # the denoiser with sequence 1's control and the release's time ids, written out
        control = pose_encoder(sequences[1].double(), torch.tensor(math.log(sigma) / 4))
        ref, _ = denoise(svd.unet, X_t.double(), sigma, x[:, None].expand(-1, 4, -1, -1, -1), c,
                         torch.tensor([[6.0, 128.0, 0.02]], dtype=torch.float64), control=control)
        uncontrolled, _ = plain.G(X_t, sigma, x, c, d[0])
        other, _ = pipe.G(X_t, sigma, x, c, (d[0], 2))
    assert max_abs_diff("ControlNeXtPipeline.G vs written-out controlled denoiser", out, ref) <= 1e-6
    assert (out - uncontrolled).abs().max() > 1e-3 and (out - other).abs().max() > 1e-3
    out.sum().backward()
    assert c.grad.abs().sum() > 0  # the attack's gradient reaches the photo's embedding

    with torch.no_grad():
        V = pipe.P(I, size=size, num_frames=4, steps=2, seed=0)
        V_ref = generate_controlnext(svd, pose_encoder, I[0] * 2 - 1, sequences[0], steps=2, seed=0)
    assert V.shape == (4, 3, H, W) and torch.equal(V, V_ref)


# ---------------------------------------------------------------- the commands
def test_commands_follow_a_pose_file_and_refuse_poses_for_svd(tmp_path, capsys):
    from PIL import Image

    import attack
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray((rng.random((64, 48, 3)) * 255).astype(np.uint8)).save(photo)
    frames = [Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)) for _ in range(5)]
    frames[0].save(tmp_path / "poses.gif", save_all=True, append_images=frames[1:])
    small = ["--height", "64", "--width", "64"]
    sample.main(["--image", str(photo), "--out", str(tmp_path / "v.gif"), "--model", "tiny-controlnext",
                 "--pose", str(tmp_path / "poses.gif"), "--steps", "2"] + small)
    with Image.open(tmp_path / "v.gif") as video:
        assert video.n_frames == 5 and video.size == (64, 64)  # one frame per pose frame
    attack.main(["--image", str(photo), "--out", str(tmp_path / "g.png"), "--model", "tiny-controlnext", "--pose",
                 str(tmp_path / "poses.gif"), "--frames", "4", "--steps", "2", "--sample-steps", "2", "--preview"]
                + small)
    report = json.loads((tmp_path / "g.json").read_text())
    with Image.open(tmp_path / "g.preview.gif") as preview:  # clean, guarded, noise, and the poses followed
        assert preview.n_frames == 4 and preview.size == (4 * figures.PANEL, 3 * figures.PANEL + figures.FOOTER)
    assert report["settings"]["pose"] == str(tmp_path / "poses.gif") and report["untrained_model"]
    capsys.readouterr()
    for main, args in ((attack.main, ["--out", str(tmp_path / "h.png")]),
                       (sample.main, ["--out", str(tmp_path / "w.gif")])):
        with pytest.raises(SystemExit) as e:
            main(["--image", str(photo), "--model", "tiny", "--pose", str(tmp_path / "poses.gif")] + args + small)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "not a pose-conditioned model" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.after.gif", "g.attention.png", "g.before.gif", "g.json",
                                                          "g.png", "g.preview.gif", "photo.png", "poses.gif", "v.gif"]


def test_the_release_layout_loads_strictly(tmp_path, folder, networks, monkeypatch):
    """--model controlnext: SVD-XT 1.1's VAE, CLIP and UNet config, and the release's two float16 files (the
    pose encoder at the release's size, the fine-tuned UNet under diffusers' names), all through the hub."""
    import weights
    from pipelines.controlnext import BASE_REPO, RELEASE_POSE_ENCODER, RELEASE_REPO, RELEASE_UNET
    svd, _ = networks
    base, release = tmp_path / BASE_REPO, tmp_path / RELEASE_REPO
    for part, stem in (("vae", "diffusion_pytorch_model"), ("image_encoder", "model"), ("unet", None)):
        (base / part).mkdir(parents=True)
        shutil.copy(folder / part / "config.json", base / part / "config.json")
        if stem:
            save_file(load_file(folder / part / f"{stem}.safetensors"), base / part / f"{stem}.fp16.safetensors")
    release.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        pose_encoder = PoseEncoder(PoseEncoderConfig(unet_channels=32)).half()  # the release's size
    save_file(pose_encoder.state_dict(), release / RELEASE_POSE_ENCODER)
    save_file({k: v.half().contiguous() for k, v in svd.unet.state_dict().items()}, release / RELEASE_UNET)
    monkeypatch.setattr(weights, "cached_or_download", lambda source, relpath: tmp_path / source / relpath)
    loaded, loaded_pose_encoder = load_controlnext("controlnext", dtype=torch.float32)
    loaded_state = loaded_pose_encoder.state_dict()
    assert all(torch.equal(loaded_state[k], v.float()) for k, v in pose_encoder.state_dict().items())
    assert all(torch.equal(loaded.unet.state_dict()[k], v.half().float()) for k, v in svd.unet.state_dict().items())
    assert sum(p.numel() for p in loaded_pose_encoder.parameters()) == 3_526_400 - (320 - 32) * 257
    save_file({"conv_in.weight": torch.zeros(1)}, release / RELEASE_UNET)
    with pytest.raises(WeightsError, match=f"{RELEASE_UNET} does not match UNet: missing keys"):
        load_controlnext("controlnext")


# ---------------------------------------------------------------- the release's photo, a reference per motion
def release_resize_and_crop(rgb8, height, width):
    """utils/pre_process.py written out: cover height x width keeping the aspect ratio (the fitting side rounded
    up), bilinear without antialiasing at half-pixel centres (torchvision's tensor resize), then the centre crop
    with offsets rounded half to even (torchvision's center_crop). (3,H0,W0) uint8 -> (3,H,W) float64, unrounded."""
    h, w = rgb8.shape[-2:]
    if h / w < height / width:
        rh, rw = height, math.ceil(height / (h / w))
    else:
        rh, rw = math.ceil(width * (h / w)), width
    image = rgb8.double().numpy()

    def taps(out_size, in_size):  # source coordinate of each output pixel centre, clamped at the borders
        at = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        low = np.minimum(np.floor(at).astype(int), in_size - 1)
        return low, np.minimum(low + 1, in_size - 1), at - low

    y0, y1, fy = taps(rh, h)
    x0, x1, fx = taps(rw, w)
    rows = image[:, y0] * (1 - fy)[:, None] + image[:, y1] * fy[:, None]
    resized = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
    top, left = round((rh - height) / 2.0), round((rw - width) / 2.0)
    return torch.from_numpy(resized[:, top:top + height, left:left + width])


@pytest.mark.parametrize("photo", [(90, 50), (40, 120), (37, 61), (128, 64), (32, 16)])
def test_photo_is_resized_and_centre_cropped_as_the_release_does(photo):
    from pipelines.controlnext import photo_input, release_crop
    rgb8 = torch.randint(0, 256, (3, *photo), generator=torch.Generator().manual_seed(sum(photo)), dtype=torch.uint8)
    expected = release_resize_and_crop(rgb8, 64, 32)
    cropped = release_crop(rgb8[None].double(), (64, 32))[0]
    assert max_abs_diff(f"release crop of a {photo} photo", cropped, expected) <= 1e-9
    levels = (photo_input(rgb8, (64, 32)).double() + 1) * 127.5  # 8-bit levels, as the release's uint8 photo
    assert (levels - levels.round()).abs().max() < 1e-4  # whole levels
    assert (levels - expected).abs().max() <= 0.5 + 1e-4  # each the nearest level (a tie, in float32, either way)


def test_every_piece_sees_the_cropped_photo(networks):
    from pipelines.controlnext import photo_input, release_crop
    svd, pose_encoder = networks
    pipe, plain = ControlNeXtPipeline(svd, pose_encoder, [photo_and_poses(2, seed=4)[1]]), SVDPipeline(svd)
    rgb8 = torch.randint(0, 256, (3, 80, 120), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    I = (rgb8.double() / 255)[None]  # (1, 3, 80, 120): wider than the 64x64 frame, so it is cropped
    crop = release_crop(I, (H, W))
    d = pipe.draw(torch.Generator().manual_seed(5), (H, W))
    with torch.no_grad():
        assert torch.equal(pipe.E(I, d, (H, W)), plain.E(crop, d[0], (H, W)))
        assert torch.equal(pipe.embed(I), plain.embed(crop))
        V = pipe.video(rgb8, size=(H, W), num_frames=2, steps=1, seed=0)
        V_ref = generate_controlnext(svd, pose_encoder, photo_input(rgb8, (H, W)), pipe.pose_sequences[0], steps=1,
                                     seed=0)
    assert torch.equal(V, V_ref)


def test_one_reference_per_motion(networks):
    """X_0^k = E(P_k(I_src)) for each pose sequence k, and an iteration that draws k is measured against X_0^k."""
    from attack import Objective
    from losses import contrastive_loss
    svd, pose_encoder = networks
    pipe = ControlNeXtPipeline(svd, pose_encoder, [photo_and_poses(3, seed=20 + k)[1] for k in range(2)])
    I_src = (photo_and_poses(1, seed=6)[0][None] + 1) / 2  # (1, 3, H, W) in [0, 1]
    obj = Objective(pipe, I_src, ("con",), num_frames=3, size=(H, W), tau1=0.5, tau2=0.5, attn_blocks=(),
                    sample_steps=2, seed=0)
    assert obj.X_0_k.shape == (2, 3, 4, H // 8, W // 8) and torch.equal(obj.X_0, obj.X_0_k[:1])
    with torch.no_grad():
        for k in range(2):
            V_k = pipe.P(I_src, size=(H, W), num_frames=3, steps=2, seed=0, motion=k)
            assert torch.equal(obj.X_0_k[k:k + 1], pipe.encode_frames(V_k))
        assert (obj.X_0_k[0] - obj.X_0_k[1]).abs().max() > 1e-3  # the motions' videos differ
    g = torch.Generator().manual_seed(1)
    draws = [obj.draw(g, step=0) for _ in range(8)]
    assert {d[0][1] for d in draws} == {0, 1}
    d, sigma, noise, T = next(draw for draw in draws if draw[0][1] == 1)
    I_adv = (I_src + 0.01).clamp(0, 1)
    with torch.no_grad():
        X0_adv, _ = pipe.G(obj.X_0_k[1:2] + sigma * noise, sigma, pipe.E(I_adv, d, (H, W)), pipe.embed(I_adv), d)
        expected = contrastive_loss(X0_adv, obj.X_tg, obj.X_0_k[1:2], 0.5)
        assert torch.equal(obj(I_adv, (d, sigma, noise, T))["con"], expected)


def test_body_flag_and_the_poses_command(tmp_path, capsys):
    """sample.py --body follows the generic motion fitted to the photo; poses.py draws the three side by side;
    a bad body file, or --body with --pose, is one line and status 2."""
    from PIL import Image

    import poses as poses_command
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((96, 64, 3)) * 255).astype(np.uint8)).save(photo)
    body = [[32, 20], [32, 30], [24, 31], [20, 45], [18, 58], [40, 31], [44, 45], [46, 58], [27, 60], None, None,
            [37, 60], None, None, [30, 17], [34, 17], [28, 18], [36, 18]]
    (tmp_path / "body.json").write_text(json.dumps(body))
    (tmp_path / "bad.json").write_text("[1, 2]")
    small = ["--height", "64", "--width", "64"]
    sample.main(["--image", str(photo), "--out", str(tmp_path / "v.gif"), "--model", "tiny-controlnext", "--body",
                 str(tmp_path / "body.json"), "--frames", "3", "--steps", "1"] + small)
    with Image.open(tmp_path / "v.gif") as video:
        assert video.n_frames == 3 and video.size == (64, 64)
    poses_command.main(["--body", str(tmp_path / "body.json"), "--image", str(photo), "--height", "64", "--width",
                        "32", "--frames", "4", "--out", str(tmp_path / "p.gif")])
    with Image.open(tmp_path / "p.gif") as drawn:
        assert drawn.n_frames == 4 and drawn.size == (3 * 32, 64)
    capsys.readouterr()
    poses_command.main(["--frames", "2", "--height", "64", "--width", "32", "--out", str(tmp_path / "q.gif")])
    assert "not fitted to the body" in capsys.readouterr().err
    for main, args in ((sample.main, ["--image", str(photo), "--out", str(tmp_path / "w.gif"), "--model",
                                      "tiny-controlnext", "--body", str(tmp_path / "bad.json")] + small),
                       (sample.main, ["--image", str(photo), "--out", str(tmp_path / "w.gif"), "--model",
                                      "tiny-controlnext", "--body", str(tmp_path / "body.json"), "--pose",
                                      str(tmp_path / "p.gif")] + small),
                       (sample.main, ["--image", str(photo), "--out", str(tmp_path / "w.gif"), "--model", "tiny",
                                      "--body", str(tmp_path / "body.json")] + small),
                       (poses_command.main, ["--body", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r.gif")])):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "--body" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "body.json", "p.gif", "photo.png", "q.gif",
                                                          "v.gif"]
