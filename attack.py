"""I2VGuard: protect a photo from being animated by an image-to-video model (CVPR 2025, Algorithm 1).

Adds a perturbation of at most --eps per pixel and channel that makes the model produce a degraded,
incoherent video from the photo. It attacks three things at once (paper Eq. 1-4, losses.py):
  spatial    L_enc: the encoder's latent of the photo is pulled to that of a black image;
  temporal   L_att: the denoiser's temporal self-attention maps are pushed away from the source's;
  diffusion  L_con: the denoiser's predicted clean frames move to black frames and away from the
             video the model makes of the clean photo.
The model comes as the pieces Algorithm 1 names (pipelines/__init__.py): its pipeline P, encoder E,
noising S and denoiser G; any model that provides them can be attacked.
The guarded photo is written as a PNG at the photo's own size, whatever the input's format: PNG is
lossless, and a JPEG re-encode would spend part of the protection before anyone animates the photo
(docs/robustness.md measures how much survives one). A JSON report goes beside it. A photo whose report
already records the same settings is skipped, so a rerun resumes; many photos can be shared among GPUs
with torchrun or --shard (plumbing/shard.py). With --eot, each iteration attacks the photo as the
adversary may receive it: recompressed, resized, cropped, blurred, noisy, denoised or through the model's own
VAE (judging/transforms.py).

example: python attack.py --image examples/astronaut_face.png --model toy --preview
"""
if __name__ == "__main__":  # Ctrl-C or SIGTERM while the modules below import: one line
    from plumbing.starting import quiet_start
    quiet_start()

import sys

import torch
from tqdm import tqdm

from judging.figures import random_sign, video_check
from judging.purifiers import VAERoundTrip
from judging.report import protected_line
from judging.transforms import differentiable, draw_eot, needs_vae
from judging.visibility import owner_view, perceptual_budget
from losses import (attention_loss, check_finite, contrastive_loss, encoder_loss, image_loss, mean_sq, shares,
                    total_loss)
from pipelines import loader
from pipelines.guarded import GuardedPhoto, leaf, mean_abs_gradient
from pipelines.poses import read_body, read_poses
from plumbing.cli import (MAX_FRAMES, choose_threads, command, default_dtype, json_bytes, parse_device,
                          read_flag, write_files)
from plumbing.files import (already_protected, attack_inputs, inputs_digest, measured, photo_size, quantise,
                            report_settings)
from plumbing.flags import attack_args, check_against_model, protect_settings
from plumbing.memory import chooses_mode, free_memory, memory_mode, rehearsal, rehearse
from plumbing.photos import largest, png_bytes, read_photo
from plumbing.shard import each_photo, join

TERMS = ("img", "enc", "con", "att")
UPSAMPLE = "bilinear"  # how a perturbation on the working grid reaches a larger photo (protect's perturb_at)
# The term weights are calibrated on this many fixed draws, one per stratum of the sampling schedule, from
# a seed of their own: independent of --seed (whose default is 0) and of the videos that judge the result.
CALIBRATION_DRAWS, CALIBRATION_SEED = 5, 0xCA1B


