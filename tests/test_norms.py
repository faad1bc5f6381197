"""Every normalisation layer has the oracle's epsilon and group count, checked by name. A wrong epsilon
moves outputs by less than the 1e-4 parity tolerance on small random models, so it is checked directly."""
import pytest
from torch import nn

from oracles import TINY_CLIPS, TINY_UNETS, TINY_VAES, clip_pair, unet_pair, vae_pair

PAIRS = {"unet": lambda: unet_pair(TINY_UNETS["4level"]),
         "vae": lambda: vae_pair(TINY_VAES["3level"]),
         "clip": lambda: clip_pair(TINY_CLIPS["quick_gelu"])}


@pytest.mark.parametrize("network", sorted(PAIRS))
def test_norm_layers_match_oracle(network):
    oracle, ours = PAIRS[network]()
    reference = dict(oracle.named_modules())
    norms = {name: m for name, m in ours.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    assert norms
    for name, m in norms.items():
        ref = reference[name]
        assert type(ref) is type(m), name
        assert ref.eps == m.eps, f"{name}: eps {m.eps}, oracle {ref.eps}"
        if isinstance(m, nn.GroupNorm):
            assert ref.num_groups == m.num_groups, name
