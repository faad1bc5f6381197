"""generate_wan is diffusers' WanImageToVideoPipeline with expand_timesteps (the TI2V-5B release's): on tiny random
networks (the Wan2.2 VAE with narrow widths, a 2-layer DiT, a tiny umT5) written to a folder in the official layout by
the references' own save_pretrained and loaded strictly by load_wan, the frames equal the pipeline's to 1e-3
(float32) with the same seed and the release's UniPC scheduler (flow prediction, shift 5), guidance 5 with a prompt.
The parity covers UniPC; the Euler sampler is tested against diffusers' Euler step in test_wan_scheduler.py. The
tokenizer is a stub returning fixed ids (the hub is unreachable), and ftfy, which the reference's prompt cleaning
imports, is stubbed to the identity (not installed)."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.pipelines.wan import pipeline_wan_i2v
from transformers import UMT5Config, UMT5EncoderModel

from pipelines.wan import Wan, generate_wan, load_wan, prompt_embeddings, prompt_ids
from weights import WeightsError

TOL = 1e-3
LENGTH = 8  # tokens per prompt (512 as released)
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                   text_dim=16, freq_dim=8, ffn_dim=40, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
VAE = dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
           temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
           scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.1, -0.2, 0.3, 0.0],
           latents_std=[1.5, 0.5, 2.0, 1.0])
UMT5 = dict(vocab_size=99, d_model=16, d_kv=8, d_ff=37, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu")
SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                 solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
TOKENS = {"a photo": [5, 17, 42, 1], "": [1]}  # the stub tokenizer's ids, </s> (1) included
SIZE, FRAMES, STEPS = (64, 96), 9, 4  # 9 frames = 3 latent frames of 4x6 latents, 2x3 tokens each


class StubTokenizer:
    """Stands in for umT5's tokenizer in the pipeline: the fixed ids of TOKENS, padded with 0 to max_length."""

    def __call__(self, prompts, max_length=None, **_):
        ids, masks = zip(*(prompt_ids(p, max_length, TOKENS[p]) for p in prompts))
        return SimpleNamespace(input_ids=torch.cat(ids), attention_mask=torch.cat(masks))


