"""weights.load_svd reads the official diffusers layout (fp16 variant by default, plain files with
variant=None, or a hub repo id through weights.hf_hub_download) into networks that give the same outputs
as the oracles loaded from the same files; every broken input (missing file, corrupt file, missing /
unexpected key, wrong shape, gated repo) raises a one-line WeightsError naming the culprit; tiny_svd is
seeded. No test touches the network."""
import json
import os
import shutil

import httpx2
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModelWithProjection

import weights
from model import CLIPConfig, CLIPImageEncoder, UNet, UNetConfig, VAE, VAEConfig
from oracles import (TINY_CLIPS, TINY_UNETS, TINY_VAES, TOL, max_abs_diff, oracle_clip, oracle_unet,
                     oracle_vae, save_svd_dir, unet_inputs)
from weights import WeightsError, load_svd, tiny_svd

UNET_CFG, VAE_CFG, CLIP_CFG = TINY_UNETS["2level-tl2"], TINY_VAES["3level"], TINY_CLIPS["gelu"]
UNET_FILE = os.path.join("unet", "diffusion_pytorch_model.safetensors")
VAE_FILE = os.path.join("vae", "diffusion_pytorch_model.safetensors")
CLIP_FILE = os.path.join("image_encoder", "model.safetensors")


def save_tiny_dir(root, variant):
    return save_svd_dir(root, oracle_unet(UNET_CFG, 1), oracle_vae(VAE_CFG, 2), oracle_clip(CLIP_CFG, 3),
                        variant=variant)


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory):
    """A tiny SVD saved without variant (fp32 *.safetensors)."""
    return save_tiny_dir(tmp_path_factory.mktemp("plain") / "svd", None)


@pytest.fixture
def broken_dir(plain_dir, tmp_path):
    """A fresh copy of plain_dir for a test to damage."""
    return shutil.copytree(plain_dir, tmp_path / "svd")


def assert_same_outputs(svd, unet, vae, clip, label):
    for module in (svd.unet, svd.vae, svd.image_encoder):
        module.eval()
    with torch.no_grad():
        sample, ehs, ids = unet_inputs(UNET_CFG, 1, 3, 6, 10)
        assert max_abs_diff(f"{label} unet", svd.unet(sample, 0.4, ehs, ids)[0],
                            unet(sample, 0.4, ehs, ids).sample) <= TOL
        x = torch.rand(2, 3, 16, 24) * 2 - 1
        mean, logvar = svd.vae.encode(x)
        assert max_abs_diff(f"{label} vae mean", mean, vae.encode(x).latent_dist.mean) <= TOL
        assert max_abs_diff(f"{label} vae logvar", logvar, vae.encode(x).latent_dist.logvar) <= TOL
        z = torch.randn(3, 4, 6, 10)
        assert max_abs_diff(f"{label} vae decode", svd.vae.decode(z, 3),
                            vae.decode(z, num_frames=3).sample) <= TOL
        pixels = torch.randn(2, 3, 16, 16)
        assert max_abs_diff(f"{label} clip", svd.image_encoder(pixels),
                            clip(pixel_values=pixels).image_embeds) <= TOL


@pytest.mark.parametrize("saved_variant, load_kwargs", [("fp16", {}), (None, {"variant": None})])
def test_load_svd_matches_oracles_loaded_from_same_dir(tmp_path, saved_variant, load_kwargs):
    root = save_tiny_dir(tmp_path / "svd", saved_variant)
    svd = load_svd(str(root), **load_kwargs)

    assert os.path.samefile(svd.source, root)
    for sub, module, config_cls in [("unet", svd.unet, UNetConfig), ("vae", svd.vae, VAEConfig),
                                    ("image_encoder", svd.image_encoder, CLIPConfig)]:
        assert module.config == config_cls.from_json_dict(json.loads((root / sub / "config.json").read_text()))
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert isinstance(svd.unet, UNet) and isinstance(svd.vae, VAE)
    assert isinstance(svd.image_encoder, CLIPImageEncoder)

    unet = UNetSpatioTemporalConditionModel.from_pretrained(
        root, subfolder="unet", variant=saved_variant, torch_dtype=torch.float32).eval()
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        root, subfolder="vae", variant=saved_variant, torch_dtype=torch.float32).eval()
    clip = CLIPVisionModelWithProjection.from_pretrained(
        root / "image_encoder", variant=saved_variant, dtype=torch.float32).eval()
    assert_same_outputs(svd, unet, vae, clip, f"load_svd variant={saved_variant}")


def test_load_svd_from_hub_repo_id(plain_dir, monkeypatch):
    requested = []

    def fake_hf_hub_download(repo_id, filename, *args, subfolder=None, **kwargs):
        assert repo_id == "someorg/tiny-svd"
        path = plain_dir / (subfolder or "") / filename
        requested.append(os.path.relpath(path, plain_dir))
        if not path.is_file():
            raise LocalEntryNotFoundError(f"{filename} not in the fake hub")
        return str(path)

    monkeypatch.setattr(weights, "hf_hub_download", fake_hf_hub_download)
    svd = load_svd("someorg/tiny-svd", variant=None)
    assert svd.source == "someorg/tiny-svd"
    assert {UNET_FILE, VAE_FILE, CLIP_FILE} <= set(requested)
    local = load_svd(str(plain_dir), variant=None)
    for name in ("unet", "vae", "image_encoder"):
        hub_state, local_state = getattr(svd, name).state_dict(), getattr(local, name).state_dict()
        assert hub_state.keys() == local_state.keys()
        assert all(torch.equal(hub_state[k], local_state[k]) for k in hub_state)


