"""A guarded photo larger than the model's input as the attack's steps see it, never made at the photo's size.

The attack's steps live on a working grid (attack.protect): I_adv = I_src + m * U(delta), with delta (3, g_h, g_w)
on the grid, U its bilinear upsampling onto the part of the photo the model sees (U_h delta U_w^T, zero elsewhere)
and m (H0, W0) each pixel's share of the budget. Every resize a pipeline takes of a photo is linear, R_h I R_w^T
(pipelines/resize.py), so

    R(I_adv) = R(I_src) + K(delta),   K(delta)[i, j] = sum over a, b of K[i, a, j, b] delta[a, b]

with R(I_src) made once and K[i, a, j, b] = sum over y, x of (R_h U_h)[i, y, a] m[y, x] (R_w U_w)[j, x, b] made once
per resize. K is banded: an output sample reads a few grid samples (those within the resize's kernel), so each
step costs what the model's size costs, not what the photo's does. The fidelity term ||I_adv - I_src||^2 is a
quadratic form of the same kind, with U^T in R's place and m^2 in m's.

What the steps leave out: the clamp to [0, 1]. The saved photo is clamped (attack.protect); the steps see
I_src + m * U(delta), which differs from it only where a pixel lies within m eps of black or white, and pushed
outwards. Steps that held the clamp would read the whole photo every time (docs/full-size.md). A transformation of
the whole photo (EOT) gets the photo made whole (photo()), clamped.

The calibration of Eq. 4's weights needs each term's mean |gradient| at the photo's pixels. That gradient is the sum
over the resizes of R_h^T (d L / d R(I_adv)) R_w: a probed() photo records its resizes, and mean_abs_gradient spreads
their gradients back over the photo a strip of rows at a time, so the photo is not made for it either.
"""
import torch

from pipelines.resize import (blocks, cast, placed_matrix, product, reach, separable, spans, transposed,
                              upsampled_onto)

STRIP = 128  # the photo's rows of one strip of the gradient at its pixels (GuardedPhoto.mean_abs_gradient)


def coupled(R, U, like):
    """R (n, N) and U (N, g), float64 on the CPU -> (A (n k, N) in like's dtype on its device, its bands, first (n,)):
    A[i k + t, y] = R[i, y] U[y, first[i] + t], for the k consecutive grid samples first[i] ... first[i] + k - 1
    output i reads through R U (k: the most any reads). Both are resizes, whose rows read consecutive samples that
    move on with the row; row i k + t reads within row i of R."""
    (y_first, y_last), (a_first, a_last) = reach(R), reach(U)
    first, last = torch.zeros(len(R), dtype=torch.long), torch.zeros(len(R), dtype=torch.long)
    for i in range(len(R)):  # the grid samples the photo's rows y_first[i] ... y_last[i] read
        first[i] = a_first[y_first[i]:y_last[i] + 1].min() if y_last[i] >= 0 else 0
        last[i] = max(int(a_last[y_first[i]:y_last[i] + 1].max()), int(first[i])) if y_last[i] >= 0 else 0
    k = int((last - first).max()) + 1
    first = first.clamp(max=U.shape[1] - k)  # a window of k within the grid; what it holds beyond a row's reach is 0
    columns = (first[:, None] + torch.arange(k)).flatten()  # (n k,)
    A = cast(R, like.dtype, like.device).repeat_interleave(k, 0) * cast(U, like.dtype, like.device).T[columns]
    return A, blocks([row for row in spans(y_first, y_last) for _ in range(k)]), first, k


def banded_operator(R_h, U_h, m, R_w, U_w):
    """K (n_h, k_h, n_w, k_w) = sum over y, x of (R_h U_h)[i, y, a] m[y, x] (R_w U_w)[j, x, b] for a = first_h[i] +
    t, b = first_w[j] + s, in m's dtype on its device, with first_h, first_w: two banded products."""
    (A_h, by_h, first_h, k_h), (A_w, by_w, first_w, k_w) = coupled(R_h, U_h, m), coupled(R_w, U_w, m)
    T = product(A_h, by_h, m)  # (n_h k_h, W0)
    K = product(A_w, by_w, T.T.contiguous())  # (n_w k_w, n_h k_h)
    return K.T.reshape(len(R_h), k_h, len(R_w), k_w), first_h, first_w


def apply(K, first_h, first_w, delta):
    """K(delta): K (n_h, k_h, n_w, k_w), delta (C, g_h, g_w) -> (C, n_h, n_w). The windows are read as views and
    index_select, whose gradient adds rows back (an advanced index's would sort copies of its indices)."""
    n_h, k_h, n_w, k_w = K.shape
    windows = delta.unfold(1, k_h, 1).index_select(1, first_h.to(delta.device))  # (C, n_h, g_w, k_h)
    windows = windows.unfold(2, k_w, 1).index_select(2, first_w.to(delta.device))  # (C, n_h, n_w, k_h, k_w)
    return torch.einsum("itjs,cijts->cij", K, windows)


def leaf(I):
    """I_adv as the leaf of a gradient taken at its pixels (mean_abs_gradient): a photo tensor, or one made lazily,
    probed."""
    return I.detach().requires_grad_() if torch.is_tensor(I) else I.probed()


def mean_abs_gradient(value, I, retain_graph=False):
    """The mean over the photo's elements of |d value / d I| at its pixels, for I from leaf()."""
    if torch.is_tensor(I):
        return torch.autograd.grad(value, I, retain_graph=retain_graph)[0].abs_().mean().item()
    return I.mean_abs_gradient(value, retain_graph)


