"""Built-in networks, HookedAgent I/O, checkpoints and loaders."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import require
from safetensors.torch import load_file
from torch import nn
from torch.distributions import Categorical

from policylens.agents import HookedAgent, build_agent, load_agent
from policylens.agents.models import FusedMazeCNN


def small_maze(**kwargs) -> HookedAgent:
    return build_agent("maze_cnn", (3, 9, 9), 4, channels=8, hidden=32, **kwargs)


def grid_obs(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3, 9, 9)) < 0.3).astype(np.uint8)


# --------------------------------------------------------------------------- models
def test_impala_parameter_names_match_research_layout() -> None:
    agent = build_agent("impala", (64, 64, 3), 15)
    keys = []
    for b in (1, 2, 3):
        keys += [f"embedder.block{b}.conv.{p}" for p in ("weight", "bias")]
        keys += [
            f"embedder.block{b}.res{r}.conv{c}.{p}"
            for r in (1, 2)
            for c in (1, 2)
            for p in ("weight", "bias")
        ]
    keys += ["embedder.fc.weight", "embedder.fc.bias", "fc_policy.weight", "fc_policy.bias"]
    keys += ["fc_value.weight", "fc_value.bias"]
    sd = agent.net.state_dict()
    assert list(sd) == keys
    assert sd["embedder.fc.weight"].shape == (256, 32 * 8 * 8)
    assert sd["embedder.block3.res2.conv2.weight"].shape == (32, 32, 3, 3)
    big = build_agent("impala", (64, 64, 3), 15, scale=4).net.state_dict()
    assert big["embedder.block1.conv.weight"].shape == (64, 3, 3, 3)
    assert big["embedder.fc.weight"].shape == (256, 128 * 8 * 8)


def test_build_agent_errors_and_seed() -> None:
    with pytest.raises(ValueError, match="Did you mean 'maze_cnn'.*Valid: impala, maze_cnn, mlp"):
        build_agent("maze_cn", (3, 9, 9), 4)
    with pytest.raises(ValueError, match="Did you mean 'channels'"):
        build_agent("maze_cnn", (3, 9, 9), 4, chanels=8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        build_agent("impala", (3, 64, 64), 15)
    state = torch.random.get_rng_state()
    a, b, c = small_maze(seed=5), small_maze(seed=5), small_maze(seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a.net.conv.weight, b.net.conv.weight)
    assert not torch.equal(a.net.conv.weight, c.net.conv.weight)


def test_orthogonal_init_gains() -> None:
    agent = build_agent("mlp", (8,), 4, hidden=[64, 64], seed=0)
    w = agent.net.policy_head.weight  # (4, 64), orthogonal rows with gain 0.01
    torch.testing.assert_close(w @ w.T, 1e-4 * torch.eye(4), atol=1e-7, rtol=0)
    v = agent.net.value_head.weight
    torch.testing.assert_close(v @ v.T, torch.ones(1, 1))
    h = agent.net.layers[1].linear.weight
    torch.testing.assert_close(h @ h.T, 2.0 * torch.eye(64), atol=1e-5, rtol=0)


def test_mlp_hooks_and_q_head() -> None:
    agent = build_agent("mlp", (75,), 10, hidden=[32, 16], activation="relu", head="q")
    assert agent.hook_names() == [
        "layers.0.hook_linear",
        "layers.0.hook_act",
        "layers.1.hook_linear",
        "layers.1.hook_act",
        "hook_logits",
        "hook_value",
    ]
    obs = np.random.default_rng(0).random((3, 75)).astype(np.float32)
    (q, value), cache = agent.run_with_cache(obs)
    torch.testing.assert_close(q, agent.net.q_head(cache["layers.1.hook_act"]))
    torch.testing.assert_close(value, q.max(-1).values)
    assert torch.all(cache["layers.0.hook_act"] >= 0)
    # An MLP on a grid flattens it.
    flat = build_agent("mlp", (3, 9, 9), 4)
    assert flat.net.layers[0].linear.in_features == 243 and flat(grid_obs())[0].shape == (4, 4)


def test_clear_cnn_layers_hooks_and_l2_pooling() -> None:
    from policylens.agents.models import l2_pool

    agent = build_agent("clear_cnn", (52, 52, 3), 15, seed=1)
    obs = np.random.default_rng(0).integers(0, 256, (2, 52, 52, 3), dtype=np.uint8)
    (logits, value), cache = agent.run_with_cache(obs)
    assert logits.shape == (2, 15) and value.shape == (2,)
    # stride 2 then three 2x2 pools: 52 -> 26 -> 13 (conv2a/2b, a cell per tile at 4 px) -> 7 -> 4
    assert cache["conv1a.hook_out"].shape == (2, 16, 26, 26)
    assert cache["conv2b.hook_out"].shape == (2, 32, 13, 13)
    assert cache["hook_pool3"].shape == (2, 32, 4, 4)
    assert agent.net.fc.in_features == 32 * 4 * 4
    assert {"hook_value", "conv2b.hook_conv", "hook_fc"} <= set(agent.hook_names())
    x = torch.tensor([[[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]], requires_grad=True)  # (1, 1, 2, 3)
    pooled = l2_pool(x)
    torch.testing.assert_close(pooled, torch.tensor([[[[2.5, 0.0]]]]), atol=1e-3, rtol=0)
    pooled.sum().backward()  # an all-zero window (after a ReLU) has a finite gradient
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="first_stride 1, 2 or 4"):
        build_agent("clear_cnn", (52, 52, 3), 15, first_stride=3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        build_agent("clear_cnn", (9, 13, 13), 15)


def test_maze_cnn_channels_last_gives_same_values() -> None:
    a = small_maze(seed=3, channels_last=True)
    b = small_maze(seed=3, channels_last=False)
    obs = grid_obs()
    torch.testing.assert_close(a(obs)[0], b(obs)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a(obs)[1], b(obs)[1], atol=1e-5, rtol=1e-5)


def test_maze_cnn_channels_last_gradients_match_and_keep_one_layout() -> None:
    """The flatten into fc keeps gradients in the convs' layout (mixed layouts are slow)."""
    a = small_maze(seed=3, channels_last=True)
    b = small_maze(seed=3, channels_last=False)
    obs = grid_obs()
    layouts = []
    for agent in (a, b):

        def record(grad, hook):
            layouts.append(grad.is_contiguous(memory_format=torch.channels_last))

        with agent.hooks(bwd_hooks=[("res1.hook_out", record)]):
            logits, value = agent(obs)
            (logits.logsumexp(-1).sum() + value.sum()).backward()
    assert layouts == [True, False]
    for (name, pa), (_, pb) in zip(a.net.named_parameters(), b.net.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=name)


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as oneDNN needs."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def test_fused_maze_cnn_is_available_wherever_this_machine_can_run_it() -> None:
    """The probe must not hide broken kernels: where oneDNN is built in, float32 must work, and
    bf16 too on a CPU with native bf16; a failure here shows the kernels' error."""
    onednn = torch.backends.mkldnn.is_available()
    for dtype, expected in ((torch.float32, onednn), (torch.bfloat16, onednn and native_bf16())):
        reason = FusedMazeCNN.unavailable_reason(dtype)
        if expected:
            assert reason is None and FusedMazeCNN.available(dtype), reason
    if not onednn:
        assert "without oneDNN" in FusedMazeCNN.unavailable_reason(torch.float32)


