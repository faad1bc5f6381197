"""Pose sequences for ControlNeXt: generic motions, skeletons drawn in the release's convention, pose files."""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines import poses

H, W = 1024, 576  # the release's frame: its lines are 2-3 pixels wide here


def test_sequences_start_neutral_then_move():
    for name, sequence in poses.SEQUENCES.items():
        keypoints = sequence(14)
        assert keypoints.shape == (14, 18, 2), name
        np.testing.assert_array_equal(keypoints[0], poses.body())  # frame 0: the same neutral pose in all
        moved = np.abs(keypoints[1:] - keypoints[0]).max(axis=(1, 2))
        assert moved[0] > 0.005 and (moved > 0.005).mean() > 0.8, name  # a cycle may pass through neutral
        assert ((keypoints >= 0) & (keypoints <= 1)).all(), name  # the body stays in the frame
        assert sequence(1).shape == (1, 18, 2)


def test_limb_has_its_documented_colour_and_background_is_black():
    keypoints = poses.body()
    frame = poses.draw_skeleton(keypoints, H, W)
    assert frame.shape == (3, H, W) and frame.dtype == torch.float32
    assert frame.min() >= 0 and frame.max() <= 1
    pixels = (frame.permute(1, 2, 0).numpy() * 255).round().astype(int)  # (H, W, 3)

    def near(point):  # the 3x3 pixels around a point given in fractions of width and height
        x, y = int(point[0] * W), int(point[1] * H)
        return pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)

    # the release lists limb 3 (right elbow-wrist) as [255, 255, 0] and limb 12 (neck-nose) as [0, 0, 255],
    # draws them at 60% and swaps red and blue: they come out (0, 153, 153) and (153, 0, 0)
    for limb, colour in ((3, (0, 153, 153)), (12, (153, 0, 0))):
        a, b = poses.LIMBS[limb]
        middle = (keypoints[a] + keypoints[b]) / 2
        assert (np.abs(near(middle) - colour).max(axis=1) <= 1).any(), limb
    assert (np.abs(near(keypoints[0]) - (0, 0, 255)).max(axis=1) <= 1).any()  # the nose: [255, 0, 0], full
    assert pixels[:100].max() == 0 and pixels[:, :100].max() == 0 and pixels[-50:].max() == 0  # far away


def test_drawing_only_where_the_body_lies_is_drawing_the_whole_canvas():
    """skeleton_image draws and resizes only the part of the release's 2160-pixel canvas the body covers: the same
    pixels as the whole canvas drawn and resized, for bodies partly outside the frame and keypoints not seen."""
    rng = np.random.default_rng(0)
    for height, width in ((64, 36), (40, 72)):
        scale = poses.CANVAS_SIDE / min(height, width)
        size = (int(width * scale), int(height * scale))
        for _ in range(3):
            keypoints = rng.uniform(-0.3, 1.3, (18, 2))
            keypoints[rng.random(18) < 0.2] = np.nan
            canvas = Image.new("RGB", size)
            draw = ImageDraw.Draw(canvas)
            for outline, fill in poses.skeleton_shapes(keypoints * size):
                if len(outline) > 2:
                    draw.polygon(outline, fill=fill)
                draw.line(outline, fill=fill)
            whole = poses.resize_like_opencv(np.asarray(canvas), height, width)
            np.testing.assert_array_equal(poses.skeleton_image(keypoints, height, width), whole)


def test_undetected_keypoints_are_not_drawn():
    assert poses.draw_skeleton(np.full((18, 2), np.nan), 64, 36).max() == 0


def test_generic_poses_are_drawn_frames():
    drawn = poses.generic_poses(3, 64, 36)
    assert set(drawn) == {"wave", "sway", "walk"}
    for frames in drawn.values():
        assert frames.shape == (3, 3, 64, 36) and frames.dtype == torch.float32
        assert frames.min() >= 0 and frames.max() <= 1 and frames.max() > 0
        torch.testing.assert_close(frames[0], drawn["wave"][0], rtol=0, atol=0)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_read_poses_folder_in_name_order(tmp_path):
    for name, colour in zip(("02.png", "01.png", "10.png"), COLOURS):
        Image.new("RGB", (40, 30), colour).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a pose")
    frames = poses.read_poses(tmp_path, 16, 12, 128)
    assert frames.shape == (3, 3, 16, 12) and frames.dtype == torch.float32
    expected = torch.tensor([COLOURS[1], COLOURS[0], COLOURS[2]], dtype=torch.float32) / 255
    torch.testing.assert_close(frames.mean(dim=(2, 3)), expected)


