"""generate_cogvideox is diffusers' CogVideoXImageToVideoPipeline: on tiny random networks (the I2V layout: learned
position table and RoPE; the release's VAE with narrow widths; a tiny T5 v1.1) written to a folder in the official
layout by the references' own save_pretrained, loaded strictly by load_cogvideox, the frames equal the pipeline's
to 1e-3 (float32) with the same seed, guidance 6, for DDIM, DPM (fresh noise every step) and dynamic guidance, and
in bfloat16 too, where torch.randn's stream depends on the dtype: each draw must be made in the pipeline's dtype.
The tokenizer is a stub (the hub is unreachable) returning fixed ids; the prompt is not empty, since with an empty
prompt and negative prompt both guidance halves are the same and guidance does nothing."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
)
from oracles import max_abs_diff
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from model.t5 import T5Encoder
from pipelines.cogvideox import (TINY_T5, CogVideoX, generate_cogvideox, load_cogvideox, prompt_embeddings,
                                 prompt_ids)
from weights import WeightsError

TOL = 1e-3
LENGTH = 8  # tokens per prompt (226 as released)
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
                   text_embed_dim=16, num_layers=2, sample_height=4, sample_width=6, sample_frames=17, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=LENGTH, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True)
VAE = dict(block_out_channels=(8, 16, 16, 24), latent_channels=4, layers_per_block=1, norm_num_groups=4,
           temporal_compression_ratio=4, scaling_factor=0.7, sample_height=32, sample_width=48)
T5 = dict(vocab_size=99, d_model=16, d_kv=8, d_ff=37, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu")
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                 snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing")
TOKENS = {"a photo": [5, 17, 42, 1], "": [1]}  # the stub tokenizer's ids, </s> (1) included
SIZE, FRAMES, STEPS = (32, 48), 17, 6  # 17 frames = 5 latent frames: the VAE decodes them in chunks of 3 + 2


class StubTokenizer:
    """Stands in for T5Tokenizer in the pipeline: the fixed ids of TOKENS, padded with 0 as T5's tokenizer pads."""

    def __call__(self, prompts, padding="longest", max_length=None, **_):
        width = max_length if padding == "max_length" else max(len(TOKENS[p]) for p in prompts)
        return SimpleNamespace(input_ids=torch.stack([prompt_ids(p, width, TOKENS[p])[0] for p in prompts]))


def randomized(module, seed):
    """Seeded noise on every parameter and on the learned position table, so no layer is zero or an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            p.add_(torch.randn(p.shape, generator=g) * max(0.5 * p.std().item() if p.numel() > 1 else 0, 0.05))
    return module.eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(the reference's networks, the folder their save_pretrained wrote, our model loaded from it)."""
    torch.manual_seed(0)
    ref = SimpleNamespace(transformer=randomized(CogVideoXTransformer3DModel(**TRANSFORMER), 1).float(),  # its
                          # position table is made in float64: float32 like the rest, as from_pretrained would
                          vae=randomized(AutoencoderKLCogVideoX(**VAE), 2),
                          text_encoder=randomized(T5EncoderModel(T5Config(**T5)), 3))
    folder = tmp_path_factory.mktemp("cogvideox")
    ref.transformer.save_pretrained(folder / "transformer", max_shard_size="40KB")  # shards with an index
    ref.vae.save_pretrained(folder / "vae")
    ref.text_encoder.save_pretrained(folder / "text_encoder", max_shard_size="10KB")
    CogVideoXDDIMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    return ref, folder, load_cogvideox(folder, dtype=torch.float32)