@pytest.mark.parametrize("res_blocks", [0, 1, 2])
def test_fused_maze_cnn_matches_the_module(res_blocks: int) -> None:
    """The rollout's fused oneDNN form gives the module's outputs (float32 exactly, bf16 close)."""
    agent = build_agent("maze_cnn", (3, 9, 7), 4, channels=8, hidden=32, res_blocks=res_blocks)
    x = agent.preprocess(np.concatenate([grid_obs(6)[..., :7], grid_obs(6, seed=1)[..., :7]]))
    onednn = torch.backends.mkldnn.is_available()
    must_run = {torch.float32: onednn, torch.bfloat16: onednn and native_bf16()}
    ran = set()
    with torch.no_grad():
        logits, value = agent(x)
        for (dtype, tol), batch in itertools.product(
            ((torch.float32, 1e-5), (torch.bfloat16, 0.05)), (None, 12, 5)
        ):
            fused = agent.net.fused(dtype, batch)
            if fused is None:
                # Only legitimately absent: no oneDNN, or bf16 on a CPU without native bf16.
                assert not must_run[dtype], FusedMazeCNN.unavailable_reason(dtype)
                continue
            ran.add(dtype)
            fused_logits, fused_value = fused(x)
            assert fused_logits.dtype == fused_value.dtype == dtype
            torch.testing.assert_close(fused_logits.float(), logits, atol=tol, rtol=tol)
            torch.testing.assert_close(fused_value.float(), value, atol=tol, rtol=tol)
    assert ran >= {dtype for dtype, must in must_run.items() if must}


