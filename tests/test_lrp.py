"""LRP: equal to tdhook's LRP (<= 1e-6 relative) and Captum's (<= 1e-5) where their conventions
agree, the residual split against a hand computation, conservation, every built-in network,
bad options, and ``policylens attribute --method lrp``.

Which peer has which rule: tdhook 0.3 has epsilon, alpha-beta (z-plus = alpha 1, beta 0), flat
and w-square, and no gamma; Captum 0.9 has epsilon, gamma and alpha1-beta0 (z-plus with the
bias left in, or zeroed by ``set_bias_to_zero``). Neither splits a functional residual ``+``
(both copy the relevance into each summand), so residual networks are checked by hand."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from tdhook.attribution import LRP as TdhookLRP
from tdhook.attribution.lrp_helpers import rules as td_rules
from tensordict import TensorDict
from torch import nn
from typer.testing import CliRunner

from policylens.agents import HookedAgent, build_agent
from policylens.agents.hooks import HookPoint
from policylens.lenses.attribution import attribute, method_from_name
from policylens.lenses.relevance import LRP, Composite

LAYERS = (nn.Linear, nn.Conv2d)


class SmallNet(nn.Module):
    """conv, ReLU, max-pool, conv, ReLU, flatten, linear, ReLU, head (4 logits and a value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc, self.relu3, self.head = nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv(x)))))
        return self.head(self.relu3(self.fc(h.flatten(1))))


class Joined(nn.Module):
    """A built-in network's (logits, value) as one (batch, A + 1) tensor, for the peers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, value = self.net(x)
        return torch.cat([logits, value[:, None]], 1)


def small_agent(seed: int = 0, bias: bool = True) -> tuple[nn.Module, HookedAgent]:
    torch.manual_seed(seed)
    net = SmallNet().double()
    if not bias:
        for m in net.modules():
            if isinstance(m, LAYERS):
                nn.init.zeros_(m.bias)
    agent = HookedAgent.from_module(net, (3, 8, 8), 4, obs_kind="grid",
                                    output=lambda o: (o[:, :4], o[:, 4]))  # fmt: skip
    return net, agent


def builtin(arch: str, seed: int = 0) -> tuple[nn.Module, HookedAgent, torch.Tensor]:
    """maze_cnn without residual blocks and a ReLU MLP, with random biases (their init is 0)."""
    if arch == "maze_cnn":
        agent = build_agent("maze_cnn", (3, 7, 7), 4, seed=seed, res_blocks=0, hidden=32)
        x = torch.rand(5, 3, 7, 7, generator=torch.Generator().manual_seed(seed))
    else:
        agent = build_agent("mlp", (6,), 4, seed=seed, activation="relu", hidden=[16, 16])
        x = torch.rand(5, 6, generator=torch.Generator().manual_seed(seed)) - 0.5
    agent = agent.double()
    with torch.no_grad():
        for m in agent.net.modules():
            if isinstance(m, LAYERS):
                m.bias.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
    return Joined(agent.net), agent, x.double()


def tdhook_lrp(model: nn.Module, x: torch.Tensor, index: int, mapper) -> torch.Tensor:
    """tdhook's relevance of output ``index``, starting from the output's value."""

    def target(t, _):
        return TensorDict(out=t["output"][..., index], batch_size=t.batch_size)

    def start(t, _):  # relevance at the output = the output (LRP's convention)
        return TensorDict(out=t["out"].detach(), batch_size=t.batch_size)

    lrp = TdhookLRP(rule_mapper=mapper, init_attr_targets=target, init_attr_grads=start,
                    warn_on_missing_rule=False, skip_modules=TdhookLRP.default_skip)  # fmt: skip
    with lrp.prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, batch_size=[len(x)]))
    return out["attr", "input"]


def captum_lrp(model: nn.Module, x: torch.Tensor, index: int, rule, zero_bias=False):
    """Captum's relevance of output ``index``; hook points become (eval) Dropout, which Captum
    passes relevance through, since it refuses modules it has no rule for."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, HookPoint):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Dropout())
        elif isinstance(m, LAYERS):
            m.rule = rule()
            if zero_bias:
                nn.init.zeros_(m.bias)
    return CaptumLRP(model.eval()).attribute(x.clone(), target=index), model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def every(rule):
    return lambda name, m: rule() if isinstance(m, LAYERS) else None


# ----------------------------------------------------------------------------- tdhook
TDHOOK_CASES = {
    "epsilon": (LRP(epsilon=1e-6), every(lambda: td_rules.EpsilonRule(epsilon=1e-6))),
    "zplus": (LRP(rules="zplus"), every(lambda: td_rules.AlphaBetaRule(alpha=1.0, beta=0.0))),
    "alpha_beta": (LRP(rules="alpha_beta"), every(td_rules.AlphaBetaRule)),
    "epsilon_flat": (
        LRP(rules=Composite(first="flat")),
        lambda n, m: td_rules.FlatRule() if n == "conv" else every(td_rules.EpsilonRule)(n, m),
    ),
    "epsilon_w_square": (
        LRP(rules=Composite(first="w_square")),
        lambda n, m: td_rules.WSquareRule() if n == "conv" else every(td_rules.EpsilonRule)(n, m),
    ),
}


