"""S, the noising step of Algorithm 1 (X_t = S(X_0, t, noise)), of each model against its reference scheduler's
own add_noise at every noise level the adversary's sampler visits: SVD's EulerDiscreteScheduler (EDM, X_0 + sigma
noise), CogVideoX's CogVideoXDDIMScheduler (sqrt(abar) X_0 + sqrt(1 - abar) noise) and Wan's
UniPCMultistepScheduler with flow sigmas ((1 - sigma) X_0 + sigma noise)."""
import pytest
import numpy as np
import torch
from diffusers import CogVideoXDDIMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from pipelines.cogvideox import CogVideoXPipeline, tiny_cogvideox
from pipelines.svd import SVDPipeline
from pipelines.wan import WanPipeline, tiny_wan
from test_edm import OFFICIAL_SCHEDULER
from test_wan_scheduler import RELEASE as WAN_RELEASE
from weights import tiny_svd

pytestmark = pytest.mark.filterwarnings("ignore:tiny_:UserWarning")
SHAPE = (1, 3, 4, 5, 6)  # (B, F, C, h, w)


def pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def test_svd_noising_is_the_euler_schedulers():
    model, (X_0, noise) = SVDPipeline(tiny_svd(0)), pairs()
    ref = EulerDiscreteScheduler.from_config(OFFICIAL_SCHEDULER)
    ref.set_timesteps(25)
    for k, sigma in enumerate(model.noise_levels(25)):
        expected = ref.add_noise(X_0, noise, ref.timesteps[k:k + 1])
        torch.testing.assert_close(model.S(X_0, sigma, noise), expected, rtol=1e-6, atol=1e-5)


def test_cogvideox_noising_is_the_ddim_schedulers():
    model, (X_0, noise) = CogVideoXPipeline(tiny_cogvideox(0)), pairs(1)
    ref = CogVideoXDDIMScheduler(**model.networks.schedule, prediction_type="v_prediction", clip_sample=False,
                                 beta_schedule="scaled_linear", set_alpha_to_one=True)
    for t in model.noise_levels(50):
        expected = ref.add_noise(X_0, noise, torch.tensor([t]))
        torch.testing.assert_close(model.S(X_0, t, noise), expected, rtol=1e-6, atol=1e-6)


def test_wan_noising_is_the_unipc_schedulers():
    """On the release's sigma grid, given to diffusers' UniPC as the levels before its shift."""
    model, (X_0, noise) = WanPipeline(tiny_wan(0)), pairs(2)
    ref = UniPCMultistepScheduler(**WAN_RELEASE | {"flow_shift": model.networks.schedule["flow_shift"]})
    ref.set_timesteps(sigmas=np.linspace(float(np.float32(0.999)), 0, 51)[:-1])
    for k, sigma in enumerate(model.noise_levels(50)):
        expected = ref.add_noise(X_0, noise, ref.timesteps[k:k + 1])
        torch.testing.assert_close(model.S(X_0, sigma, noise), expected, rtol=1e-6, atol=1e-6)