class Objective:
    """The inputs of Algorithm 1 that stay fixed while I_adv changes, and the loss terms as a function of I_adv.
    V_0, the video made from I_src ((F,3,H,W) in [-1,1]), is generated unless given. A model that draws one of
    several motions per iteration (ControlNeXt's pose sequences: `motions`, `motion(d)`) gets one V_0^k per motion
    k, one sampling run each, and an iteration that draws motion k is measured against X_0^k.

    Latents are compared where they live: the conditioning latents x (what the pipeline conditions the
    denoiser on) as E gives them; the denoiser latents X as the model's frame encoder gives them.
    """

    def __init__(self, model, I_src, terms, *, num_frames, size, tau1, tau2, attn_blocks, sample_steps, seed,
                 eot=(), progress=False, V_0=None, source=None):
        self.model, self.terms, self.size, self.tau1, self.tau2, self.eot = model, terms, size, tau1, tau2, eot
        # source: I_src as the steps resize it, each resize made once (pipelines/guarded.py), or I_src itself
        self.attn_blocks, self.I_src, self.source = attn_blocks, I_src, I_src if source is None else source
        # EOT's vae link runs the adversary's own VAE at the model's resolution
        self.vae = VAERoundTrip(model.networks.vae, size) if needs_vae(eot) else None
        # The adversary's sampler visits these noise levels; each iteration attacks one of them.
        self.sigmas = model.noise_levels(sample_steps)
        self.X_0 = self.X_0_k = self.X_tg = None  # needed by L_con and L_att only
        self.I_tg = I_src.new_zeros(1, 3, *size)  # target image: black, the paper's (its size is E's, any is)
        with torch.no_grad():
            self.c_src = model.embed(I_src)
            if ("con" in terms or "att" in terms) and V_0 is None:
                # Generate original video V_0 = P(I_src), one V_0^k per motion k where the model has several
                runs = [{"motion": k} for k in range(model.motions)] if hasattr(model, "motions") else [{}]
                V_0 = torch.stack([model.P(I_src, size=size, num_frames=num_frames, steps=sample_steps, seed=seed,
                                           progress=progress and "V_0, the source's video", **run) for run in runs])
            if V_0 is not None:
                V_0 = V_0 if V_0.dim() == 5 else V_0[None]  # (K, F, 3, H, W): K motions
                # Encode frames X_0, X_tg = E(V_0), E(V_tg), with V_tg black frames
                self.X_0_k = torch.cat([model.encode_frames(V) for V in V_0])  # (K, F, C, h, w): X_0^k per motion k
                self.X_0 = self.X_0_k[:1]  # (1, F, C, h, w): motion 0's, which P and video follow by default
                self.X_tg = model.encode_frames(-torch.ones_like(V_0[0]))  # a causal video VAE's latent frames differ

    def draw(self, generator, step=None):
        """Fresh randomness for one iteration: the pipeline's own (e.g. its noise augmentation), a noise
        level sigma of the adversary's sampling schedule (its step `step`, or one drawn uniformly), the
        noise of X_t and, with EOT, the transformation T the photo goes through (and its seed), else None."""
        d = self.model.draw(generator, self.size)
        if step is None:
            step = int(torch.randint(len(self.sigmas), (), generator=generator))
        sigma = self.sigmas[step]
        noise = torch.randn(self.X_0.shape, generator=generator) if self.X_0 is not None else None
        T = None
        if self.eot:  # drawn last, so that without EOT every other draw is what it always was
            T = draw_eot(self.eot, generator), int(torch.randint(2**31, (), generator=generator))
        return d, sigma, noise, T

    def __call__(self, I_adv, draw, only=None):
        """I_adv (1,3,H0,W0) in [0,1] -> {term name: value} for the terms switched on, or with `only` that term's
        (and "img"): a pass that builds no graph for the others (the denoiser stops after the maps for L_att)."""
        model, (d, sigma, noise, T), wanted = self.model, draw, self.terms if only is None else (only,)
        terms = {"img": image_loss(I_adv, self.I_src)}
        # EOT: the adversary receives T(I_adv); A_src comes from T(I_src), so T's own effect is not the attack's
        I_ref = self.source
        if T is not None and T[0] is not None:
            I_adv, I_ref = (differentiable(T[0], I, torch.Generator().manual_seed(T[1]), self.vae)
                            for I in (I_adv, I_ref))

        # Encode attacked image x_adv = E(I_adv); every reference is encoded with the same draw d, so
        # that each distance is exactly zero where I_adv equals its reference.
        x_adv = model.E(I_adv, d, self.size)
        if "enc" in wanted:
            with torch.no_grad():
                x_tg = model.E(self.I_tg, d, self.size)
            terms["enc"] = encoder_loss(x_adv, x_tg)
        if "con" not in wanted and "att" not in wanted:
            return terms

        # I_adv reaches the denoiser through every conditioning path: its latents and its embedding
        c_adv = model.embed(I_adv)
        # Generate noisy frames X_t = S(X_0, t, noise), X_0 that of the motion drawn
        X_0 = self.X_0_k[model.motion(d) if len(self.X_0_k) > 1 else 0][None]  # (1, F, C, h, w)
        X_t = model.S(X_0, sigma, noise)
        blocks = self.attn_blocks if "att" in wanted else ()

        # Predict X_0: X0_adv = G(X_t, x_adv, c_adv), with the attention maps A_adv
        X0_adv, A_adv = model.G(X_t, sigma, x_adv, c_adv, d, blocks, maps_only="con" not in wanted)
        if "con" in wanted:
            terms["con"] = contrastive_loss(X0_adv, self.X_tg, X_0, self.tau1)
            self.con_distance = mean_sq(X0_adv, X_0).detach()  # Eq. 3's hinge is active while < tau1
        if "att" in wanted:
            with torch.no_grad():  # the source pass: only its maps A_src are used, so it stops after them
                c_ref = self.c_src if I_ref is self.source else model.embed(I_ref)
                _, A_src = model.G(X_t, sigma, model.E(I_ref, d, self.size), c_ref, d, blocks, maps_only=True)
            terms["att"] = attention_loss(A_adv, A_src, self.tau2)
        return terms