def randomized(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * max(0.5 * p.std().item() if p.numel() > 1 else 0, 0.05))
    return module.eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(the reference's networks, the folder their save_pretrained wrote, our model loaded from it)."""
    torch.manual_seed(0)
    ref = SimpleNamespace(transformer=randomized(WanTransformer3DModel(**TRANSFORMER), 1),
                          vae=randomized(AutoencoderKLWan(**VAE), 2),
                          text_encoder=randomized(UMT5EncoderModel(UMT5Config(**UMT5)), 3))
    folder = tmp_path_factory.mktemp("wan")
    ref.transformer.save_pretrained(folder / "transformer", max_shard_size="20KB")  # shards with an index
    ref.vae.save_pretrained(folder / "vae")
    ref.text_encoder.save_pretrained(folder / "text_encoder", max_shard_size="10KB")
    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    return ref, folder, load_wan(folder, dtype=torch.float32)


def test_folder_is_the_official_layout_and_loads_strictly(release):
    ref, folder, model = release
    index = json.loads((folder / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert model.text_encoder.encoder.embed_tokens is model.text_encoder.shared
    assert model.schedule == {"num_train_timesteps": 1000, "flow_shift": 5.0}
    for name in ("transformer", "vae", "text_encoder"):
        ours, theirs = getattr(model, name).state_dict(), getattr(ref, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_generate_equals_reference_pipeline(release, monkeypatch):
    ref, _, model = release
    monkeypatch.setattr(pipeline_wan_i2v, "ftfy", SimpleNamespace(fix_text=lambda text: text), raising=False)
    pipe = WanImageToVideoPipeline(StubTokenizer(), ref.text_encoder, ref.vae, UniPCMultistepScheduler(**SCHEDULER),
                                   transformer=ref.transformer, expand_timesteps=True)
    photo = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    expected = pipe(photo[None], "a photo", negative_prompt="", height=SIZE[0], width=SIZE[1], num_frames=FRAMES,
                    num_inference_steps=STEPS, guidance_scale=5.0, max_sequence_length=LENGTH,
                    generator=torch.Generator().manual_seed(3), output_type="pt").frames[0]  # (F, 3, H, W) in [0,1]
    with torch.no_grad():
        text, empty = (prompt_embeddings(model.text_encoder, *prompt_ids(p, LENGTH, TOKENS[p]))
                       for p in ("a photo", ""))
    slim = Wan(model.transformer, model.vae, None, model.source, model.schedule)  # umT5 dropped after use
    frames = generate_wan(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=empty, steps=STEPS,
                          num_frames=FRAMES, seed=3)
    assert frames.shape == (FRAMES, 3, *SIZE)
    diff = ((frames + 1) / 2 - expected).abs().max().item()
    print(f"\n[parity] wan frames, unipc {STEPS} steps, guidance 5: max abs diff {diff:.3e} "
          f"(frames' std {expected.std().item():.3g})")
    assert diff <= TOL
    # the latents with the noise passed in, against the reference's latents output
    noise = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(9))
    latents = generate_wan(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=empty, steps=STEPS,
                           num_frames=FRAMES, noise=noise, return_latents=True)
    expected = pipe(photo[None], "a photo", height=SIZE[0], width=SIZE[1], num_frames=FRAMES,
                    num_inference_steps=STEPS, max_sequence_length=LENGTH, latents=noise,
                    output_type="latent").frames[0]
    diff = (latents - expected).abs().max().item()
    print(f"[parity] wan latents, noise given: max abs diff {diff:.3e}")
    assert diff <= TOL


def test_broken_folders_are_one_line_errors(release, tmp_path):
    _, folder, _ = release
    for path in folder.rglob("*"):
        if path.is_file():
            (tmp_path / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path.relative_to(folder)).write_bytes(path.read_bytes())
    breakages = [
        ("transformer/diffusion_pytorch_model.safetensors.index.json", "{}", "not a readable safetensors index"),
        ("vae/config.json", '{"_class_name": "AutoencoderKLWan", "is_residual": false}', "Wan2.2 layout"),
        ("scheduler/scheduler_config.json", '{"_class_name": "UniPCMultistepScheduler", "prediction_type": '
                                            '"epsilon"}', "prediction_type"),
        ("scheduler/scheduler_config.json", '{"_class_name": "UniPCMultistepScheduler", "flow_shift": "5"}',
         "flow_shift"),
    ]
    for relpath, text, message in breakages:
        path = tmp_path / relpath
        saved = path.read_bytes()
        path.write_text(text)
        with pytest.raises(WeightsError, match=message) as error:
            load_wan(tmp_path, dtype=torch.float32)
        assert "\n" not in str(error.value)
        path.write_bytes(saved)


def test_bfloat16_transformer_equals_reference(release):
    """Loaded in bfloat16, the parts the reference keeps in float32 (its _keep_in_fp32_modules, applied by its loader
    to every parameter with such a name among its dotted components; its loader needs accelerate, not installed, so
    the rule is applied here) stay float32 here too, and the outputs are bit-equal."""
    ref_networks, folder, _ = release
    ref = copy.deepcopy(ref_networks.transformer)
    keep = type(ref)._keep_in_fp32_modules
    for name, p in ref.named_parameters():
        if not any(part in name.split(".") for part in keep):
            p.data = p.data.to(torch.bfloat16)
    ours = load_wan(folder).transformer
    kept = {k for k, v in ref.state_dict().items() if v.dtype == torch.float32}
    assert kept and kept == {k for k, v in ours.state_dict().items() if v.dtype == torch.float32}
    x = torch.randn(1, 4, 3, 4, 6).to(torch.bfloat16)
    t = torch.tensor([[0.0] * 6 + [700.0] * 12])  # frame 0's tokens at 0
    text = torch.randn(1, LENGTH, 16).to(torch.bfloat16)
    with torch.no_grad():
        expected, (out, _) = ref(x, t, text).sample, ours(x, t, text)
    assert out.dtype == expected.dtype == torch.bfloat16
    diff = (out.float() - expected.float()).abs().max().item()
    print(f"\n[parity] wan transformer bf16: max abs diff {diff:.3e} (max |ref| {expected.abs().max().item():.3g})")
    assert diff == 0
