"""The I2VGuard objective, term by term (paper Eq. 1-4).

Reduction: every squared norm ||a - b||^2 here is the MEAN of the squared differences over all
elements, so a term's size does not depend on the resolution, the number of frames or heads; the
weights alpha, beta, gamma carry the scale (attack.py sets them from the first step's values).
"""
import torch


def mean_sq(a, b):
    """||a - b||^2 as a mean over elements, in float32."""
    return (a.float() - b.float()).pow(2).mean()


def image_loss(I_adv, I_src):
    """The fidelity term of Eq. 4, ||I_adv - I_src||^2: keeps the guarded photo close to the source. A guarded photo
    made lazily (pipelines/guarded.py) computes its own."""
    return mean_sq(I_adv, I_src) if isinstance(I_adv, torch.Tensor) else I_adv.squared_distance()


def encoder_loss(x_adv, x_tg):
    """Eq. 1, L_enc = ||E(I_adv) - E(I_tg)||^2 (spatial attack): pulls the photo's VAE latent to the target's."""
    return mean_sq(x_adv, x_tg)


def contrastive_loss(X0_adv, X_tg, X_0, tau1):
    """Eq. 3, L_con = ||X0_adv - X_tg||^2 + max(0, tau1 - ||X0_adv - X_0||^2) (diffusion attack): the
    denoiser's predicted clean frames move towards the target frames and at least tau1 away from the
    original video's frames."""
    return mean_sq(X0_adv, X_tg) + (tau1 - mean_sq(X0_adv, X_0)).clamp(min=0)


def attention_distance(A_adv, A_src):
    """||A_adv - A_src||^2 averaged over the attacked blocks; A_* map block names to attention probabilities."""
    return sum(mean_sq(A_adv[name], A_src[name]) for name in A_src) / len(A_src)


def attention_loss(A_adv, A_src, tau2):
    """Eq. 2, L_att = tau2 - ||A_adv - A_src||^2 (temporal attack): pushes the temporal self-attention maps
    away from the source's. tau2 only offsets the value; it does not change the gradient."""
    return tau2 - attention_distance(A_adv, A_src)


def total_loss(terms, weights):
    """Eq. 4, L = w_img ||I_adv - I_src||^2 + alpha L_enc + beta L_con + gamma L_att, over the terms present
    (an ablated term is absent and contributes nothing); weights maps "img", "enc", "con", "att" to
    w_img, alpha, beta, gamma. The fidelity term at weight 0 (the default) is left out, so that the backward pass
    does not go through ||I_adv - I_src||^2 at the photo's megapixels for nothing."""
    return sum(weights[name] * value for name, value in terms.items() if name != "img" or weights[name])


def check_finite(step, tensors):
    """Stop at the first NaN or infinity in a step's losses, gradient or I_adv: every later step would be garbage."""
    broken = [name for name, t in tensors.items() if not t.isfinite().all()]
    if broken:
        raise ValueError(f"{', '.join(broken)} not finite at step {step + 1}: the model's weights or the settings "
                         "are broken")


def shares(step, weights, mean_abs_grad):
    """Each term's share of the weighted gradient, sum_k w_k mean|dL_k/dI_adv|, at a step: the balance."""
    parts = {name: weights[name] * g for name, g in mean_abs_grad.items() if weights[name] and g}
    return {"step": step} | {name: part / sum(parts.values()) for name, part in parts.items()}