def calibrate(objective, I_adv, factors, draws=CALIBRATION_DRAWS, progress=False):
    """The weights of Eq. 4, so that the terms act on a similar scale (paper Sec. 4.1) whatever their units: each
    term's factor divided by the mean |gradient| of that term at I_adv's pixels (I_adv a photo, or one made lazily:
    pipelines/guarded.py), averaged over `draws` fixed draws, one from the middle of each equal stratum of the
    adversary's schedule (the gradient of L_con alone spans a factor of hundreds across it). The draws come from their
    own seeded generator, so the weights depend on the photo and its start only. progress: a bar's label, or False.
    Returns (weights {term: weight}, a record of how they were made)."""
    generator, n = torch.Generator().manual_seed(CALIBRATION_SEED), len(objective.sigmas)
    draws = min(draws, n)  # a schedule shorter than the draws: each of its levels once
    steps = [int((k + 0.5) * n / draws) for k in range(draws)]
    sums = {name: 0.0 for name in factors}
    recomputing = getattr(objective.model, "saving_memory", False)  # --low-memory: a recomputing backward pass keeps
    names = [name for name in factors if factors[name] and name in ("img", *objective.terms)]
    for step in tqdm(steps, desc=progress or "", disable=not progress, leave=False):
        draw, I = objective.draw(generator, step), leaf(I_adv)  # I: the gradient's leaf (pipelines/guarded.py)
        values = None if recomputing else objective(I, draw)
        for name in names:  # what it recomputed while the graph is kept: then a pass per term, for that term only
            if recomputing:
                values, I = None, leaf(I_adv)  # the last pass's graph, before the next pass's
                values = objective(I, draw, only=name)
            sums[name] += mean_abs_gradient(values[name], I, not recomputing and name != names[-1]) / len(steps)
        del values  # its graph, before the next draw's
    weights = {name: factors[name] / sums[name] if sums[name] > 0 else 0.0 for name in factors}
    record = {"sigmas": [objective.sigmas[k] for k in steps], "seed": CALIBRATION_SEED, "mean_abs_grad": sums}
    return weights, record