def test_read_poses_every_frame_of_a_gif(tmp_path):
    images = [Image.new("RGB", (40, 30), colour) for colour in COLOURS]
    images[0].save(tmp_path / "poses.gif", save_all=True, append_images=images[1:], duration=100)
    frames = poses.read_poses(tmp_path / "poses.gif", 16, 12, 128)
    assert frames.shape == (3, 3, 16, 12)
    torch.testing.assert_close(frames.mean(dim=(2, 3)), torch.tensor(COLOURS, dtype=torch.float32) / 255)


def test_read_poses_refuses_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_text("not an image")
    for path, why in ((tmp_path / "missing", "no such"), (tmp_path / "empty", "no .png"),
                      (tmp_path / "bad.png", "not a readable image")):
        with pytest.raises(ValueError, match=why) as error:
            poses.read_poses(path, 16, 12, 128)
        assert "\n" not in str(error.value)


def test_read_poses_decodes_no_more_than_it_needs(tmp_path):
    """A long GIF costs the frames asked for plus one (which says there are more), not all of them."""
    images = [Image.new("RGB", (40, 30), COLOURS[i % 3]) for i in range(50)]
    images[0].save(tmp_path / "long.gif", save_all=True, append_images=images[1:], duration=40)
    assert poses.read_poses(tmp_path / "long.gif", 16, 12, 4).shape == (5, 3, 16, 12)
    for i, image in enumerate(images[:10]):
        image.save(tmp_path / f"{i:02}.png")
    (tmp_path / "long.gif").unlink()
    assert poses.read_poses(tmp_path, 16, 12, 3).shape == (4, 3, 16, 12)


def test_read_poses_scales_16_bit_frames_and_refuses_what_is_not_a_file(tmp_path):
    Image.fromarray(np.full((30, 40), 32896, dtype=np.uint16)).save(tmp_path / "00.png")  # 32896 / 257 = 128
    frames = poses.read_poses(tmp_path, 16, 12, 128)
    torch.testing.assert_close(frames, torch.full((1, 3, 16, 12), 128 / 255))
    os.mkfifo(tmp_path / "01.png")  # reading it would block forever
    with pytest.raises(ValueError, match="01.png: not a regular file"):
        poses.read_poses(tmp_path, 16, 12, 128)


# ---------------------------------------------------------------- motions fitted to the photo's body
def release_rescale(driving, ref, height, width, fh, fw):
    """The release's dwpose/preprocess.py rescale written out on keypoint arrays in fractions of their frames:
    a degree-1 np.polyfit of the reference's y on every driving frame's y over the reference keypoints it sees
    (all but the elbows and wrists), x scaled by ay / (fh / fw / height * width), shifted by the mean residual."""
    ids = [i for i in (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17) if not np.isnan(ref[i]).any()]
    ay, by = np.polyfit(driving[:, ids, 1].flatten(), np.tile(ref[ids, 1], len(driving)), 1)
    ax = ay / (fh / fw / height * width)
    bx = np.mean(np.tile(ref[ids, 0], len(driving)) - driving[:, ids, 0].flatten() * ax)
    return driving * np.array([ax, ay]) + np.array([bx, by])


def photo_body():
    """A person seen from the knees up, off centre, in fractions of a 96x64 frame; the ankles and an ear unseen."""
    body = poses.body(arm_raise=(20, 5))
    body = (body - 0.5) * (0.8, 1.3) + (0.6, 0.55)
    body[[10, 13, 17]] = np.nan
    return body


