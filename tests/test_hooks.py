"""Hook points, caches and hook lifetimes of HookedAgent."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from policylens.agents import ActivationCache, HookedAgent, HookPoint, build_agent


@pytest.fixture(scope="module")
def maze_agent() -> HookedAgent:
    return build_agent("maze_cnn", (3, 9, 9), 4, channels=8, hidden=32, seed=1).eval()


@pytest.fixture(scope="module")
def impala_agent() -> HookedAgent:
    return build_agent("impala", (16, 16, 3), 15, seed=2).eval()


def grid_obs(n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3, 9, 9), generator=g) < 0.3).to(torch.uint8)


def image_obs(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g)


def residual(res: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return res.conv2(F.relu(res.conv1(F.relu(x)))) + x


def test_impala_hook_names_in_forward_order(impala_agent: HookedAgent) -> None:
    names = impala_agent.hook_names()
    res = ["hook_relu1", "hook_conv1", "hook_relu2", "hook_conv2", "hook_out"]
    expected = []
    for b in (1, 2, 3):
        expected += [f"embedder.block{b}.hook_conv", f"embedder.block{b}.hook_pool"]
        expected += [f"embedder.block{b}.res{r}.{h}" for r in (1, 2) for h in res]
    expected += ["embedder.hook_relu3", "embedder.hook_fc", "embedder.hook_out"]
    expected += ["hook_logits", "hook_value"]
    assert names == expected
    assert all(impala_agent.hook_dict[n].name == n for n in names)


def test_run_with_cache_matches_manual_forward_maze(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    net = maze_agent.net
    (logits, value), cache = maze_agent.run_with_cache(obs)
    assert list(cache) == maze_agent.hook_names()
    with torch.no_grad():
        x = obs.float()
        conv = net.conv(x)
        res = residual(net.res1, conv)
        emb = F.relu(net.fc(F.relu(res).flatten(1)))
        manual_logits = net.fc_policy(emb)
        manual_value = net.fc_value(emb).squeeze(-1)
    torch.testing.assert_close(cache["hook_conv"], conv)
    torch.testing.assert_close(cache["res1.hook_relu1"], F.relu(conv))
    torch.testing.assert_close(cache["res1.hook_out"], res)
    torch.testing.assert_close(cache["hook_out"], emb)
    torch.testing.assert_close(logits, manual_logits)
    torch.testing.assert_close(value, manual_value)
    torch.testing.assert_close(cache["hook_logits"], logits)
    assert value.shape == (5,) and logits.shape == (5, 4)


def test_run_with_cache_matches_manual_forward_impala(impala_agent: HookedAgent) -> None:
    obs = image_obs()
    e = impala_agent.net.embedder
    (logits, _), cache = impala_agent.run_with_cache(obs)
    with torch.no_grad():
        x = obs.permute(0, 3, 1, 2).float() / 255
        conv = e.block1.conv(x)
        pooled = F.max_pool2d(conv, kernel_size=3, stride=2, padding=1)
        res1 = residual(e.block1.res1, pooled)
    assert cache["embedder.block1.hook_pool"].shape == (3, 16, 8, 8)
    torch.testing.assert_close(cache["embedder.block1.hook_conv"], conv)
    torch.testing.assert_close(cache["embedder.block1.hook_pool"], pooled)
    torch.testing.assert_close(cache["embedder.block1.res1.hook_out"], res1)
    torch.testing.assert_close(impala_agent.net.fc_policy(cache["embedder.hook_out"]), logits)


def test_cache_name_selection(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    _, by_list = maze_agent.run_with_cache(obs, names=["hook_out", "hook_conv"])
    assert list(by_list) == ["hook_conv", "hook_out"]  # forward order, not request order
    _, by_filter = maze_agent.run_with_cache(obs, names=lambda n: n.startswith("res1."))
    assert list(by_filter) == [n for n in maze_agent.hook_names() if n.startswith("res1.")]
    _, by_str = maze_agent.run_with_cache(obs, names="hook_value")
    assert list(by_str) == ["hook_value"]


def test_cache_is_detached_unless_with_grad(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    (_, value), cache = maze_agent.run_with_cache(obs)
    assert not cache["hook_out"].requires_grad and isinstance(cache, ActivationCache)
    with torch.no_grad():  # with_grad turns grad on for the pass, even inside no_grad
        (_, value), gcache = maze_agent.run_with_cache(obs, with_grad=True)
    (grad,) = torch.autograd.grad(value.sum(), gcache["hook_out"])
    # value = fc_value(emb), so d value.sum() / d emb is the value head's weight on every row.
    torch.testing.assert_close(grad, maze_agent.net.fc_value.weight.expand(5, -1))
    moved = gcache.to(torch.float64)
    assert moved["hook_out"].dtype == torch.float64 and len(moved) == len(gcache)


def test_cache_key_error_suggests_close_names(maze_agent: HookedAgent) -> None:
    _, cache = maze_agent.run_with_cache(grid_obs())
    with pytest.raises(KeyError, match="res1.hook_out"):
        cache["res1.hook_ot"]


def test_unknown_hook_name_lists_closest(impala_agent: HookedAgent) -> None:
    with pytest.raises(ValueError, match=r"embedder\.block2\.res1\.hook_out"):
        impala_agent.run_with_cache(image_obs(), names=["embedder.block2.res1.hookout"])
    with pytest.raises(ValueError, match="Unknown hook "):
        impala_agent.run_with_hooks(image_obs(), fwd_hooks=[("embeder.hook_fc", lambda a, h: a)])


def test_replacing_hook_changes_output(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    seen = []

    def zero(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        seen.append(hook.name)
        return torch.zeros_like(act)

    logits, value = maze_agent.run_with_hooks(obs, fwd_hooks=[("hook_out", zero)])
    assert seen == ["hook_out"]
    # With a zero embedding only the head biases remain.
    torch.testing.assert_close(logits, maze_agent.net.fc_policy.bias.expand(5, -1))
    torch.testing.assert_close(value, maze_agent.net.fc_value.bias.expand(5))
    plain_logits, _ = maze_agent(obs)
    assert not torch.allclose(plain_logits, logits)


def test_adding_vector_equals_manual_steering(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    net = maze_agent.net
    v = torch.randn(8, 9, 9, generator=torch.Generator().manual_seed(3))
    logits, _ = maze_agent.run_with_hooks(obs, fwd_hooks=[("res1.hook_out", lambda a, h: a + v)])
    with torch.no_grad():
        res = residual(net.res1, net.conv(obs.float())) + v
        manual = net.fc_policy(F.relu(net.fc(F.relu(res).flatten(1))))
    torch.testing.assert_close(logits, manual)


def test_hooks_removed_on_exception(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    baseline, _ = maze_agent(obs)
    with (
        pytest.raises(RuntimeError, match="boom"),
        maze_agent.hooks(fwd_hooks=[(lambda n: True, lambda a, h: a * 0)]),
    ):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in maze_agent.modules())
    torch.testing.assert_close(maze_agent(obs)[0], baseline)
    # A bad name after good hooks were added removes the good ones too.
    with (
        pytest.raises(ValueError),
        maze_agent.hooks(
            fwd_hooks=[("hook_out", lambda a, h: a * 0), ("no_such_hook", lambda a, h: a)]
        ),
    ):
        pass
    assert all(not m._forward_hooks for m in maze_agent.modules())


def test_hook_inside_context_is_active_and_reset_hooks(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    baseline, _ = maze_agent(obs)
    with maze_agent.hooks(fwd_hooks=[("hook_logits", lambda a, h: a + 1.0)]):
        torch.testing.assert_close(maze_agent(obs)[0], baseline + 1.0)
    maze_agent.add_hook("hook_logits", lambda a, h: a - 2.0)
    torch.testing.assert_close(maze_agent(obs)[0], baseline - 2.0)
    maze_agent.reset_hooks()
    torch.testing.assert_close(maze_agent(obs)[0], baseline)
    with pytest.raises(ValueError, match=r"\(name, fn\) pair"):
        maze_agent.run_with_hooks(obs, fwd_hooks=["hook_out"])


def test_backward_hook_captures_gradient(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    grads = {}

    def save(grad: torch.Tensor, hook: HookPoint) -> None:
        grads[hook.name] = grad

    _, value = maze_agent.run_with_hooks(obs, bwd_hooks=[("res1.hook_conv1", save)])
    value.sum().backward()  # after the hooks block: still reaches the hook
    maze_agent.zero_grad(set_to_none=True)
    (_, value2), cache = maze_agent.run_with_cache(obs, names=["res1.hook_conv1"], with_grad=True)
    (expected,) = torch.autograd.grad(value2.sum(), cache["res1.hook_conv1"])
    torch.testing.assert_close(grads["res1.hook_conv1"], expected)
    assert expected.abs().sum() > 0


def test_backward_hook_can_replace_gradient(maze_agent: HookedAgent) -> None:
    x = maze_agent.preprocess(grid_obs()).requires_grad_(True)
    with maze_agent.hooks(bwd_hooks=[("hook_conv", lambda g, h: torch.zeros_like(g))]):
        _, value = maze_agent.forward_input(x)
        (gx,) = torch.autograd.grad(value.sum(), x)
    assert torch.count_nonzero(gx) == 0  # every path from input to value goes through hook_conv


def test_float64(impala_agent: HookedAgent) -> None:
    agent64 = build_agent("impala", (16, 16, 3), 15, seed=2).to(torch.float64)
    obs = image_obs()
    assert agent64.preprocess(obs).dtype == torch.float64 and agent64.dtype == torch.float64
    (logits, value), cache = agent64.run_with_cache(obs)
    assert logits.dtype == value.dtype == cache["embedder.hook_out"].dtype == torch.float64
    ref_logits, ref_value = impala_agent(obs)
    torch.testing.assert_close(logits.float(), ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value.float(), ref_value, atol=1e-5, rtol=1e-5)


def test_from_module_hooks_and_inplace_relu_safe_cache() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
    agent = HookedAgent.from_module(net, (4,), 3, output="q")
    assert agent.hook_names() == [
        "0.hook_out",
        "1.hook_out",
        "2.hook_out",
        "hook_logits",
        "hook_value",
    ]
    obs = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    _, cache = agent.run_with_cache(obs)
    pre = net[0](obs)
    # The in-place ReLU would overwrite an uncopied "0.hook_out"; the cache kept the negatives.
    torch.testing.assert_close(cache["0.hook_out"], pre.detach())
    assert (cache["0.hook_out"] < 0).any()
    torch.testing.assert_close(cache["1.hook_out"], F.relu(pre).detach())
    # Hooks on the wrapped module's own submodules change the output and leave no trace.
    q, _ = agent.run_with_hooks(obs, fwd_hooks=[("1.hook_out", lambda a, h: torch.zeros_like(a))])
    torch.testing.assert_close(q, net[2].bias.expand(6, -1).detach())
    assert all(not m._forward_hooks for m in net.modules())


def test_deepcopy_starts_without_agent_hooks(maze_agent: HookedAgent) -> None:
    obs = grid_obs()
    baseline, _ = maze_agent(obs)
    maze_agent.add_hook("hook_logits", lambda a, h: a + 1.0)
    try:
        twin = copy.deepcopy(maze_agent)
        torch.testing.assert_close(twin(obs)[0], baseline)  # copy is hook-free
        torch.testing.assert_close(maze_agent(obs)[0], baseline + 1.0)  # original keeps its hook
        twin.add_hook("hook_logits", lambda a, h: a * 0)
        twin.reset_hooks()  # must not touch the original's hooks
        torch.testing.assert_close(maze_agent(obs)[0], baseline + 1.0)
        assert twin.hook_dict["res1.hook_out"] is twin.net.res1.hook_out
    finally:
        maze_agent.reset_hooks()