def protect(model, I_src, *, method="i2vguard", terms=TERMS, mask=None, eps=8 / 255, steps=50, step_size=1 / 255,
            update="sign", alpha=1.0, beta=1.0, gamma=1.0, fidelity=0.0, tau1=0.5, tau2=0.5, num_frames=None,
            size=(576, 1024), attn_blocks=None, sample_steps=25, seed=0, eot=(), recalibrate=0, perturb_at="model",
            budget="perceptual", chroma=0.0, progress=False):
    """Algorithm 1 against `model` (pipelines/__init__.py): the source photo I_src (3,H0,W0) in [0,1] -> (I_adv
    (3,H0,W0) in [0,1], per-step log).

    method "photoguard" keeps only L_enc (the encoder attack); "random-sign" returns uniform-sign noise
    of size eps (same L_inf) without optimising. `mask` (H0,W0) of 0/1 limits the perturbation (local
    attack). The weights of Eq. 4 are fidelity, alpha, beta, gamma divided by the mean absolute
    gradient of their term at the start (`calibrate`), and again every `recalibrate` steps if it is not 0.
    The log's "balance" gives each term's share of the weighted gradient at those points and at the last
    step: which term drove the attack. `eot` names the EOT items (transforms.parse_eot: kinds, transformations
    with their values, chains) of which one, or none, is drawn per iteration and applied to I_adv before
    the adversary's pipeline (expectation over transformations); the calibration draws them too.

    Where the perturbation lives (`perturb_at`): "photo", at the photo's own pixels, as Algorithm 1 has it;
    "model" (the default), on the working grid of min(photo, model input) pixels per side, upsampled to the photo (a
    convex combination: within the budget at every pixel); where the pipeline crops the photo (ControlNeXt, Wan),
    the grid covers the part it keeps (`model.seen_box`) and the rest is left as it is. For a photo no larger than
    the model's input the two are the same attack. For a larger one, the pipeline's downscale averages per-pixel
    steps away; steps taken on the grid it shrinks to survive it (docs/full-size.md).

    How the budget is spent, so that the change shows least (docs/imperceptibility.md): `budget` "flat" gives
    every pixel eps, as the paper does; "perceptual" gives each pixel the share min(1, JND / 8 levels) of eps
    (judging/visibility.py: at 8/255 at most one just-noticeable difference; little on smooth skin and sky, all
    of eps in texture and shadow). `chroma` is the share of the budget that may differ between the colour
    channels: 1, the paper's, moves each channel on its own; 0 moves the three together (a change of lightness,
    no colour cast); between, (1 - chroma) eps is shared and chroma eps is each channel's own. Every pixel stays
    within eps in every channel whatever these are.
    """
    attn_blocks = attn_blocks or model.default_attn_blocks()
    unknown = set(attn_blocks) - set(model.attention_names)
    if unknown:
        raise ValueError(f"no temporal attention named {sorted(unknown)}")
    terms = {"i2vguard": tuple(terms), "photoguard": ("img", "enc"), "random-sign": ()}[method]
    generator = torch.Generator().manual_seed(seed)
    I_src = I_src[None].float()  # (1, 3, H0, W0)
    m = torch.ones_like(I_src[:, :1]) if mask is None else mask.to(I_src)[None, None]  # (1, 1, H0, W0)
    photo = tuple(I_src.shape[-2:])
    # the part of the photo the model sees (a pipeline that crops sees less than all), and the working grid on it
    top, left, h, w = model.seen_box(photo, size) if perturb_at == "model" else (0, 0, *photo)
    grid = (min(h, size[0]), min(w, size[1])) if perturb_at == "model" else photo
    if method == "random-sign":  # uniform-sign noise at the photo's own pixels
        return random_sign(I_src, eps, mask, seed)[0], {"weights": None, "steps": []}
    if budget == "perceptual":  # each pixel's share of eps, from the photo: where a change shows least
        m = m * perceptual_budget(I_src[0]).to(I_src)
    # The perturbation: channel 0 is shared by R, G and B (bound (1 - chroma) eps), channels 1-3 are each
    # channel's own (bound chroma eps). Random start inside the budget: at I_adv = I_src, A_adv = A_src, where
    # ||A_adv - A_src||^2 has zero gradient.
    bound = torch.tensor([1 - chroma] + [chroma] * 3).view(1, 4, 1, 1).to(I_src) * eps
    own = (torch.rand((1, 3, *grid), generator=generator) * 2 - 1).to(I_src) * chroma * eps  # (1, 3, *grid)
    shared = torch.zeros_like(own[:, :1])  # (1, 1, *grid); drawn only when used, so the paper's draws stay as they were
    if chroma < 1:
        shared = (torch.rand((1, 1, *grid), generator=generator) * 2 - 1).to(I_src) * (1 - chroma) * eps
    delta = torch.cat([shared, own], 1)  # (1, 4, *grid)
    # Algorithm 1's own update, on I_adv at the photo's pixels, where nothing lies between delta and the photo
    per_pixel = grid == photo and budget == "flat" and chroma == 1
    # the perturbation upsampled from the grid to the part the model sees, zero outside it and the mask; where the grid
    guarded = GuardedPhoto(I_src, m, (top, left, h, w), grid, UPSAMPLE)  # is smaller than that part, the steps
    lazy = grid != (h, w)  # resize the photo without making it (pipelines/guarded.py)

    def seen(delta, whole=False):  # I_adv (1, 3, H0, W0) in [0, 1], made whole, or lazily for the steps
        I_adv = guarded.perturbed(delta[:, :1] + delta[:, 1:])  # (1, 3, *grid): shared plus each channel's own
        return I_adv if lazy and not whole else I_adv.photo()

    if progress:
        print(f"protect: a {photo[1]}x{photo[0]} photo, attacked on a {grid[1]}x{grid[0]} grid for the model's "
              f"{size[1]}x{size[0]}: its conditioning, then V_0", file=sys.stderr)
    objective = Objective(model, I_src, terms, num_frames=num_frames or model.num_frames, size=size,
                          tau1=tau1, tau2=tau2, attn_blocks=attn_blocks, sample_steps=sample_steps, seed=seed,
                          eot=tuple(eot), progress=progress, source=guarded if lazy else None)
    factors = {"img": fidelity, "enc": alpha, "con": beta, "att": gamma}
    weights, calibration = calibrate(objective, seen(delta, whole=bool(eot)), factors,
                                     progress=progress and "calibrating the weights of Eq. 4")
    log, balance, bar = [], [], tqdm(range(steps), desc="protecting", disable=not progress)
    for k in bar:
        if recalibrate and k and k % recalibrate == 0 or k == steps - 1:  # the terms' balance, then new weights
            new_weights, record = calibrate(objective, seen(delta, whole=bool(eot)), factors,
                                            progress=progress and "the terms' balance")
            balance.append(shares(k, weights, record["mean_abs_grad"]))
            weights = new_weights if recalibrate and k % recalibrate == 0 else weights
        delta = delta.detach().requires_grad_()
        I_adv = seen(delta).detach().requires_grad_() if per_pixel else seen(delta)
        values = objective(I_adv, objective.draw(generator))
        # Compute the final loss L (Eq. 4), its gradient at the photo's pixels, or back through the budget (and the
        L = total_loss(values, weights)  # upsampling) to the grid
        grad, = torch.autograd.grad(L, I_adv if per_pixel else delta)
        # Update I_adv <- I_adv - lambda * grad L (or its sign), then project onto the eps-ball and [0, 1]
        with torch.no_grad():
            step = grad.sign() if update == "sign" else grad
            if per_pixel:
                delta[:, 1:] = ((I_adv - step_size * step - I_src).clamp(-eps, eps) * m + I_src).clamp(0, 1) - I_src
            else:  # the same step on the grid, projected onto its bounds ([0, 1] is kept by I_adv's clamp)
                delta = (delta - step_size * step).clamp(-bound, bound)
        check_finite(len(log), values | {"total": L, "gradient": grad, "I_adv": delta})
        log.append({name: value.item() for name, value in values.items()} | {"total": L.item()}
                   | ({"hinge_active": objective.con_distance.item() < tau1} if "con" in values else {}))
        # What moves: L_enc and L_con against their first values, and the attention distance ||A_adv - A_src||^2
        moved = {name: f"{log[-1][name] / (log[0][name] or 1):.3g}x" for name in ("enc", "con") if name in values}
        bar.set_postfix(moved | ({"dA": f"{tau2 - log[-1]['att']:.2e}"} if "att" in values else {}))
    hinge = [s["hinge_active"] for s in log if "hinge_active" in s]
    I_adv = seen(delta, whole=True)[0]
    return I_adv, {"weights": weights, "calibration": calibration, "balance": balance,
                   "con_hinge_active_share": sum(hinge) / len(hinge) if hinge else None, "steps": log}


