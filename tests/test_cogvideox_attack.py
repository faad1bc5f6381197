"""attack.py against CogVideoX-5B-I2V's pieces (cogvideox.CogVideoXPipeline) on the tiny random CogVideoX: each loss
term, alone, moves the intended way; each ablation removes exactly its term; the encoder's gradient reaches the photo
(equal to finite differences in float64); and at I_adv = I_src the frame-attention distance and its gradient are
exactly zero in float64, every noise level, the source pass stopping after the maps (maps_only)."""
import pytest
import torch

from attack import Objective
from losses import attention_distance
from pipelines.cogvideox import TINY_TRANSFORMER, CogVideoXPipeline, generate_cogvideox, load_by_name, tiny_cogvideox

pytestmark = pytest.mark.filterwarnings("ignore:tiny_cogvideox:UserWarning")

SIZE, SAMPLE_STEPS = (32, 32), 4  # the tiny's learned position table is for 32x32 photos
FRAMES = TINY_TRANSFORMER.sample_frames  # 17 frames: 5 latent frames (encoded in chunks of 9 + 8 frames)


def pipeline(dtype=torch.float32):
    return CogVideoXPipeline(tiny_cogvideox(0, dtype))


@pytest.fixture(scope="module")
def model():
    return pipeline()


@pytest.fixture(scope="module")
def I_src():
    """A smooth photo with some texture, at another size than the model's: E resizes it."""
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 4, generator=g), size=(40, 36), mode="bilinear")
    return (smooth[0] + 0.05 * torch.rand(3, 40, 36, generator=g)).clamp(0, 1)


def objective(model, I_src, terms):
    return Objective(model, I_src[None], terms, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                     attn_blocks=model.default_attn_blocks(), sample_steps=SAMPLE_STEPS, seed=0)


def mean_over_draws(obj, I, measure, n=8):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(measure(obj, I[None], obj.draw(g)) for _ in range(n)) / n


def att_distance(obj, I, draw):
    """||A_adv - A_src||^2 for I at this draw, both photos encoded through the same posterior draw d."""
    d, t, noise, _ = draw
    model = obj.model
    X_t = model.S(obj.X_0, t, noise)
    maps = [model.G(X_t, t, model.E(photo, d, obj.size), None, d, obj.attn_blocks)[1] for photo in (I, obj.I_src)]
    return attention_distance(*maps).item()


def test_pieces(model):
    assert model.untrained and model.embed(torch.zeros(1, 3, 8, 8)) is None
    assert model.networks.text_encoder is None and model.prompt_embeds.shape == (1, 226, 16)  # T5 freed
    assert model.default_attn_blocks() == ("transformer_blocks.1.attn1", "transformer_blocks.2.attn1")
    assert model.noise_levels(4) == [999, 749, 499, 249] and len(model.noise_levels(50)) == 50
    X_0 = torch.randn(1, 4, 4, 4, 4)
    assert torch.equal(model.S(X_0, 999, X_0 + 1), X_0 + 1)  # zero terminal SNR: X_999 is the noise
    V = model.P(torch.rand(1, 3, 40, 36), size=SIZE, num_frames=FRAMES, steps=2, seed=0)
    assert V.shape == (FRAMES, 3, *SIZE) and model.encode_frames(V).shape == (1, 5, 4, 4, 4)
    # Objective's X_tg, one black frame's latent repeated, is the causal VAE's latent of black frames
    black = model.encode_frames(-torch.ones_like(V))
    torch.testing.assert_close(model.encode_frames(-torch.ones_like(V[:1])).expand_as(black), black)


def test_with_a_prompt_g_is_the_sampler_s_guided_prediction():
    """With a prompt, G is the guided v_u + 6 (v_c - v_u) as X0_hat: what the sampler makes in one DDIM step
    from t = 999, the last step, whose result is the predicted clean latents. The maps are both passes'."""
    model = CogVideoXPipeline(tiny_cogvideox(0), token_ids=[5, 6, 7, 1])
    assert model.prompt_embeds is not model.negative_embeds
    I = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(7)  # the sampler's generator: first the posterior draw d, then the noise
    d = model.draw(g, SIZE)
    noise = torch.randn((5, 4, 4, 4), generator=g)  # (f, C, h, w) = X_999
    with torch.no_grad():
        X0_hat, maps = model.G(noise[None], 999, model.E(I, d, SIZE), None, d, model.default_attn_blocks())
        sampled = generate_cogvideox(model.networks, I[0] * 2 - 1, prompt_embeds=model.prompt_embeds,
                                     negative_embeds=model.negative_embeds, steps=1, guidance=6.0, num_frames=FRAMES,
                                     seed=7, noise=noise, return_latents=True)
    torch.testing.assert_close(X0_hat[0].float(), sampled.float())
    assert all(m.shape == (2 * 4, 2, 5, 5) for m in maps.values())  # both passes x 2x2 token positions
    unguided = CogVideoXPipeline(tiny_cogvideox(0), token_ids=[5, 6, 7, 1], guidance=1.0)
    with torch.no_grad():
        one_pass, _ = unguided.G(noise[None], 999, unguided.E(I, d, SIZE), None, d)
    assert (one_pass - X0_hat).abs().max() > 1e-4  # guidance made a difference


