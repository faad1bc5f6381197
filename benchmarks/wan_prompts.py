"""What each assumption about the adversary's prompt costs the attack against Wan, on the tiny random Wan (a CPU,
seconds): the transformer's batch items run to make the V_0s and during protect (without and with gradients), and
protect's wall time on one thread. Random networks say nothing about which choice protects better.

    python benchmarks/wan_prompts.py
"""
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import TERMS, Objective, protect  # noqa: E402
from pipelines.prompts import ATTACK_PROMPTS, RELEASE_EXAMPLE_PROMPT, RELEASE_NEGATIVE_PROMPT  # noqa: E402
from pipelines.wan import WanPipeline, tiny_wan  # noqa: E402

CHOICES = {"the image-only setting, prompt = negative prompt = \"\" (one pass)": ([""], ""),
           "\"\" against the release's negative prompt": ([""], RELEASE_NEGATIVE_PROMPT),
           "the release's example prompt": ([RELEASE_EXAMPLE_PROMPT], RELEASE_NEGATIVE_PROMPT),
           "three prompts drawn per iteration (the default)": (ATTACK_PROMPTS, RELEASE_NEGATIVE_PROMPT)}
SIZE, FRAMES, SAMPLE_STEPS, STEPS = (128, 96), 17, 50, 50


def counted(model):
    """The pipeline's transformer, counting its batch items without and with gradients."""
    transformer, count = model.networks.transformer, {False: 0, True: 0}
    forward = transformer.forward

    def counting(x, *args, **kwargs):
        count[torch.is_grad_enabled()] += x.shape[0]
        return forward(x, *args, **kwargs)
    transformer.forward = counting
    return count


def main():
    warnings.simplefilter("ignore")  # tiny_wan's own warning
    torch.set_num_threads(1)
    I_src = torch.rand(3, *SIZE, generator=torch.Generator().manual_seed(0))
    print("| the attack assumes | V_0 setup: forward items | protect: items without / with gradients | protect, s |")
    print("|---|---:|---:|---:|")
    for i, (name, (prompts, negative)) in enumerate([("warm-up", ([""], "")), *CHOICES.items()]):
        model = WanPipeline(tiny_wan(0), prompts=prompts, negative_prompt=negative)
        count = counted(model)
        Objective(model, I_src[None], TERMS, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                  attn_blocks=model.default_attn_blocks(), sample_steps=SAMPLE_STEPS, seed=0)
        setup = dict(count)
        start = time.perf_counter()
        protect(model, I_src, steps=STEPS, size=SIZE, num_frames=FRAMES, sample_steps=SAMPLE_STEPS, seed=0)
        wall = time.perf_counter() - start
        if i:  # protect makes its own V_0s: the setup's items are counted once more
            print(f"| {name} | {setup[False]} | {count[False] - 2 * setup[False]} / {count[True]} | {wall:.1f} |")


if __name__ == "__main__":
    main()