# ---------------------------------------------------------------- command line
def selected_terms(no_spatial=False, no_temporal=False, no_diffusion=False):
    """The loss terms left after the ablations of Table 1."""
    dropped = {"enc": no_spatial, "att": no_temporal, "con": no_diffusion}
    return tuple(name for name in TERMS if not dropped.get(name))


def protect_file(model, photo, out, mask, args, terms, inputs_sha256=None):
    """Protect one photo file: writes the guarded PNG, its report beside it and, with --preview, the videos,
    all or nothing; returns the report."""
    rgb8, alpha, icc = read_photo(photo)
    if mask is not None and mask.shape != rgb8.shape[-2:]:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the photo {rgb8.shape[2]}x{rgb8.shape[1]}")
    size = (args.height, args.width) if args.height else model.frame_size(rgb8.shape[-2:])  # Wan: the photo's shape
    with measured(device := model.device) as usage:  # wall time and peak memory
        I_adv, history = protect(model, (rgb8.float() / 255).to(device), mask=None if mask is None else mask.to(device),
                                 **protect_settings(args, terms, size), progress=True)
        guarded8 = quantise(rgb8, I_adv, args.eps, mask)
    print("measuring what the guard costs the photo (PSNR, SSIM, CIEDE2000, as a screen shows it)", file=sys.stderr)
    levels, I_adv = (rgb8.short() - guarded8.short()).abs(), None  # the 8-bit photos only from here on: no float copy
    report = {
        "input": str(photo), "output": str(out), "model": model.source, "untrained_model": model.untrained,
        "method": args.method, "terms": list(terms) if args.method == "i2vguard" else None, "seed": args.seed,
        "settings": report_settings(args), "inputs_sha256": inputs_sha256, "model_size": list(size),
        **owner_view(rgb8, guarded8), "linf": levels.max().item() / 255, "linf_8bit_levels": int(levels.max()),
        "l2": levels.int().pow(2).sum(dtype=torch.int64).item() ** 0.5 / 255,
        **usage, **history,
    }
    files = {out: png_bytes(guarded8, alpha, icc)}
    if args.video_check or args.preview:  # does it protect? The videos, at a seed the attack never used
        checked, previews = video_check(model, rgb8, guarded8, out, args, size, mask)
        report, files = report | checked, files | previews
    files[out.with_suffix(".json")] = json_bytes(report)
    write_files(files)
    return report


