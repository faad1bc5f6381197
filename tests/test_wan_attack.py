"""attack.py's Objective and protect against Wan2.2-TI2V-5B's pieces (wan.WanPipeline) on the tiny random Wan: each
loss term, alone, moves the intended way; each ablation removes exactly its term; G is the sampler's guided
prediction with frame 0 replaced by E(I); the prompts are drawn per iteration, each with its own V_0; the encoder's
gradient reaches the photo (equal to finite differences in float64); and at I_adv = I_src the frame-attention
distance and its gradient are exactly zero in float64, at every noise level, the source pass stopping after the
maps (maps_only)."""
import pytest
import torch

from attack import TERMS, Objective, protect, selected_terms
from losses import attention_distance, total_loss
from model.wan.scheduler import flow_sigmas
from pipelines.prompts import ATTACK_PROMPTS
from pipelines.wan import WanPipeline, generate_wan, load_by_name, tiny_wan

pytestmark = pytest.mark.filterwarnings("ignore:tiny_wan:UserWarning")

SIZE, FRAMES, SAMPLE_STEPS = (64, 64), 9, 4  # 4x4 latents (2x2 tokens a frame), 3 latent frames


def pipeline(dtype=torch.float32, **kwargs):
    return WanPipeline(tiny_wan(0, dtype), **kwargs)


@pytest.fixture(scope="module")
def model():
    return pipeline()


@pytest.fixture(scope="module")
def I_src():
    """A smooth photo with some texture, at another size than the model's: E resizes it."""
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 4, generator=g), size=(72, 60), mode="bilinear")
    return (smooth[0] + 0.05 * torch.rand(3, 72, 60, generator=g)).clamp(0, 1)


def objective(model, I_src, terms):
    return Objective(model, I_src[None], terms, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                     attn_blocks=model.default_attn_blocks(), sample_steps=SAMPLE_STEPS, seed=0)


def mean_over_draws(obj, I, measure, n=6):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(measure(obj, I[None], obj.draw(g)) for _ in range(n)) / n


def att_distance(obj, I, draw):
    """||A_adv - A_src||^2 for I at this draw."""
    d, sigma, noise, _ = draw
    model = obj.model
    X_t = model.S(obj.X_0, sigma, noise)
    maps = [model.G(X_t, sigma, model.E(photo, d, obj.size), None, d, obj.attn_blocks)[1] for photo in (I, obj.I_src)]
    return attention_distance(*maps).item()


def test_pieces(model):
    assert model.untrained and model.embed(torch.zeros(1, 3, 8, 8)) is None
    assert model.networks.text_encoder is None and model.prompts == ATTACK_PROMPTS  # umT5 freed
    assert [e.shape for e in model.prompt_embeds] == [(1, 512, 16)] * 3 and model.motions == 3
    g = torch.Generator().manual_seed(0)
    assert {model.draw(g, SIZE) for _ in range(30)} == {0, 1, 2}  # the prompts, drawn per iteration
    assert pipeline(prompts=["a cat"]).draw(g, SIZE) == 0
    assert model.default_attn_blocks() == ("blocks.1.attn1", "blocks.2.attn1")
    assert model.noise_levels(4) == flow_sigmas(4)[0][:-1].tolist() and len(model.noise_levels(50)) == 50
    assert model.noise_levels(50)[0] == pytest.approx(5 * 0.999 / (1 + 4 * 0.999))  # the release's grid
    X_0 = torch.randn(1, 4, 3, 4, 4)
    assert torch.equal(model.S(X_0, 1.0, X_0 + 1), X_0 + 1) and torch.equal(model.S(X_0, 0.0, X_0 + 1), X_0)
    V = model.P(torch.rand(1, 3, 72, 60), size=SIZE, num_frames=FRAMES, steps=2, seed=0)
    assert V.shape == (FRAMES, 3, *SIZE) and model.encode_frames(V).shape == (1, 4, 3, 4, 4)
    assert model.size_problem(SIZE, 8) and model.size_problem((48, 64), FRAMES) and not model.size_problem(SIZE, 5)