class GuardedPhoto:
    """I_src (1,3,H0,W0) with the perturbation m * U(delta) for a grid delta (1,3,g_h,g_w) (perturbed(delta)), or with
    none: what separable() makes of it is its resize, R(I_src) + K(delta) (the module's docstring); photo() makes it
    whole. share: m (1,1,H0,W0); box: (top, left, height, width) the grid covers; mode: U's interpolation."""

    def __init__(self, I_src, share, box, grid, mode):
        self.I_src, self.share, self.box, self.grid, self.mode = I_src, share, box, grid, mode
        self.shape, self.dtype, self.device = I_src.shape, I_src.dtype, I_src.device
        self.delta, self.made, self.resizes = None, {}, None  # made: per resize, its matrices (held, so that their
        top, left, height, width = box  # ids stay theirs) and what is made once of them; resizes: probed()'s
        self.U_h = placed_matrix(grid[0], height, top, self.shape[-2], mode)  # (H0, g_h)
        self.U_w = placed_matrix(grid[1], width, left, self.shape[-1], mode)  # (W0, g_w)

    def perturbed(self, delta):
        """The photo with the perturbation of grid delta (1,3,g_h,g_w), sharing what is made of its resizes."""
        guarded = object.__new__(GuardedPhoto)
        guarded.__dict__.update(self.__dict__, delta=delta)
        return guarded

    def probed(self):
        """This photo as the leaf of a gradient taken at its pixels (mean_abs_gradient): each resize made of it is
        recorded, a tensor of its own that the gradient reaches."""
        probe = self.perturbed(self.delta)
        probe.resizes = []
        return probe

    def mean_abs_gradient(self, value, retain_graph=False, strip=STRIP):
        """mean |d value / d I_adv| over the photo's elements, for a value made of a probed() photo's resizes. The
        gradient at the photo's pixels is the sum over them of R_h^T (d value / d R(I_adv)) R_w, and the fidelity
        term's (recorded with rows None) 2 (I_adv - I_src) / N. It is made `strip` rows at a time, each strip of R_h^T
        times the band of rows of (d value / d R(I_adv)) R_w it reads: never at the photo's size."""
        grads = torch.autograd.grad(value, [made for _, _, made in self.resizes], retain_graph=retain_graph,
                                    allow_unused=True)
        spread, fidelity = [], []  # per resize: R_h^T, the reach of its rows, (d value / d R(I_adv)) R_w
        for (rows, columns, _), G in zip(self.resizes, grads):
            if G is not None and rows is None:
                fidelity.append(2 * G / self.I_src.numel())
            elif G is not None:
                R_t, X = transposed(rows), G[0] @ cast(columns, G.dtype, G.device)  # (H0, n_h), (3, n_h, W0)
                spread.append((cast(R_t, G.dtype, G.device), reach(R_t), X.transpose(0, 1).flatten(1)))
        photo = self.photo() if fidelity else None
        (C, height, width), total = self.shape[1:], 0.0
        for top in range(0, height, strip):
            rows = slice(top, top + strip)
            part = self.I_src.new_zeros(min(strip, height - top), C * width)  # (rows, C W0): the channels side by side
            for R_t, (first, last), X in spread:  # X (n_h, C W0)
                a, b = int(first[rows].min()), int(last[rows].max()) + 1
                if a < b:
                    part.addmm_(R_t[rows, a:b], X[a:b])
            for c in fidelity:
                part.view(-1, C, width).add_((c * (photo[0, :, rows] - self.I_src[0, :, rows])).transpose(0, 1))
            total += part.abs_().sum().item()
        return total / self.I_src.numel()

    def operator(self, key, R_h, R_w, power=1):
        """(K, first_h, first_w) for the resize R_h, R_w of the perturbation with the share m to this power, made
        once (m^power is a photo-size tensor: made only then)."""
        if key not in self.made:
            with torch.no_grad():
                self.made[key] = (R_h, R_w), banded_operator(R_h, self.U_h, self.share[0, 0] ** power, R_w, self.U_w)
        return self.made[key][1]

    def resized(self, rows, columns):
        """separable(photo, rows, columns), (1,3,h,w): the source's resize, made once, and the perturbation's."""
        key = ("source", id(rows), id(columns))
        if key not in self.made:
            with torch.no_grad():
                self.made[key] = (rows, columns), separable(self.I_src, rows, columns)
        source = self.made[key][1]
        if self.delta is None:
            return source
        K, first_h, first_w = self.operator(("K", id(rows), id(columns)), rows, columns)
        resized = source + apply(K, first_h, first_w, self.delta[0].to(K))[None].to(source)
        return resized if self.resizes is None else self.recorded(rows, columns, resized)

    def recorded(self, rows, columns, made):
        """made (a resize of a probed photo, or its fidelity term: rows None) as a leaf of its own, recorded."""
        made = made.detach().requires_grad_()
        self.resizes.append((rows, columns, made))
        return made

    def squared_distance(self):
        """||I_adv - I_src||^2, the mean over the photo's elements: the sum over channels of <delta, G(delta)>, with
        G = U^T m^2 U the perturbation's Gram operator."""
        if self.delta is None:
            return self.I_src.new_zeros(())
        G, first_h, first_w = self.operator("gram", transposed(self.U_h), transposed(self.U_w), power=2)
        delta = self.delta[0].to(G)
        distance = (delta * apply(G, first_h, first_w, delta)).sum() / self.I_src.numel()
        return distance if self.resizes is None else self.recorded(None, None, distance)

    def photo(self):
        """(1,3,H0,W0): the photo made whole, clamped to [0, 1], as attack.protect saves it."""
        if self.delta is None:
            return self.I_src
        on_box = self.delta if self.grid == tuple(self.shape[-2:]) else upsampled_onto(self.delta, self.shape[-2:],
                                                                                       self.box, self.mode)
        return (self.I_src + on_box * self.share).clamp(0, 1)