def test_acting_forward_is_fused_only_where_nothing_would_be_missed() -> None:
    """Hooked agents and networks without a fused form act through the agent itself."""
    agent = small_maze(seed=0)
    obs = torch.from_numpy(grid_obs())
    act = agent.acting_forward(torch.float32)
    if torch.backends.mkldnn.is_available():  # then the fused form must run (see above)
        assert act is not agent, FusedMazeCNN.unavailable_reason(torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(act(obs)[0], agent(obs)[0], atol=1e-5, rtol=1e-5)
    else:
        assert act is agent
    with agent.hooks(fwd_hooks=[("hook_fc", lambda act, hook: act)]):
        assert agent.acting_forward(torch.float32) is agent
    mlp = build_agent("mlp", (8,), 4)
    assert mlp.acting_forward(torch.float32) is mlp


def test_acting_forward_falls_back_where_the_fused_kernels_fail(monkeypatch) -> None:
    """A PyTorch whose internal oneDNN ops are missing or changed trains through the module."""

    def broken(self, x):
        raise RuntimeError("mkldnn::_convolution_pointwise: no such op")

    monkeypatch.setattr(FusedMazeCNN, "__call__", broken)
    FusedMazeCNN.unavailable_reason.cache_clear()
    try:
        assert not FusedMazeCNN.available()
        assert "RuntimeError: mkldnn::_convolution_pointwise: no such op" in (
            FusedMazeCNN.unavailable_reason(torch.float32)
        )
        agent = small_maze(seed=0)
        assert agent.acting_forward(torch.float32) is agent
    finally:
        FusedMazeCNN.unavailable_reason.cache_clear()


# --------------------------------------------------------------------------- observations
def test_preprocess_shapes_dtypes_and_errors() -> None:
    agent = small_maze()
    one = grid_obs(1)[0]
    assert agent.preprocess(one).shape == (1, 3, 9, 9)
    assert agent.preprocess(torch.from_numpy(grid_obs(7))).dtype == torch.float32
    with pytest.raises(
        ValueError,
        match=r"Expected observations of shape \(3, 9, 9\) or a batch \(N, 3, 9, 9\), "
        r"got \(9, 9, 3\)",
    ):
        agent.preprocess(np.zeros((9, 9, 3)))
    image = build_agent("impala", (16, 16, 3), 15)
    pix = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = image.preprocess(pix)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[1, 2], torch.from_numpy(pix[1, :, :, 2]).float() / 255)


def test_act_distribution_and_value() -> None:
    agent = small_maze()
    obs = grid_obs(64)
    logits, value = agent(obs)
    torch.testing.assert_close(agent.act(obs, greedy=True), logits.argmax(-1))
    dist = agent.distribution(obs)
    assert isinstance(dist, Categorical)
    torch.testing.assert_close(dist.probs, torch.softmax(logits, -1))
    a1 = agent.act(obs, generator=torch.Generator().manual_seed(7))
    a2 = agent.act(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a1, a2) and a1.dtype == torch.int64 and a1.shape == (64,)
    torch.testing.assert_close(agent.value(obs), value)


# --------------------------------------------------------------------------- checkpoints
def test_save_load_roundtrip_bit_exact(tmp_path: Path) -> None:
    agent = build_agent("mlp", (8,), 4, hidden=[16], head="q", seed=4)
    with torch.no_grad():
        agent.net.q_head.bias.add_(0.123)  # differ from a fresh init
    out = agent.save_pretrained(tmp_path / "agent")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())["agent"]
    assert config["arch"] == "mlp" and config["kwargs"]["head"] == "q"
    loaded = load_agent(out)
    for k, v in agent.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v), k
    obs = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    assert torch.equal(loaded(obs)[0], agent(obs)[0])
    assert torch.equal(loaded(obs)[1], agent(obs)[1])