def test_g_is_the_sampler_s_guided_prediction():
    """With a prompt, G is the guided v_u + 5 (v_c - v_u) turned into X0_hat with frame 0 = E(I): what one UniPC step
    from the first sigma makes (its last step lands on sigma 0, the predicted clean latents)."""
    model = pipeline(prompts=["a cat walks"])
    I = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn((1, 4, 3, 4, 4), generator=torch.Generator().manual_seed(7))
    sigma = model.noise_levels(1)[0]
    with torch.no_grad():
        X0_hat, maps = model.G(noise, sigma, model.E(I, 0, SIZE), None, 0, model.default_attn_blocks())
        sampled = generate_wan(model.networks, I[0] * 2 - 1, prompt_embeds=model.prompt_embeds[0],
                               negative_embeds=model.negative_embeds, steps=1, guidance=5.0, num_frames=FRAMES,
                               noise=noise, return_latents=True)
    torch.testing.assert_close(X0_hat[0], sampled)
    assert all(m.shape == (2 * 4, 2, 3, 3) for m in maps.values())  # both passes x 2x2 token positions
    unguided = pipeline(prompts=["a cat walks"], guidance=1.0)
    with torch.no_grad():
        one_pass, _ = unguided.G(noise, sigma, unguided.E(I, 0, SIZE), None, 0)
    assert (one_pass - X0_hat).abs().max() > 1e-4  # guidance made a difference
    image_only = pipeline(prompts=[""], negative_prompt="")  # the prompt is the negative prompt: one pass
    with torch.no_grad():
        _, maps = image_only.G(noise, sigma, image_only.E(I, 0, SIZE), None, 0, model.default_attn_blocks())
    assert all(m.shape == (4, 2, 3, 3) for m in maps.values())


def test_each_prompt_has_its_own_v0(model, I_src):
    """One V_0 per prompt, as P follows it; an iteration is measured against the X_0 of the prompt it drew."""
    obj = objective(model, I_src, TERMS)
    assert obj.X_0_k.shape[0] == 3
    with torch.no_grad():
        for k in range(3):
            V = model.P(I_src[None], size=SIZE, num_frames=FRAMES, steps=SAMPLE_STEPS, seed=0, motion=k)
            assert torch.equal(obj.X_0_k[k:k + 1], model.encode_frames(V))
    assert (obj.X_0_k[1] - obj.X_0_k[0]).abs().max() > 0  # the prompts make different videos


@pytest.mark.parametrize("term, measure, direction", [
    ("enc", lambda o, I, d: o(I, d)["enc"].item(), "down"),
    ("con", lambda o, I, d: o(I, d)["con"].item(), "down"),
    ("att", att_distance, "up"),
])
def test_one_term_moves_the_intended_way(model, I_src, term, measure, direction):
    I_adv, history = protect(model, I_src, terms=("img", term), steps=10, size=SIZE, num_frames=FRAMES,
                             sample_steps=SAMPLE_STEPS, seed=0)
    obj = objective(model, I_src, ("img", term))
    before, after = mean_over_draws(obj, I_src, measure), mean_over_draws(obj, I_adv, measure)
    print(f"\n[attack] wan {term}: {before:.6g} -> {after:.6g}")
    assert (after < before) if direction == "down" else (after > before)
    assert len(history["steps"]) == 10 and history["weights"][term] > 0


