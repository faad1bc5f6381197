"""Pose sequences for ControlNeXt: generic motions, skeletons drawn in the release's convention, pose files."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

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