def test_trainer_checkpoint_with_config_beside(tmp_path: Path) -> None:
    agent = small_maze(seed=9)
    run = tmp_path / "run"
    agent.save_weights(run / "checkpoints" / "step_100.safetensors")
    ckpt = run / "checkpoints" / "step_100.safetensors"
    with pytest.raises(ValueError, match="No agent config found.*pass config="):
        load_agent(ckpt)
    assert torch.equal(load_agent(ckpt, config=agent.config)(grid_obs())[0], agent(grid_obs())[0])
    (run / "config.json").write_text(json.dumps({"total_steps": 5, "agent": agent.config}))
    assert torch.equal(load_agent(ckpt)(grid_obs())[1], agent(grid_obs())[1])
    assert set(load_file(ckpt)) == set(agent.net.state_dict())


def test_run_folder_loads_its_latest_checkpoint(tmp_path: Path) -> None:
    first, last = small_maze(seed=1), small_maze(seed=2)
    run = tmp_path / "run"
    first.save_weights(run / "checkpoints" / "step_0.safetensors")
    last.save_weights(run / "checkpoints" / "step_100.safetensors")
    (run / "checkpoints" / "step_20.safetensors.tmp").write_text("a write in progress")
    (run / "config.json").write_text(json.dumps({"trainer": {}, "agent": first.config}))
    obs = grid_obs()
    assert torch.equal(load_agent(run)(obs)[0], last(obs)[0])
    assert torch.equal(load_agent(str(run))(obs)[0], last(obs)[0])
    ckpt = run / "checkpoints" / "step_0.safetensors"
    assert torch.equal(load_agent(ckpt)(obs)[0], first(obs)[0])
    for f in (run / "checkpoints").glob("step_*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"has no checkpoints yet; train it first\.$"):
        load_agent(run)
    with pytest.raises(ValueError, match="config= is for a .safetensors file"):
        load_agent(run, config=first.config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"neither a run folder .* nor an agent folder"):
        load_agent(tmp_path / "empty")


def test_load_agent_takes_agents_and_refuses_other_objects() -> None:
    agent = small_maze()
    assert load_agent(agent, dtype=torch.float64) is agent and agent.dtype == torch.float64
    with pytest.raises(ValueError, match=r"got a Linear; wrap a PyTorch module with HookedAgent"):
        load_agent(nn.Linear(2, 2))


def test_wrong_architecture_names_parameters(tmp_path: Path) -> None:
    small_maze().save_pretrained(tmp_path / "a")
    other = build_agent("maze_cnn", (3, 9, 9), 4, channels=16, hidden=32)
    with pytest.raises(ValueError) as err:
        other.load_weights(tmp_path / "a" / "model.safetensors")
    msg = str(err.value)
    assert (
        "mis-shaped parameters conv.weight (checkpoint (8, 3, 3, 3) vs model (16, 3, 3, 3))" in msg
    )
    mlp = build_agent("mlp", (3, 9, 9), 4)
    with pytest.raises(ValueError) as err:
        mlp.load_weights(tmp_path / "a" / "model.safetensors")
    msg = str(err.value)
    assert "missing parameters layers.0.linear.weight" in msg
    assert re.search(r"unexpected parameters [^;]*conv\.weight", msg)


def test_truncated_or_missing_checkpoint(tmp_path: Path) -> None:
    out = small_maze().save_pretrained(tmp_path / "a")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_agent(out)
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_agent(out)
    with pytest.raises(FileNotFoundError, match="No agent at"):
        load_agent(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="takes a folder"):
        small_maze().save_pretrained(tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- from_module
def test_from_module_q_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 5))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    agent = HookedAgent.from_module(net, (6,), 5, output="q")
    obs = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    q, value = agent(obs)
    torch.testing.assert_close(q, net(obs))
    torch.testing.assert_close(value, net(obs).max(-1).values)
    assert torch.equal(agent.act(obs, greedy=True), net(obs).argmax(-1))
    assert agent.hook_names()[:3] == ["0.hook_out", "1.hook_out", "2.hook_out"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # Weights save; rebuilding from the file alone is refused with a clear sentence.
    agent.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="from_module"):
        load_agent(tmp_path / "q")
    twin = HookedAgent.from_module(
        nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 5)), (6,), 5, output="q"
    )
    twin.load_weights(tmp_path / "q" / "model.safetensors")
    assert torch.equal(twin(obs)[0], q)