@pytest.mark.parametrize("flag, term", [("no_spatial", "enc"), ("no_temporal", "att"), ("no_diffusion", "con")])
def test_each_ablation_removes_exactly_its_term(I_src, flag, term):
    model = pipeline(torch.float64)
    I_src = I_src.double()
    terms = selected_terms(**{flag: True})
    assert set(TERMS) - set(terms) == {term}
    full, ablated = objective(model, I_src, TERMS), objective(model, I_src, terms)
    I_adv = (I_src + 4 / 255 * torch.randn(I_src.shape).sign()).clamp(0, 1)[None].requires_grad_()
    weights = {"img": 1.0, "enc": 2.0, "con": 3.0, "att": 5.0}
    draw = full.draw(torch.Generator().manual_seed(1))
    values = ablated(I_adv, draw)
    assert term not in values
    g_ablated, = torch.autograd.grad(total_loss(values, weights), I_adv)
    full_values = full(I_adv, draw)
    g_rest, = torch.autograd.grad(total_loss({k: v for k, v in full_values.items() if k != term}, weights), I_adv)
    torch.testing.assert_close(g_ablated, g_rest, rtol=1e-5, atol=1e-8)


def test_encoder_gradient_reaches_the_photo(I_src):
    """dE/dI through the resize and the causal VAE encoder (frame 0 alone) equals central differences."""
    model = pipeline(torch.float64)
    I = I_src.double()[None].requires_grad_()
    g = torch.Generator().manual_seed(0)
    w, v = torch.randn(1, 4, 1, 4, 4, generator=g).double(), torch.randn(I.shape, generator=g).double()
    x = model.E(I, None, SIZE)
    assert x.shape == (1, 4, 1, 4, 4) and torch.equal(x, model.E(I, None, SIZE))  # the mean: no draw
    grad, = torch.autograd.grad((x * w).sum(), I)
    # the centre crop: 72x60 covers 64x64 resized to 77x64, rows 6-69 kept, rows 5.6-65.5 of the photo
    top, left, h, w_seen = model.seen_box(I.shape[-2:], SIZE)
    assert (top, left, h, w_seen) == (5, 0, 61, 60)
    inside = grad[..., top:top + h, :]
    assert (inside != 0).float().mean() > 0.99  # outside, only the resize kernel's reach:
    assert (grad.abs().sum() - inside.abs().sum()) / grad.abs().sum() < 0.01 and (grad[..., :top - 1, :] == 0).all()
    h = 1e-5
    with torch.no_grad():
        numeric = ((model.E(I + h * v, None, SIZE) - model.E(I - h * v, None, SIZE)) * w).sum() / (2 * h)
    assert numeric.item() == pytest.approx((grad * v).sum().item(), rel=1e-6)


def test_distances_vanish_at_the_source(I_src):
    model = pipeline(torch.float64)
    I_src = I_src.double()
    obj = objective(model, I_src, ("img", "enc", "att"))
    g = torch.Generator().manual_seed(7)
    for step in range(SAMPLE_STEPS):  # every noise level, each with its own X_t noise
        I_adv = I_src[None].clone().requires_grad_()
        values = obj(I_adv, obj.draw(g, step))
        distance = obj.tau2 - values["att"]  # L_att = tau2 - ||A_adv - A_src||^2
        grad, = torch.autograd.grad(distance, I_adv)
        assert values["img"].item() == 0 and distance.item() == 0 and grad.abs().max().item() == 0


def test_tiny_is_said_to_be_untrained(capsys):
    networks = load_by_name("tiny-wan", torch.float32)
    assert networks.untrained and "UNTRAINED" in capsys.readouterr().err


def test_l_con_target_is_the_black_video_s_latents(model, I_src):
    """X_tg = E(V_tg) for a black video V_tg: through the causal VAE its later latent frames are not frame 0's."""
    X_tg = objective(model, I_src, ("con",)).X_tg
    frame_0 = model.encode_frames(-torch.ones(1, 3, *SIZE))  # (1, z, 1, h, w)
    assert torch.equal(X_tg, model.encode_frames(-torch.ones(FRAMES, 3, *SIZE)))
    assert torch.equal(X_tg[:, :, :1], frame_0) and (X_tg[:, :, 1:] - frame_0).abs().max() > 0.1