def test_fit_motion_is_the_release_formula():
    body, height, width = photo_body(), 96, 64
    for name, sequence in poses.SEQUENCES.items():
        motion = sequence(9)
        fitted = poses.fit_motion(motion, body, height, width)
        expected = release_rescale(motion, body, height, width, 1024, 576)
        np.testing.assert_allclose(fitted, expected, rtol=0, atol=1e-12, err_msg=name)
    # on another driving frame shape and a landscape target, with every point seen
    motion, body = poses.walk(6) * (1.0, 0.9), poses.sway(1)[0] * 0.7 + 0.1
    np.testing.assert_allclose(poses.fit_motion(motion, body, 576, 1024, motion_aspect=16 / 9),
                               release_rescale(motion, body, 576, 1024, 9, 16), rtol=0, atol=1e-12)


def test_fitted_sequences_start_from_the_photo_pose():
    body = photo_body()
    fitted = poses.fitted_poses(5, body, 96, 64)
    assert set(fitted) == set(poses.SEQUENCES)
    for name, keypoints in fitted.items():
        assert keypoints.shape == (5, 18, 2)
        np.testing.assert_array_equal(keypoints[0], body)  # frame 0: the photo's own pose, unseen points NaN
        np.testing.assert_allclose(keypoints[1:], poses.fit_motion(poses.SEQUENCES[name](4), body, 96, 64))
        assert np.isfinite(keypoints[1:]).all()  # the motion's frames have every point
    drawn = poses.generic_poses(3, 96, 64, body)
    torch.testing.assert_close(drawn["wave"][0], poses.draw_skeleton(body, 96, 64), rtol=0, atol=0)


def test_without_a_body_the_sequences_stay_centred_and_say_so(capsys):
    drawn = poses.generic_poses(2, 64, 36)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not fitted to the body" in err
    torch.testing.assert_close(drawn["sway"][0], poses.draw_skeleton(poses.body(), 64, 36), rtol=0, atol=0)


def test_a_body_too_small_to_fit_is_refused():
    body = np.full((18, 2), np.nan)
    body[[3, 4, 6]] = 0.5  # elbows and wrists only: not fit keypoints
    body[1] = 0.3
    with pytest.raises(ValueError, match="fewer than two"):
        poses.fit_motion(poses.wave(3), body, 96, 64)


def test_read_body_maps_photo_pixels_through_the_release_crop(tmp_path):
    # a landscape 300x200 (w x h) photo into a portrait 32x64 frame: the height fits, the width is cropped;
    # the release's arithmetic (utils/pre_process.py, torchvision's center_crop) written out here
    h0, w0, height, width = 200, 300, 64, 32
    ratio = h0 / w0
    resized_h, resized_w = (height, math.ceil(height / ratio)) if ratio < height / width else \
        (math.ceil(width * ratio), width)
    top, left = round((resized_h - height) / 2.0), round((resized_w - width) / 2.0)
    assert (resized_h, resized_w, top, left) == poses.release_crop_box(h0, w0, height, width) == (64, 96, 0, 32)
    points = [[150, 100], None] + [[10 * i, 5 * i] for i in range(2, 18)]
    (tmp_path / "body.json").write_text(json.dumps(points))
    body = poses.read_body(tmp_path / "body.json", (h0, w0), (height, width))
    assert body.shape == (18, 2) and np.isnan(body[1]).all()
    np.testing.assert_allclose(body[0], ((150 * 96 / 300 - 32) / 32, (100 * 64 / 200) / 64))
    np.testing.assert_allclose(body[5], ((50 * 96 / 300 - 32) / 32, (25 * 64 / 200) / 64))


@pytest.mark.parametrize("text,why", [("[1, 2", "not a readable JSON"), ("[[1, 2]]", "a JSON list of 18"),
                                      ('[[1, "a"]' + ", null" * 17 + "]", r"keypoint 0 \(nose\)"),
                                      ("[null, [1, 2, 3]" + ", null" * 16 + "]", r"keypoint 1 \(neck\)")])
def test_read_body_refuses_bad_files_in_one_line(tmp_path, text, why):
    (tmp_path / "body.json").write_text(text)
    with pytest.raises(ValueError, match=why) as error:
        poses.read_body(tmp_path / "body.json", (100, 100), (64, 64))
    assert "\n" not in str(error.value)