def test_from_module_names_what_output_needs() -> None:
    class PolicyAndValue(nn.Module):
        """Returns (distribution, value), as research code often does."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> tuple[Categorical, torch.Tensor]:
            return Categorical(logits=self.body(x)), x.sum(-1)

    with pytest.raises(ValueError) as err:
        HookedAgent.from_module(PolicyAndValue(), (3,), 2)
    msg = str(err.value)
    assert (
        "output='policy_value'" in msg and "a tuple of a Categorical, a tensor of shape (1,)" in msg
    )
    assert "output=a function mapping the network's output to (logits, value)" in msg
    with pytest.raises(ValueError, match=r"\(a tensor of shape \(1, 2\)\).*pass output='q'"):
        HookedAgent.from_module(nn.Linear(3, 2), (3,), 2)  # logits only: no value
    with pytest.raises(ValueError, match=r"a tuple of a tensor .*, a tensor .*, a tensor"):
        HookedAgent.from_module(ThreeOutputs(), (3,), 2)
    fixed = HookedAgent.from_module(
        PolicyAndValue(), (3,), 2, output=lambda out: (out[0].logits, out[1])
    )
    assert fixed(np.zeros((4, 3), np.float32))[0].shape == (4, 2)


class ThreeOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pi = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pi(x), x.sum(-1), x


def test_from_module_hook_names_are_the_hooks_that_fire() -> None:
    class Partly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
            self.unused = nn.Linear(8, 8)
            self.lstm = nn.LSTM(8, 8, batch_first=True)  # returns a tuple: no tensor to hook
            self.pi = nn.Linear(8, 2)
            self.v = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h, _ = self.lstm(self.trunk(x)[:, None])
            return self.pi(h[:, 0]), self.v(h[:, 0])

    agent = HookedAgent.from_module(Partly(), (3,), 2)
    names = agent.hook_names()
    assert names == [
        "trunk.0.hook_out",
        "trunk.1.hook_out",
        "trunk.hook_out",
        "pi.hook_out",
        "v.hook_out",
        "hook_logits",
        "hook_value",
    ]
    _, cache = agent.run_with_cache(np.zeros((2, 3), np.float32))
    assert list(cache) == names
    with pytest.raises(ValueError, match="Unknown hook 'unused.hook_out'"):
        agent.run_with_cache(np.zeros((2, 3), np.float32), names=["unused.hook_out"])


def test_from_module_callable_output_and_shape_check() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 8)
            self.pi = nn.Linear(8, 2)
            self.v = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = torch.relu(self.body(x))
            return {"pi": self.pi(h), "v": self.v(h)}

    agent = HookedAgent.from_module(TwoHeads(), (3,), 2, output=lambda o: (o["pi"], o["v"]))
    logits, value = agent(np.zeros((4, 3), np.float32))
    assert logits.shape == (4, 2) and value.shape == (4,)
    assert "body.hook_out" in agent.hook_names()
    with pytest.raises(ValueError, match=r"expected \(1, 3\)"):
        HookedAgent.from_module(nn.Linear(3, 2), (3,), 3, output="q")


# --------------------------------------------------------------------------- research checkpoints
class RefResidualBlock(nn.Module):
    """Independent plain-PyTorch copy of the research code's residual block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class RefImpalaBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.res1 = RefResidualBlock(cout)
        self.res2 = RefResidualBlock(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res2(self.res1(x))


class RefImpalaModel(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.block1 = RefImpalaBlock(3, 16 * scale)
        self.block2 = RefImpalaBlock(16 * scale, 32 * scale)
        self.block3 = RefImpalaBlock(32 * scale, 32 * scale)
        self.fc = nn.Linear(32 * scale * 8 * 8, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block3(self.block2(self.block1(x))))
        return F.relu(self.fc(x.reshape(x.shape[0], -1)))


class RefCategoricalPolicy(nn.Module):
    def __init__(self, scale: int, actions: int = 15) -> None:
        super().__init__()
        self.embedder = RefImpalaModel(scale)
        self.fc_policy = nn.Linear(256, actions)
        self.fc_value = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> tuple[Categorical, torch.Tensor]:
        h = self.embedder(x)
        log_probs = F.log_softmax(self.fc_policy(h), dim=1)
        return Categorical(logits=log_probs), self.fc_value(h).reshape(-1)


@pytest.mark.parametrize("scale", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_research_impala_checkpoint_parity(tmp_path: Path, scale: int) -> None:
    torch.manual_seed(scale)
    ref = RefCategoricalPolicy(scale).eval()
    opt = torch.optim.Adam(ref.parameters())
    path = tmp_path / "maze_policy.pth"
    torch.save(
        {"model_state_dict": ref.state_dict(), "optimizer_state_dict": opt.state_dict()}, path
    )
    agent = load_agent(path)
    assert agent.obs_kind == "image" and agent.num_actions == 15
    assert agent.config["kwargs"]["scale"] == scale
    obs = np.random.default_rng(scale).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        dist, value = ref(torch.from_numpy(obs).permute(0, 3, 1, 2).float() / 255)
        ours = agent.distribution(obs)
        torch.testing.assert_close(ours.logits, dist.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(agent.value(obs), value, atol=1e-6, rtol=0)


def test_research_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    ref = RefCategoricalPolicy(1)
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": ref.state_dict(), "extra": Path("x")}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        load_agent(path)
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an IMPALA maze checkpoint.*HookedAgent.from_module"):
        load_agent(tmp_path / "other.pth")


def test_a_pickled_module_is_refused_in_one_plain_sentence(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(RefCategoricalPolicy(1), path)  # the whole module, pickled
    with pytest.raises(ValueError) as err:
        load_agent(path)
    msg = str(err.value)
    assert msg == (
        f"{path} holds pickled Python objects, which policylens does not load because unpickling "
        "can run code; save the weights alone with torch.save(model.state_dict(), path), or as "
        ".safetensors."
    )
    assert "\x1b" not in msg and "weights_only=False" not in msg
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot be read as a PyTorch checkpoint .*corrupt"):
        load_agent(path)


# --------------------------------------------------------------------------- Stable-Baselines3
def test_sb3_policy_parity() -> None:
    sb3 = require("stable_baselines3")

    model = sb3.PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    agent = load_agent(model)
    obs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(obs)
        expected_logits = model.policy.get_distribution(t).distribution.logits
        expected_value = model.policy.predict_values(t).squeeze(-1)
        logits, value = agent(obs)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(value, expected_value)
    names = agent.hook_names()
    assert any(n.startswith("policy.mlp_extractor.policy_net") for n in names)
    # The policy and its mlp_extractor are containers whose own forward never runs.
    assert "policy.hook_out" not in names and "policy.mlp_extractor.hook_out" not in names
    assert load_agent(model.policy).hook_names() == names


def test_sb3_zip_loads_without_unpickling(tmp_path: Path, monkeypatch) -> None:
    sb3 = require("stable_baselines3")
    import pickle

    kwargs = {"net_arch": {"pi": [32], "vf": [16, 16]}, "activation_fn": nn.ReLU}
    model = sb3.A2C("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=kwargs)
    model.save(tmp_path / "a2c.zip")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled")

    with monkeypatch.context() as m:
        m.setattr(pickle, "loads", no_unpickling)
        m.setattr("cloudpickle.loads", no_unpickling)
        agent = load_agent(tmp_path / "a2c.zip")
    obs = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    with torch.no_grad():
        expected = model.policy.get_distribution(torch.from_numpy(obs)).distribution.logits
        torch.testing.assert_close(agent(obs)[0], expected)
    assert any(n.startswith("policy.mlp_extractor.value_net.2") for n in agent.hook_names())
    # The rebuilt agent saves and loads like any other.
    again = load_agent(agent.save_pretrained(tmp_path / "agent"))
    torch.testing.assert_close(again(obs)[1], agent(obs)[1])
    sb3.DQN("MlpPolicy", "CartPole-v1", device="cpu").save(tmp_path / "dqn.zip")
    with pytest.raises(ValueError, match=r"holds an SB3 DQNPolicy policy.*pass the model to load"):
        load_agent(tmp_path / "dqn.zip")
    (tmp_path / "not.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Stable-Baselines3 model saved with model.save"):
        load_agent(tmp_path / "not.zip")


def test_mlp_separate_value_layers_do_not_share_the_trunk() -> None:
    agent = build_agent("mlp", (8,), 4, hidden=[16, 16], separate_value=True)
    x = torch.randn(5, 8)
    logits, value = agent(x)
    with torch.no_grad():
        agent.net.layers[0].linear.weight.add_(1.0)  # the policy's trunk only
    logits2, value2 = agent(x)
    assert not torch.allclose(logits, logits2)
    torch.testing.assert_close(value, value2)
    assert "value_layers.1.hook_act" in agent.hook_names()
    with pytest.raises(ValueError, match="separate_value"):
        build_agent("mlp", (8,), 4, head="q", separate_value=True)