def test_encoder_gradient_reaches_the_photo(I_src):
    """dE/dI through the resize, the causal VAE encoder and the posterior sample equals central differences."""
    model = pipeline(torch.float64)
    I = I_src.double()[None].requires_grad_()
    g = torch.Generator().manual_seed(0)
    d, w, v = model.draw(g, SIZE), torch.randn(1, 1, 4, 4, 4, generator=g).double(), torch.randn(I.shape, generator=g)
    x = model.E(I, d, SIZE)
    assert x.shape == (1, 1, 4, 4, 4) and not torch.equal(x, model.E(I, model.draw(g, SIZE), SIZE))  # a sample
    grad, = torch.autograd.grad((x * w).sum(), I)
    assert (grad != 0).float().mean() > 0.99  # every pixel reaches the latent through the antialiased resize
    h = 1e-5  # the central difference: O(h^2) error, 1e-5 relative at h = 1e-4
    with torch.no_grad():
        numeric = ((model.E(I + h * v, d, SIZE) - model.E(I - h * v, d, SIZE)) * w).sum() / (2 * h)
    assert numeric.item() == pytest.approx((grad * v).sum().item(), rel=1e-6)


def test_attention_distance_and_gradient_vanish_at_the_source(I_src):
    model = pipeline(torch.float64)
    I_src = I_src.double()
    obj = objective(model, I_src, ("img", "enc", "att"))
    g = torch.Generator().manual_seed(7)
    for step in range(SAMPLE_STEPS):  # every noise level, each with its own posterior draw and X_t noise
        I_adv = I_src[None].clone().requires_grad_()
        values = obj(I_adv, obj.draw(g, step))
        distance = obj.tau2 - values["att"]  # L_att = tau2 - ||A_adv - A_src||^2
        grad, = torch.autograd.grad(distance, I_adv)
        assert distance.item() == 0 and grad.abs().max().item() == 0


def test_tiny_is_said_to_be_untrained(capsys):
    networks = load_by_name("tiny-cogvideox", torch.float32)
    assert networks.untrained and "UNTRAINED" in capsys.readouterr().err


def test_attack_command_defaults_and_prompt_refusals(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    import attack
    photo = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(0).random((40, 36, 3)) * 255).astype(np.uint8)).save(photo)
    attack.main(["--image", str(photo), "--model", "tiny-cogvideox", "--steps", "2", "--sample-steps", "2",
                 "--preview"])
    report = json.loads((tmp_path / "p.guarded.json").read_text())
    with Image.open(tmp_path / "p.guarded.attention.png") as figure:  # two blocks; the third panel: F x F entries
        assert figure.height > 2 * 5 * 24
    assert report["settings"]["eps"] == 16 / 255 and report["linf_8bit_levels"] == 16
    assert "prompt" not in report["settings"]
    capsys.readouterr()
    for model, prompt, message in (("tiny", "a cat", "only for a text-conditioned model"),
                                   ("tiny-cogvideox", "a cat", "no tokenizer")):
        with pytest.raises(SystemExit) as e:
            attack.main(["--image", str(photo), "--out", str(tmp_path / "q.png"), "--model", model, "--prompt", prompt])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and message in err[-1] and "error: --prompt" in err[-1]
    # sizes and frame counts the networks cannot take: refused before any photo, status 2, one line
    for flags, message in ((["--frames", "8"], "4k + 1 frames"), (["--height", "8"], "position table takes 32x32"),
                           (["--height", "40", "--width", "40"], "position table takes 32x32")):
        with pytest.raises(SystemExit) as e:
            attack.main(["--image", str(photo), "--out", str(tmp_path / "q.png"), "--model", "tiny-cogvideox", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and message in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "q.png").exists()