@pytest.mark.parametrize("case", TDHOOK_CASES)
def test_lrp_equals_tdhook_on_a_small_net(case):
    net, agent = small_agent()
    method, mapper = TDHOOK_CASES[case]
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x - 0.3  # negative inputs too: alpha-beta splits them
    for target, index in (("value", 4), ("logit:2", 2)):
        ref = tdhook_lrp(net, x, index, mapper)
        ours = attribute(agent, x, method, target, preprocessed=True)
        assert rel(ours.attributions, ref) <= 1e-6, (case, target)


@pytest.mark.parametrize("arch", ["maze_cnn", "mlp"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_lrp_equals_tdhook_on_builtin_networks(arch, rule):
    joined, agent, x = builtin(arch)
    method, mapper = TDHOOK_CASES[rule]
    ref = tdhook_lrp(joined, x, 4, mapper)
    assert rel(attribute(agent, x, method, "value", preprocessed=True).attributions, ref) <= 1e-6


# ----------------------------------------------------------------------------- Captum
CAPTUM_CASES = {
    "epsilon": (LRP(epsilon=1e-6), lambda: EpsilonRule(epsilon=1e-6), False),
    "gamma": (LRP(rules="gamma", epsilon=1e-9), lambda: GammaRule(gamma=0.25), False),
    "zplus": (LRP(rules="zplus", epsilon=1e-9), lambda: Alpha1_Beta0_Rule(True), True),
}


@pytest.mark.parametrize("case", CAPTUM_CASES)
def test_lrp_equals_captum_on_a_small_net(case):
    method, rule, zero_bias = CAPTUM_CASES[case]
    net, _ = small_agent(bias=not zero_bias)
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for index, target in ((4, "value"), (1, "logit:1")):
        ref, model = captum_lrp(net, x, index, rule, zero_bias)
        agent = HookedAgent.from_module(model, (3, 8, 8), 4, obs_kind="grid",
                                        output=lambda o: (o[:, :4], o[:, 4]))  # fmt: skip
        ours = attribute(agent, x, method, target, preprocessed=True).attributions
        assert rel(ours, ref) <= 1e-5, (case, target)


@pytest.mark.parametrize("arch", ["maze_cnn", "mlp"])
@pytest.mark.parametrize("case", ["epsilon", "gamma"])
def test_lrp_equals_captum_on_builtin_networks(arch, case):
    method, rule, _ = CAPTUM_CASES[case]
    joined, agent, x = builtin(arch)
    if case == "gamma":
        x = x.abs()  # Captum's gamma leaves the inputs unsplit: meant for x >= 0
    ref, _ = captum_lrp(joined, x, 4, rule)
    assert rel(attribute(agent, x, method, "value", preprocessed=True).attributions, ref) <= 1e-5


# ----------------------------------------------------------------------------- residual, by hand
class Residual(nn.Module):
    """value = w2 . (x + relu(W1 x + b1)) + b2: one residual add, as IMPALA's x + f(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(x + torch.relu(self.fc1(x)))


def test_residual_add_splits_relevance_in_proportion_by_hand():
    torch.manual_seed(3)
    net = Residual().double()
    agent = HookedAgent.from_module(net, (4,), 2, output=lambda o: (o[:, :2], o[:, 2]))
    x = np.random.default_rng(0).normal(size=(5, 4))
    eps = 1e-3
    ours = attribute(agent, x, LRP(epsilon=eps), "value").attributions.numpy()

    def stab(z):
        return z + eps * np.where(z < 0, -1.0, 1.0)

    w1, b1 = net.fc1.weight.detach().numpy(), net.fc1.bias.detach().numpy()
    w2, b2 = net.fc2.weight.detach().numpy()[2], net.fc2.bias.detach().numpy()[2]
    a = x @ w1.T + b1
    r = np.maximum(a, 0)
    s = x + r
    out = s @ w2 + b2
    rel_s = s * w2 * (out / stab(out))[:, None]  # epsilon rule at fc2
    rel_skip, rel_r = x / s * rel_s, r / s * rel_s  # the add: in proportion to each summand
    rel_lin = x * ((rel_r / stab(a)) @ w1)  # ReLU passes relevance through; epsilon at fc1
    np.testing.assert_allclose(ours, rel_skip + rel_lin, rtol=1e-7, atol=1e-12)


# ----------------------------------------------------------------------------- conservation
@pytest.mark.parametrize("arch", ["maze_cnn", "impala", "mlp"])
def test_epsilon_zero_conserves_on_a_bias_free_network(arch):
    """The built-in networks start bias-free, and residual adds split exactly: with epsilon 0
    the input relevance sums to the target, at the input and at a layer."""
    shape = {"maze_cnn": (3, 9, 9), "impala": (16, 16, 3), "mlp": (6,)}[arch]
    agent = build_agent(arch, shape, 4, seed=1, **({"activation": "relu"} if arch == "mlp" else {}))
    agent = agent.double()
    obs = np.random.default_rng(1).random((4, *shape))
    if arch == "impala":
        obs = (obs * 255).astype(np.uint8)
    for target in ("value", "logit:3"):
        r = attribute(agent, obs, LRP(epsilon=0.0), target)
        assert r.completeness.max_abs_error < 1e-9 * max(1.0, float(r.outputs.abs().max()))
    layer = {"maze_cnn": "res1.hook_out", "impala": "embedder.block2.hook_pool", "mlp": "layers.1.hook_act"}[arch]  # fmt: skip
    r = attribute(agent, obs, LRP(epsilon=0.0), "value", layer)
    assert r.attributions.shape == r.inputs.shape and r.completeness.max_abs_error < 1e-9
    biased = attribute(
        small_agent()[1], np.random.default_rng(0).random((3, 3, 8, 8)), LRP(), "value"
    )
    assert biased.completeness.max_abs_error > 1e-6  # biases absorb relevance: it is reported


@pytest.mark.parametrize("arch", ["maze_cnn", "impala", "mlp", "clear_cnn"])
def test_every_builtin_network_and_composite_runs(arch):
    shape = {"maze_cnn": (3, 9, 9), "impala": (16, 16, 3), "mlp": (6,), "clear_cnn": (16, 16, 3)}[arch]  # fmt: skip
    agent = build_agent(arch, shape, 4, seed=0)
    obs = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    for rules in ("epsilon", "epsilon_zplus_flat", "epsilon_gamma_wsquare", "alpha_beta"):
        r = attribute(agent, obs, method_from_name("lrp", rules=rules), "logit:1")
        assert (
            r.attributions.shape == (3, *r.inputs.shape[1:])
            and torch.isfinite(r.attributions).all()
        )
        assert r.info["rules"] and r.method == "lrp"


def test_channels_last_and_bf16_agree_with_float32():
    agent = build_agent("impala", (32, 32, 3), 15, seed=0)
    obs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    plain = attribute(agent, obs, LRP(channels_last=False), "value").attributions
    fast = attribute(agent, obs, LRP(), "value").attributions
    assert rel(fast, plain) < 1e-4
    half = attribute(copy.deepcopy(agent).bfloat16(), obs, LRP(), "value").attributions
    cos = torch.nn.functional.cosine_similarity(half.float().flatten(1), plain.flatten(1))
    assert cos.min() > 0.9  # bf16 keeps 8 bits through 15 layers: close, not equal


# ----------------------------------------------------------------------------- bad options
def test_bad_options_fail_in_one_sentence():
    with pytest.raises(ValueError, match="Unknown LRP.rules 'epsilonn'.*Did you mean 'epsilon'"):
        LRP(rules="epsilonn")
    with pytest.raises(ValueError, match="Composite.conv cannot be 'flat'.*Composite.first"):
        Composite(conv="flat")
    with pytest.raises(ValueError, match="Unknown Composite.dense rule 'zplsu'"):
        Composite(dense="zplsu")
    with pytest.raises(ValueError, match="LRP.alpha - LRP.beta must be 1"):
        LRP(alpha=3.0, beta=1.0)
    with pytest.raises(ValueError, match="LRP.epsilon must be >= 0"):
        LRP(epsilon=-1.0)
    _, agent = small_agent()
    obs = np.random.default_rng(0).random((2, 3, 8, 8))
    with pytest.raises(ValueError, match="LRP explains a network output.*'logit:<a>'"):
        attribute(agent, obs, LRP(), "action")
    with pytest.raises(ValueError, match="rule 'flat' at layer 'fc' needs a layer that reads"):
        attribute(agent, obs, LRP(rules=Composite(layers=(("fc", "flat"),))), "value")
    assert method_from_name("lrp", rules="zplus", n_steps=5) == LRP(rules="zplus")


def test_attribute_command_with_lrp(tmp_path):
    from policylens.cli import app
    from policylens.runs import Run

    agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=1)
    trainer = {"env_id": "policylens/Maze-v0", "env_kwargs": {"cheese_region": 1, "max_steps": 100}}
    run = Run.create(tmp_path / "run", {"kind": "ppo", "trainer": trainer, "agent": agent.config})
    run.save_checkpoint(agent, 0)
    res = CliRunner().invoke(app, ["attribute", str(run.path), "--method", "lrp", "--rules",
                                   "epsilon_zplus_flat", "--n-obs", "4", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["method"] == "lrp" and data["shape"] == [4, 3, 9, 9]
    assert data["completeness"]["max_abs_error"] < 1e-4  # bias-free at init: conserved
    assert data["rules"]["conv"] == "flat"