def test_folder_is_the_official_layout_and_loads_strictly(release):
    ref, folder, model = release
    index = json.loads((folder / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    t5_keys = set(json.loads((folder / "text_encoder/model.safetensors.index.json").read_text())["weight_map"])
    assert "shared.weight" in t5_keys and "encoder.embed_tokens.weight" not in t5_keys  # tied, saved once
    assert model.text_encoder.encoder.embed_tokens is model.text_encoder.shared
    for name in ("transformer", "vae", "text_encoder"):
        ours, theirs = getattr(model, name).state_dict(), getattr(ref, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_prompt_ids():
    assert prompt_ids("").tolist() == [[1] + [0] * 225]
    assert prompt_ids("a photo", 6, [5, 17, 42, 1]).tolist() == [[5, 17, 42, 1, 0, 0]]
    with pytest.raises(ValueError, match="needs its token ids"):
        prompt_ids("a photo")


def test_token_ids_beyond_the_vocabulary_are_the_files_fault():
    """A tokenizer file with more pieces than the text encoder has embeddings: a WeightsError, not an IndexError."""
    encoder = T5Encoder(TINY_T5)
    with torch.no_grad():
        assert prompt_embeddings(encoder, prompt_ids("a photo", 8, [5, 98, 1])).shape == (1, 8, TINY_T5.d_model)
        with pytest.raises(WeightsError, match="token id 99, beyond the text encoder's 99 embeddings"):
            prompt_embeddings(encoder, prompt_ids("a photo", 8, [5, 99, 1]))


@pytest.mark.parametrize("scheduler, dynamic", [("ddim", False), ("dpm", False), ("ddim", True)])
def test_generate_equals_reference_pipeline(release, scheduler, dynamic):
    ref, _, model = release
    schedulers = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
    pipe = CogVideoXImageToVideoPipeline(StubTokenizer(), ref.text_encoder, ref.vae, ref.transformer,
                                         schedulers[scheduler](**SCHEDULER))
    photo = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    expected = pipe(photo[None], "a photo", negative_prompt="", height=SIZE[0], width=SIZE[1], num_frames=FRAMES,
                    num_inference_steps=STEPS, guidance_scale=6.0, use_dynamic_cfg=dynamic, max_sequence_length=LENGTH,
                    generator=torch.Generator().manual_seed(3), output_type="pt").frames[0]  # (F, 3, H, W) in [0,1]
    with torch.no_grad():
        text, empty = (prompt_embeddings(model.text_encoder, prompt_ids(p, LENGTH, TOKENS[p])) for p in ("a photo", ""))
    slim = CogVideoX(model.transformer, model.vae, None, model.source, model.schedule)  # T5 dropped after use
    frames = generate_cogvideox(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=empty, steps=STEPS,
                                scheduler=scheduler, dynamic_guidance=dynamic, num_frames=FRAMES, seed=3)
    assert frames.shape == (FRAMES, 3, *SIZE)
    assert max_abs_diff(f"{scheduler}{' dynamic' if dynamic else ''} frames", (frames + 1) / 2, expected) <= TOL
    if scheduler == "dpm":  # the same with the initial noise passed in: the other draws stay in place
        noise = torch.randn(5, 4, 4, 6, generator=torch.Generator().manual_seed(9))
        latents = generate_cogvideox(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=empty, steps=STEPS,
                                     scheduler="dpm", num_frames=FRAMES, seed=3, noise=noise, return_latents=True)
        expected = pipe(photo[None], "a photo", height=SIZE[0], width=SIZE[1], num_frames=FRAMES,
                        num_inference_steps=STEPS, max_sequence_length=LENGTH, latents=noise[None],
                        generator=torch.Generator().manual_seed(3), output_type="latent").frames[0]
        assert max_abs_diff("dpm latents, noise given", latents, expected) <= TOL


def test_bfloat16_draws_equal_reference(release):
    ref, folder, _ = release
    ref = SimpleNamespace(**{k: copy.deepcopy(v).to(torch.bfloat16) for k, v in vars(ref).items()})
    pipe = CogVideoXImageToVideoPipeline(StubTokenizer(), ref.text_encoder, ref.vae, ref.transformer,
                                         CogVideoXDPMScheduler(**SCHEDULER))
    photo = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    expected = pipe(photo[None], "a photo", height=SIZE[0], width=SIZE[1], num_frames=FRAMES, num_inference_steps=STEPS,
                    max_sequence_length=LENGTH, generator=torch.Generator().manual_seed(3), output_type="latent")
    model = load_cogvideox(folder)  # bfloat16
    with torch.no_grad():
        text, empty = (prompt_embeddings(model.text_encoder, prompt_ids(p, LENGTH, TOKENS[p])) for p in ("a photo", ""))
    latents = generate_cogvideox(model, photo * 2 - 1, prompt_embeds=text, negative_embeds=empty, steps=STEPS,
                                 scheduler="dpm", num_frames=FRAMES, seed=3, return_latents=True)
    assert latents.dtype == torch.bfloat16
    assert max_abs_diff("dpm latents, bfloat16", latents, expected.frames[0]) <= TOL


def test_broken_folders_are_one_line_errors(release, tmp_path):
    _, folder, _ = release
    for path in folder.rglob("*"):
        if path.is_file():
            (tmp_path / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path.relative_to(folder)).write_bytes(path.read_bytes())
    index = json.loads((tmp_path / "text_encoder/model.safetensors.index.json").read_text())["weight_map"]
    shard = tmp_path / "text_encoder" / index["shared.weight"]
    save_file(load_file(shard) | {"encoder.embed_tokens.weight": torch.zeros(99, 16)}, str(shard))  # both: fine
    assert torch.equal(load_cogvideox(tmp_path, dtype=torch.float32).text_encoder.shared.weight,
                       release[2].text_encoder.shared.weight)
    breakages = [
        ("transformer/diffusion_pytorch_model.safetensors.index.json", "{}", "not a readable safetensors index"),
        (next((tmp_path / "transformer").glob("*-00002-*")).relative_to(tmp_path), None, "missing file"),
        ("vae/config.json", '{"_class_name": "AutoencoderKL"}', "describes a 'AutoencoderKL'"),
        ("scheduler/scheduler_config.json", '{"_class_name": "CogVideoXDDIMScheduler", '
                                            '"prediction_type": "epsilon"}', "prediction_type"),
        # values are checked before anything is sized by them (1e9 timesteps took 24 GB), types too
        *(("scheduler/scheduler_config.json", '{"_class_name": "CogVideoXDDIMScheduler", ' + field + "}", key)
          for field, key in (('"num_train_timesteps": 1000000000', "num_train_timesteps = 1000000000"),
                             ('"num_train_timesteps": "1000"', "num_train_timesteps = '1000'"),
                             ('"beta_end": [0.012]', "beta_end"), ('"snr_shift_scale": -1', "snr_shift_scale"),
                             ('"rescale_betas_zero_snr": "yes"', "rescale_betas_zero_snr"),
                             ('"steps_offset": 1000', "steps_offset"))),
    ]
    for relpath, text, message in breakages:
        path = tmp_path / relpath
        saved = path.read_bytes()
        path.unlink() if text is None else path.write_text(text)
        with pytest.raises(WeightsError, match=message) as error:
            load_cogvideox(tmp_path, dtype=torch.float32)
        assert "\n" not in str(error.value)
        path.write_bytes(saved)
    # a text encoder saved as one file without an index (as save_pretrained does below its shard size)
    single = {}
    for shard in sorted((tmp_path / "text_encoder").glob("*.safetensors")):
        single |= load_file(shard)
        shard.unlink()
    (tmp_path / "text_encoder/model.safetensors.index.json").unlink()
    save_file(single, str(tmp_path / "text_encoder/model.safetensors"))
    assert torch.equal(load_cogvideox(tmp_path, dtype=torch.float32).text_encoder.shared.weight,
                       release[2].text_encoder.shared.weight)