@command
def main(argv=None):
    args = attack_args(__doc__, argv)  # every flag checked before any work (plumbing/)
    choose_threads(args.threads)
    photos, outs, mask = attack_inputs(args)  # and the model folder's files (args.model_files), which resume compares
    terms = selected_terms(args.no_spatial, args.no_temporal, args.no_diffusion)
    size = (args.height, args.width)
    poses = [read_flag("--pose", read_poses, args.pose, *size, args.frames or MAX_FRAMES)[:MAX_FRAMES]] \
        if args.pose else None
    body = read_flag("--body", read_body, args.body, photo_size(photos[0]), size) if args.body else None
    worker, device = join(args.shard, parse_device(args.device), args.join_timeout)
    args.dtype = args.dtype or default_dtype(device)

    pipeline_on = loader(args, poses, body)
    if chooses_mode(device, args.low_memory):  # the lightest mode the whole run fits in, or a refusal before loading
        peaks, weights, frames = rehearse(pipeline_on, rehearsal(protect, args, terms, largest(photos)))
        args.low_memory = memory_mode(peaks, weights, free_memory(device), args.frames or frames)
    model = pipeline_on(device)
    check_against_model(args, model, poses)
    model.low_memory(args.low_memory)

    def done(photo):  # an earlier run protected it with these settings and inputs
        return already_protected(outs[photo], report_settings(args), inputs_digest(args, photo))

    def work(photo):
        report = protect_file(model, photo, outs[photo], mask, args, terms, inputs_digest(args, photo))
        return protected_line(photo, outs[photo], report)
    each_photo(worker, photos, done, work)


if __name__ == "__main__":
    main()