def test_gated_repo_says_how_to_log_in(monkeypatch):
    def gated(repo_id, filename, *args, **kwargs):
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        response = httpx2.Response(403, request=httpx2.Request("GET", url))
        raise GatedRepoError(f"403 Client Error. Cannot access gated repo for url {url}.", response=response)

    monkeypatch.setattr(weights, "hf_hub_download", gated)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    msg = load_error("stabilityai/stable-video-diffusion-img2vid")
    assert "hf auth login" in msg or "HF_TOKEN" in msg


# ---------------------------------------------------------------- broken local directories
def load_error(source, **kwargs):
    """The message of the WeightsError that load_svd(source) raises; it must be one line."""
    with pytest.raises(WeightsError) as info:
        load_svd(str(source), **kwargs)
    msg = str(info.value)
    print(f"\n[WeightsError] {msg}")
    assert msg and "\n" not in msg.strip()
    return msg


def edit_safetensors(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def shape_in(shape, msg):
    return any(sep.join(map(str, shape)) in msg for sep in (", ", ",", "x", " x "))


@pytest.mark.parametrize("rel", [os.path.join("unet", "config.json"), UNET_FILE, VAE_FILE, CLIP_FILE])
def test_missing_file_is_named(broken_dir, rel):
    os.remove(broken_dir / rel)
    assert rel in load_error(broken_dir, variant=None)


def test_missing_fp16_variant_is_named(plain_dir):
    assert ".fp16.safetensors" in load_error(plain_dir)  # default variant="fp16", only plain files


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_is_named(broken_dir, damage):
    path = broken_dir / VAE_FILE
    data = path.read_bytes()
    path.write_bytes(b"\x00not a safetensors file\xff" * 64 if damage == "garbage" else data[: len(data) // 2])
    assert VAE_FILE in load_error(broken_dir, variant=None)


def test_missing_key_is_named(broken_dir):
    key = "down_blocks.0.attentions.0.temporal_transformer_blocks.1.attn1.to_q.weight"
    edit_safetensors(broken_dir / UNET_FILE, lambda t: t.pop(key))
    msg = load_error(broken_dir, variant=None)
    assert UNET_FILE in msg and key in msg


def test_unexpected_key_is_named(broken_dir):
    key = "vision_model.encoder.layers.9.mlp.fc1.weight"
    edit_safetensors(broken_dir / CLIP_FILE, lambda t: t.update({key: torch.zeros(4, 4)}))
    msg = load_error(broken_dir, variant=None)
    assert CLIP_FILE in msg and key in msg


def test_shape_mismatch_names_key_and_both_shapes(broken_dir):
    key = "decoder.conv_in.weight"
    expected = tuple(load_file(broken_dir / VAE_FILE)[key].shape)
    wrong = (expected[0], expected[1], 1, 1)
    edit_safetensors(broken_dir / VAE_FILE, lambda t: t.update({key: torch.zeros(wrong)}))
    msg = load_error(broken_dir, variant=None)
    assert VAE_FILE in msg and key in msg
    assert shape_in(expected, msg) and shape_in(wrong, msg)


def test_legacy_position_ids_buffer_is_tolerated(broken_dir):
    num_positions = (CLIP_CFG["image_size"] // CLIP_CFG["patch_size"]) ** 2 + 1
    edit_safetensors(broken_dir / CLIP_FILE, lambda t: t.update(
        {"vision_model.embeddings.position_ids": torch.arange(num_positions)[None]}))
    svd = load_svd(str(broken_dir), variant=None)
    reference = load_file(broken_dir / CLIP_FILE)
    assert all(torch.equal(v, reference[k]) for k, v in svd.image_encoder.state_dict().items())


# ---------------------------------------------------------------- tiny_svd
@pytest.mark.filterwarnings("ignore:tiny_svd")
def test_tiny_svd_is_seeded():
    a = tiny_svd(0)
    torch.manual_seed(1234)  # the global RNG must not matter
    b, c = tiny_svd(0), tiny_svd(1)
    assert isinstance(a.unet, UNet) and isinstance(a.vae, VAE) and isinstance(a.image_encoder, CLIPImageEncoder)
    for name in ("unet", "vae", "image_encoder"):
        sa, sb, sc = (getattr(x, name).state_dict() for x in (a, b, c))
        assert sa.keys() == sb.keys() == sc.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"tiny_svd(0) {name} differs between calls"
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), f"tiny_svd(0) and tiny_svd(1) {name} equal"


def test_sharded_weights_load_through_their_index(tmp_path):
    """The large networks of the later models come as shards with an index json: every key checked across them."""
    clip = CLIPImageEncoder(CLIPConfig(**TINY_CLIPS["gelu"]))
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    keys = sorted(state)
    folder = tmp_path / "encoder"
    folder.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    def load():
        with torch.device("meta"):
            empty = CLIPImageEncoder(CLIPConfig(**TINY_CLIPS["gelu"]))
        return weights.load_checked(empty, weights.shard_files(str(tmp_path), "encoder/model.safetensors.index.json"))

    loaded = load()
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in keys)
    save_file({keys[1]: state[keys[1]]}, str(folder / "model-00002-of-00002.safetensors"))  # a shard lost keys
    with pytest.raises(WeightsError, match=r"\(2 shards\) does not match CLIPImageEncoder: missing keys"):
        load()
    save_file({keys[0]: state[keys[0]]}, str(folder / "model-00002-of-00002.safetensors"))  # a key twice
    with pytest.raises(WeightsError, match=f"{keys[0]} is also in .*model-00001-of-00002"):
        load()
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing file"):
        load()
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(WeightsError, match="not a readable safetensors index"):
        load()
