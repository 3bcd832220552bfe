"""The RL-vision study on a pixel agent (clear_cnn): the layer it reads, and an edit there equal
to removing the direction from the activation by hand."""

import numpy as np
import pytest
import torch

from policylens.agents import build_agent
from policylens.studies.rl_vision.editing import edit_agent, reader_of
from policylens.worlds.hazards import studied_layer


@pytest.fixture(scope="module")
def pixel_agent():
    return build_agent("clear_cnn", (52, 52, 3), 15, seed=3, first_stride=2)


def test_the_study_reads_the_pooled_conv2b_map_of_a_pixel_agent(pixel_agent):
    symbolic = build_agent("maze_cnn", (9, 13, 13), 15, seed=0)
    assert studied_layer(pixel_agent) == "hook_pool2"
    assert reader_of("hook_pool2") == "conv3a.conv"
    assert studied_layer(symbolic) == "hook_relu"
    mlp = build_agent("mlp", (4,), 2, seed=0)
    with pytest.raises(ValueError, match="knows no layer of a mlp network"):
        studied_layer(mlp)


@pytest.mark.parametrize("layer", ["hook_pool1", "hook_pool2", "hook_pool3"])
def test_an_edit_at_a_pooled_map_is_the_direction_removed_from_the_activation(pixel_agent, layer):
    """The edited agent's outputs equal the source's with ``act - (act . v) v / |v|^2`` at every
    cell of the layer, written here as a hook (Hilton et al.'s edit, computed another way)."""
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (6, 52, 52, 3), dtype=np.uint8)
    _, cache = pixel_agent.run_with_cache(obs)
    channels = cache[layer].shape[1]
    v = rng.random(channels)  # NMF directions are non-negative
    vt = torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1)

    def remove(act, hook):
        return act - (act * vt).sum(1, keepdim=True) * vt / (vt * vt).sum()

    want_logits, want_value = pixel_agent.run_with_hooks(obs, [(layer, remove)])
    logits, value = edit_agent(pixel_agent, layer, v)(obs)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(value, want_value, rtol=1e-4, atol=1e-5)
    source_logits, _ = pixel_agent(obs)
    assert not torch.allclose(source_logits, logits, atol=1e-4)  # the edit did something


def test_the_pixel_network_computes_the_same_channels_last_and_first():
    """channels_last (the default, oneDNN's fast path) changes the layout, not the numbers."""
    fast = build_agent("clear_cnn", (52, 52, 3), 15, seed=5, first_stride=2)
    plain = build_agent("clear_cnn", (52, 52, 3), 15, seed=5, first_stride=2, channels_last=False)
    obs = np.random.default_rng(1).integers(0, 256, (300, 52, 52, 3), dtype=np.uint8)  # > 256
    for agent in (fast, plain):
        agent.net.zero_grad()
        logits, value = agent(obs)
        (logits.logsumexp(1).sum() + value.sum()).backward()
    torch.testing.assert_close(fast(obs), plain(obs), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(fast.net.named_parameters(), plain.net.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
