"""generate_wan is diffusers' WanImageToVideoPipeline with expand_timesteps (the TI2V-5B release's): on tiny random
networks (the Wan2.2 VAE with narrow widths, a 2-layer DiT, a tiny umT5) written to a folder in the official layout by
the references' own save_pretrained and loaded strictly by load_wan, the frames equal the pipeline's to 1e-3
(float32) with the same seed and the release's UniPC scheduler (flow prediction, shift 5; diffusers' sigma grid),
guidance 5 with a prompt and the release's negative prompt, each cleaned (ftfy and all) and tokenised by the
reference: a SentencePiece model trained here as umT5's was (byte fallback), read by transformers' T5Tokenizer there
and by pipelines/tokenizer.py here. G of WanPipeline loaded from the folder is the pipeline's guided step to 1e-4.
The parity covers UniPC; the Euler sampler is tested against diffusers' Euler step in test_wan_scheduler.py."""
import copy
import json
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from pipelines.prompts import RELEASE_NEGATIVE_PROMPT
from pipelines.wan import Wan, WanPipeline, generate_wan, load_tokenizer, load_wan, prompt_embeddings, prompt_ids
from weights import WeightsError

TOL = 1e-3
LENGTH = 512  # tokens per prompt, as released
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                   text_dim=16, freq_dim=8, ffn_dim=40, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
VAE = dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
           temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
           scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.1, -0.2, 0.3, 0.0],
           latents_std=[1.5, 0.5, 2.0, 1.0])
UMT5 = dict(vocab_size=400, d_model=16, d_kv=8, d_ff=37, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu")
SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                 solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
PROMPT = "A cat walks  \u201cslowly\u201d &amp; turns\u2019 its head\nto the camera."  # cleaning has work to do
SIZE, FRAMES, STEPS = (64, 96), 9, 4  # 9 frames = 3 latent frames of 4x6 latents, 2x3 tokens each
CORPUS = ["A cat walks slowly across the room and turns its head.", "The camera pans to the left; a dog runs by.",
          "A woman smiles at the camera, then waves her hand.", "Leaves fall in the wind under a grey sky."]


def train_tokenizer(folder):
    """tokenizer/spiece.model as umT5's was made: Unigram, nmt_nfkc, byte fallback, <pad> 0, </s> 1, <unk> 2."""
    (folder / "tokenizer").mkdir()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(folder / "tokenizer/spiece"), model_type="unigram",
        normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
        vocab_size=330, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return T5Tokenizer.from_pretrained(folder / "tokenizer")  # converted from spiece.model, offline


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
    ref.tokenizer = train_tokenizer(folder)
    return ref, folder, load_wan(folder, dtype=torch.float32)


def reference_pipeline(ref):
    return WanImageToVideoPipeline(ref.tokenizer, ref.text_encoder, ref.vae, UniPCMultistepScheduler(**SCHEDULER),
                                   transformer=ref.transformer, expand_timesteps=True)


def test_prompts_are_tokenised_as_the_reference_does(release):
    """Our cleaning and tokenizer give the reference's input ids and mask, for prompts that need the cleaning (curly
    quotes, entities, line breaks) and byte fallback (the release's negative prompt is Chinese)."""
    ref, folder, _ = release
    tokenizer = load_tokenizer(folder)
    for text in (PROMPT, RELEASE_NEGATIVE_PROMPT, "", "  \t", "caf\u00e9 \u2018ok\u2019 &lt;b&gt;", "x" * 600):
        expected = ref.tokenizer([prompt_clean(text)], padding="max_length", max_length=LENGTH, truncation=True,
                                 add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = prompt_ids(tokenizer, text, LENGTH)
        assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask), text


def test_folder_is_the_official_layout_and_loads_strictly(release):
    ref, folder, model = release
    index = json.loads((folder / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert model.text_encoder.encoder.embed_tokens is model.text_encoder.shared
    assert model.schedule == {"num_train_timesteps": 1000, "flow_shift": 5.0, "grid": "release"}
    for name in ("transformer", "vae", "text_encoder"):
        ours, theirs = getattr(model, name).state_dict(), getattr(ref, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_generate_equals_reference_pipeline(release):
    ref, folder, model = release
    pipe = reference_pipeline(ref)
    photo = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(5))
    expected = pipe(photo[None], PROMPT, negative_prompt=RELEASE_NEGATIVE_PROMPT, height=SIZE[0], width=SIZE[1],
                    num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=5.0, max_sequence_length=LENGTH,
                    generator=torch.Generator().manual_seed(3), output_type="pt").frames[0]  # (F, 3, H, W) in [0,1]
    tokenizer = load_tokenizer(folder)
    with torch.no_grad():
        text, negative = (prompt_embeddings(model.text_encoder, *prompt_ids(tokenizer, p))
                          for p in (PROMPT, RELEASE_NEGATIVE_PROMPT))
    slim = Wan(model.transformer, model.vae, None, model.source, model.schedule | {"grid": "diffusers"})
    frames = generate_wan(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=negative, steps=STEPS,
                          num_frames=FRAMES, seed=3)
    assert frames.shape == (FRAMES, 3, *SIZE)
    diff = ((frames + 1) / 2 - expected).abs().max().item()
    print(f"\n[parity] wan frames, unipc {STEPS} steps, guidance 5: max abs diff {diff:.3e} "
          f"(frames' std {expected.std().item():.3g})")
    assert diff <= TOL
    # the latents with the noise passed in, against the reference's latents output
    noise = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(9))
    latents = generate_wan(slim, photo * 2 - 1, prompt_embeds=text, negative_embeds=negative, steps=STEPS,
                           num_frames=FRAMES, noise=noise, return_latents=True)
    expected = pipe(photo[None], PROMPT, negative_prompt=RELEASE_NEGATIVE_PROMPT, height=SIZE[0], width=SIZE[1],
                    num_frames=FRAMES, num_inference_steps=STEPS, max_sequence_length=LENGTH, latents=noise,
                    output_type="latent").frames[0]
    diff = (latents - expected).abs().max().item()
    print(f"[parity] wan latents, noise given: max abs diff {diff:.3e}")
    assert diff <= TOL


def test_g_equals_the_reference_guided_step(release):
    """G of WanPipeline (loaded from the folder, the prompt and the release's negative prompt embedded there) is the
    reference pipeline's guided step: one UniPC step lands on sigma 0, so its output is the guided X0_hat, frame 0
    replaced by the photo's latent."""
    ref, folder, _ = release
    model = WanPipeline(load_wan(folder, dtype=torch.float32), prompts=[PROMPT])
    model.networks.schedule["grid"] = "diffusers"
    photo = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(6))
    noise = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(8))
    expected = reference_pipeline(ref)(photo[None], PROMPT, negative_prompt=RELEASE_NEGATIVE_PROMPT, height=SIZE[0],
                                       width=SIZE[1], num_frames=FRAMES, num_inference_steps=1, guidance_scale=5.0,
                                       latents=noise, output_type="latent").frames[0]
    sigma = model.noise_levels(1)[0]
    with torch.no_grad():
        X0_hat, _ = model.G(noise, sigma, model.E(photo[None], 0, SIZE), None, 0)
    diff = (X0_hat[0] - expected).abs().max().item()
    print(f"\n[parity] wan G, guided step: max abs diff {diff:.3e}")
    assert diff <= 1e-4


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
