"""Built-in networks with hook points at every conv, ReLU, residual add, embedding and head.

- :class:`ImpalaCNN`: the IMPALA network of the goal-misgeneralization maze models, with their
  exact module layout and parameter names, so their checkpoints load as they are.
- :class:`MazeCNN`: a small, fast residual CNN for the built-in grid maze.
- :class:`ClearCNN`: the plain conv stack with L2 pooling of Hilton et al.'s CoinRun agent
  (Lucid's ``clear_cnn``), for RGB frames.
- :class:`MLP`: for vector observations; a policy-value or a Q-network head.

:func:`build_agent` makes a :class:`HookedAgent` from an architecture name; the recipe is stored
in the agent's config, so :func:`~policylens.agents.load.load_agent` can rebuild it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policylens.agents.agent import HookedAgent
from policylens.agents.dt import ARCH as DT_ARCH
from policylens.agents.hooks import HookPoint
from policylens.agents.sb3 import is_sb3_config, sb3_agent_from_config

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": F.relu}


Layer = TypeVar("Layer", bound=nn.Linear | nn.Conv2d)


def layer_init(layer: Layer, gain: float = math.sqrt(2), bias: float = 0.0) -> Layer:
    """Orthogonal weights with ``gain`` and constant biases (CleanRL's PPO initialisation)."""
    nn.init.orthogonal_(layer.weight, gain)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, bias)
    return layer


def orthogonal_init(
    net: nn.Module, policy_head: nn.Linear, value_head: nn.Linear | None, policy_gain: float = 0.01
) -> None:
    """CleanRL initialisation: sqrt(2) for hidden layers, ``policy_gain`` (0.01) for the policy
    head, 1.0 for the value head."""
    heads = {id(policy_head), id(value_head)}
    with _one_thread():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and id(m) not in heads:
                layer_init(m, math.sqrt(2))
        layer_init(policy_head, policy_gain)
        if value_head is not None:
            layer_init(value_head, 1.0)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one thread: multi-threaded LAPACK QR (in ``orthogonal_``) took seconds instead of
    milliseconds for a 256x2048 matrix on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# --------------------------------------------------------------------------- residual blocks
@torch.fx.wrap  # one traced call: it branches on the map's layout (see lenses.attribution.tail_network)
def linear_over_map(x: Tensor, fc: nn.Linear) -> Tensor:
    """``fc(x.flatten(1))`` for a ``(batch, c, h, w)`` map, in whatever memory layout it has.

    ``fc``'s columns follow the (c, h, w) order. A channels-last map of a batch larger than
    ``fc``'s output is flattened as it lies (h, w, c) and meets ``fc``'s weight with its columns
    permuted to match: moving the weight costs less than moving the activations (27% off an
    input gradient of 3,200 maze rows, measured), and the activations' gradient stays
    channels-last, so it never meets channels-first gradients at the ReLUs and residual adds
    (PyTorch's CPU kernels over mixed layouts are ~35x slower than over one).
    """
    b, c, h, w = x.shape
    if x.is_contiguous() or b < fc.out_features:  # small batches: moving x is the cheaper copy
        return fc(x.flatten(1))
    return F.linear(x.permute(0, 2, 3, 1).reshape(b, -1), hwc_columns(fc.weight, c, h, w), fc.bias)


def hwc_columns(weight: Tensor, c: int, h: int, w: int) -> Tensor:
    """A linear layer's weight with its columns reordered from (c, h, w) to (h, w, c), the order
    in which a channels-last map flattens as it lies."""
    return weight.view(-1, c, h, w).permute(0, 2, 3, 1).flatten(1)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``out = conv2(relu(conv1(relu(x)))) + x``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.hook_relu1 = HookPoint()
        self.hook_conv1 = HookPoint()
        self.hook_relu2 = HookPoint()
        self.hook_conv2 = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:  # (batch, c, h, w) -> (batch, c, h, w)
        out = self.hook_relu1(F.relu(x))
        out = self.hook_conv1(self.conv1(out))
        out = self.hook_relu2(F.relu(out))
        out = self.hook_conv2(self.conv2(out))
        return self.hook_out(out + x)


class ImpalaBlock(nn.Module):
    """conv 3x3 -> max-pool 3x3 stride 2 -> two residual blocks (halves height and width)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.hook_conv = HookPoint()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.hook_pool = HookPoint()
        self.res1 = ResidualBlock(out_channels)
        self.res2 = ResidualBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:  # (batch, c_in, h, w) -> (batch, c_out, h/2, w/2)
        x = self.hook_pool(self.pool(self.hook_conv(self.conv(x))))
        return self.res2(self.res1(x))


class ImpalaEmbedder(nn.Module):
    """Three IMPALA blocks, ReLU, flatten, a 256-unit linear layer and ReLU."""

    def __init__(self, in_channels: int, scale: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        c1, c2, c3 = 16 * scale, 32 * scale, 32 * scale
        self.block1 = ImpalaBlock(in_channels, c1)
        self.block2 = ImpalaBlock(c1, c2)
        self.block3 = ImpalaBlock(c2, c3)
        self.hook_relu3 = HookPoint()
        h, w = input_size
        for _ in range(3):  # each max-pool (k 3, s 2, p 1) maps n to ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.fc = nn.Linear(c3 * h * w, 256)
        self.hook_fc = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:  # (batch, 3, H, W) -> (batch, 256)
        x = self.block3(self.block2(self.block1(x)))
        x = self.hook_relu3(F.relu(x))
        return self.hook_out(F.relu(self.hook_fc(linear_over_map(x, self.fc))))


class ImpalaCNN(nn.Module):
    """The IMPALA CNN of the procgen goal-misgeneralization maze agents (Langosco et al. 2022).

    Module layout and parameter names match that research code (``embedder.block1.conv``,
    ``embedder.block1.res1.conv1``, ..., ``embedder.fc``, ``fc_policy``, ``fc_value``), so its
    checkpoints load strictly. ``scale`` multiplies the channels (16, 32, 32). Input: float
    ``(batch, 3, H, W)`` in [0, 1]; procgen uses 64x64.
    """

    def __init__(
        self,
        num_actions: int = 15,
        scale: int = 1,
        in_channels: int = 3,
        input_size: int | Sequence[int] = 64,
        init: str = "orthogonal",
    ) -> None:
        super().__init__()
        self.embedder = ImpalaEmbedder(in_channels, scale, _pair(input_size))
        self.fc_policy = nn.Linear(256, num_actions)
        self.fc_value = nn.Linear(256, 1)
        _init(self, self.fc_policy, self.fc_value, init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embedder(x)  # (batch, 256)
        return self.fc_policy(h), self.fc_value(h).squeeze(-1)  # (batch, A), (batch,)


class MazeCNN(nn.Module):
    """Small residual CNN for the grid maze: conv 3x3, residual blocks, fc, policy/value heads.

    Layout (no pooling, the maze is only ``size`` cells wide): ``conv`` (in -> channels) ->
    ``res1..res{res_blocks}`` (pre-activation, as in IMPALA) -> ReLU -> flatten -> ``fc``
    (-> hidden) -> ReLU -> ``fc_policy`` / ``fc_value``. Convolutions run in ``channels_last``
    memory format when ``channels_last`` is on: oneDNN is several times faster with it on CPU;
    values are the same, and cached activations are then channels-last tensors.
    """

    def __init__(
        self,
        num_actions: int = 4,
        in_channels: int = 3,
        size: int | Sequence[int] = 9,
        channels: int = 16,
        res_blocks: int = 1,
        hidden: int = 256,
        channels_last: bool = True,
        init: str = "orthogonal",
    ) -> None:
        super().__init__()
        if channels < 1 or hidden < 1 or res_blocks < 0:
            raise ValueError(
                f"MazeCNN needs channels >= 1, hidden >= 1 and res_blocks >= 0, got "
                f"channels={channels}, hidden={hidden}, res_blocks={res_blocks}."
            )
        h, w = _pair(size)
        self.channels_last = channels_last
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.hook_conv = HookPoint()
        for i in range(res_blocks):
            self.add_module(f"res{i + 1}", ResidualBlock(channels))
        self.res_blocks = res_blocks
        self.hook_relu = HookPoint()
        self.map_shape = (channels, h, w)  # of the map that fc reads
        self.fc, self.hook_fc, self.hook_out, self.fc_policy, self.fc_value = _head(
            channels * h * w, hidden, num_actions
        )
        _init(self, self.fc_policy, self.fc_value, init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.hook_conv(self.conv(x))  # (batch, channels, h, w)
        for i in range(self.res_blocks):
            x = getattr(self, f"res{i + 1}")(x)
        x = self.hook_relu(F.relu(x))  # (batch, channels, h, w)
        h = self.hook_out(F.relu(self.hook_fc(linear_over_map(x, self.fc))))  # (batch, hidden)
        return self.fc_policy(h), self.fc_value(h).squeeze(-1)

    def fused(self, dtype: torch.dtype, batch: int | None = None) -> FusedMazeCNN | None:
        """This network's current weights as fused oneDNN kernels, or None where those kernels do
        not run (see :meth:`FusedMazeCNN.available`); ``batch`` is the usual batch size."""
        return FusedMazeCNN(self, dtype, batch) if FusedMazeCNN.available(dtype) else None


class FusedMazeCNN:
    """A :class:`MazeCNN`'s weights frozen into oneDNN's fused kernels, for no-grad forwards.

    PPO's rollout runs the network on one small batch per env step, where PyTorch's per-op
    overhead costs as much as the arithmetic. oneDNN's fused conv+ReLU, conv+add(+ReLU) and
    linear+ReLU kernels (those torch.compile's CPU backend emits), on weights cast to ``dtype``
    and laid out once, cut a forward of 64 mazes from 0.87 to 0.69 ms (measured in the rollout
    loop). With ``batch``, the usual batch size, the weights are also pre-packed in oneDNN's
    blocked layout for it (about 10% more off; other batch sizes still work). Outputs equal the
    module's up to rounding; hook points do not fire. The weights are read when this is built:
    build a new one after they change.
    """

    def __init__(self, net: MazeCNN, dtype: torch.dtype, batch: int | None = None) -> None:
        ops, (_, h, w) = torch.ops.mkldnn, net.map_shape

        def cast(t: Tensor) -> Tensor:
            return t.detach().to(dtype)

        def conv(c: nn.Conv2d) -> tuple[Tensor, Tensor]:
            weight = cast(c.weight).contiguous(memory_format=torch.channels_last)
            if batch is not None:
                size = [batch, c.in_channels, h, w]
                weight = ops._reorder_convolution_weight(weight, [1, 1], [1, 1], [1, 1], 1, size)
            assert c.bias is not None  # MazeCNN's convs all have biases
            return weight, cast(c.bias)

        self.dtype = dtype
        self.conv = conv(net.conv)
        self.blocks = [
            (conv(b.conv1), conv(b.conv2))
            for b in (getattr(net, f"res{i + 1}") for i in range(net.res_blocks))
        ]
        fc_weight = cast(hwc_columns(net.fc.weight, *net.map_shape)).contiguous()
        if batch is not None:
            fc_weight = ops._reorder_linear_weight(fc_weight, batch)
        self.fc = fc_weight, cast(net.fc.bias)
        self.heads = (
            cast(torch.cat([net.fc_policy.weight, net.fc_value.weight])),
            cast(torch.cat([net.fc_policy.bias, net.fc_value.bias])),
        )

    @staticmethod
    def available(dtype: torch.dtype = torch.float32) -> bool:
        """Whether this PyTorch and CPU run the fused kernels in ``dtype`` (probed once).

        The kernels are PyTorch's internal ``torch.ops.mkldnn`` ops: a build without oneDNN, a
        release that changed them, or a CPU that cannot run bf16 makes this False, and callers
        use the module itself. :meth:`unavailable_reason` says why.
        """
        return FusedMazeCNN.unavailable_reason(dtype) is None

    @staticmethod
    @functools.cache
    def unavailable_reason(dtype: torch.dtype = torch.float32) -> str | None:
        """None where the fused kernels run in ``dtype``, else why not (probed once per dtype)."""
        if not torch.backends.mkldnn.is_available():
            return "this PyTorch is built without oneDNN (torch.backends.mkldnn)"
        try:
            with torch.random.fork_rng(devices=[]):  # the tiny net's init leaves no trace
                net = MazeCNN(num_actions=2, in_channels=1, size=2, channels=2, hidden=2)
            FusedMazeCNN(net, dtype, batch=1)(torch.zeros(1, 1, 2, 2))
        except Exception as e:  # any failure means: not here
            return f"{dtype} fused kernels failed: {type(e).__name__}: {e}"
        return None

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(batch, c, h, w)`` input -> ``(logits, value)`` in ``dtype``, as ``MazeCNN.forward``."""
        ops, same = torch.ops.mkldnn, [1, 1]  # padding, stride and dilation of every 3x3 conv

        def conv(x: Tensor, weights: tuple[Tensor, Tensor], unary: str) -> Tensor:
            return ops._convolution_pointwise(x, *weights, same, same, same, 1, unary, [], "")

        def conv_add(
            x: Tensor, residual: Tensor, weights: tuple[Tensor, Tensor], unary: str | None
        ) -> Tensor:
            return ops._convolution_pointwise.binary(
                x, residual, *weights, same, same, same, 1, "add", None, unary, [], ""
            )

        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        if not self.blocks:
            x = conv(x, self.conv, "relu")
        else:
            x = conv(x, self.conv, "none")
            for k, (conv1, conv2) in enumerate(self.blocks):
                # pre-activation block; the last one's sum goes straight into the final ReLU
                last = k == len(self.blocks) - 1
                x = conv_add(conv(F.relu(x), conv1, "relu"), x, conv2, "relu" if last else None)
        h = ops._linear_pointwise(x.permute(0, 2, 3, 1).flatten(1), *self.fc, "relu", [], "")
        out = F.linear(h, *self.heads)
        return out[:, :-1], out[:, -1]


class ConvLayer(nn.Module):
    """A conv and its ReLU, hooked before (``hook_conv``) and after (``hook_out``) the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
        self.hook_conv = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:  # (batch, c_in, h, w) -> (batch, c_out, h/s, w/s)
        return self.hook_out(F.relu(self.hook_conv(self.conv(x))))


def l2_pool(x: Tensor) -> Tensor:
    """2x2 L2 pooling, stride 2 (odd sides round up): the root mean square of each window.

    The small constant under the root keeps the gradient finite where a window is all zeros
    (common after a ReLU).
    """
    return torch.sqrt(F.avg_pool2d(x * x, 2, ceil_mode=True) + 1e-6)


class ClearCNN(nn.Module):
    """The conv stack of Hilton et al.'s CoinRun agent (Lucid's ``clear_cnn``), for RGB frames.

    ``conv1a`` (7x7, ``channels``, stride ``first_stride``) -> L2 pool -> ``conv2a``, ``conv2b``
    (5x5, 2 x ``channels``) -> L2 pool -> ``conv3a`` (5x5, 2 x ``channels``) -> L2 pool -> ``fc``
    (-> ``hidden``) -> ReLU -> ``fc_policy`` / ``fc_value``. No residual connections and L2
    instead of max pooling, as in the paper: each layer's map is a plain function of the one
    below, so attributions and NMF at a middle layer (``conv2b.hook_out``) read cleanly. Hook
    points: ``conv<i>.hook_conv`` / ``conv<i>.hook_out`` (before / after each ReLU),
    ``hook_pool1..3``, ``hook_fc`` and ``hook_out``. ``first_stride`` 2 quarters the cost of
    every layer above the first (see :data:`ARCHS`'s ``clear_cnn`` entry and BENCHMARKS.md).
    With ``channels_last`` (the default) the maps are laid out channels-last, oneDNN's faster
    path on CPU (as :class:`MazeCNN`); the numbers are the same up to rounding.
    Input: float ``(batch, 3, H, W)`` in [0, 1].
    """

    def __init__(
        self,
        num_actions: int = 15,
        in_channels: int = 3,
        input_size: int | Sequence[int] = 64,
        channels: int = 16,
        first_stride: int = 2,
        hidden: int = 256,
        init: str = "orthogonal",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels < 1 or hidden < 1 or first_stride not in (1, 2, 4):
            raise ValueError(
                f"ClearCNN needs channels >= 1, hidden >= 1 and first_stride 1, 2 or 4, got "
                f"channels={channels}, hidden={hidden}, first_stride={first_stride}."
            )
        c1, c2 = channels, 2 * channels
        self.conv1a = ConvLayer(in_channels, c1, 7, stride=first_stride)
        self.hook_pool1 = HookPoint()
        self.conv2a = ConvLayer(c1, c2, 5)
        self.conv2b = ConvLayer(c2, c2, 5)
        self.hook_pool2 = HookPoint()
        self.conv3a = ConvLayer(c2, c2, 5)
        self.hook_pool3 = HookPoint()
        h, w = _pair(input_size)
        h, w = -(-h // first_stride), -(-w // first_stride)  # conv1a (padding k // 2)
        for _ in range(3):  # each pool maps n to ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.map_shape = (c2, h, w)  # of the map that fc reads
        self.fc, self.hook_fc, self.hook_out, self.fc_policy, self.fc_value = _head(
            c2 * h * w, hidden, num_actions
        )
        _init(self, self.fc_policy, self.fc_value, init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.hook_pool1(l2_pool(self.conv1a(x)))
        x = self.hook_pool2(l2_pool(self.conv2b(self.conv2a(x))))
        x = self.hook_pool3(l2_pool(self.conv3a(x)))  # (batch, 2 channels, h, w)
        h = self.hook_out(F.relu(self.hook_fc(linear_over_map(x, self.fc))))  # (batch, hidden)
        return self.fc_policy(h), self.fc_value(h).squeeze(-1)


class MLPLayer(nn.Module):
    """Linear layer and activation with a hook point after each."""

    def __init__(self, in_features: int, out_features: int, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.hook_linear = HookPoint()
        self.hook_act = HookPoint()
        self.activation = activation
        self._act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_act(self._act(self.hook_linear(self.linear(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class MLP(nn.Module):
    """Multi-layer perceptron over flattened observations.

    ``head="policy_value"``: heads ``policy_head`` and ``value_head``, returns ``(logits,
    value)``. ``head="q"``: one ``q_head`` returning Q-values ``(batch, num_actions)`` (DQN); the
    agent then uses logits = Q and value = max Q. Hook points: ``layers.<i>.hook_linear`` and
    ``layers.<i>.hook_act``. ``separate_value=True`` gives the value its own layers
    (``value_layers.<i>``), as SB3's MlpPolicy and CleanRL do: with a shared trunk, large
    returns (the lunar lander's hundreds) let the value loss swamp the policy's gradients.
    """

    def __init__(
        self,
        in_features: int,
        num_actions: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        head: str = "policy_value",
        init: str = "orthogonal",
        separate_value: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}."
            )
        if head not in ("policy_value", "q"):
            raise ValueError(f"Unknown head {head!r}; use 'policy_value' or 'q'.")
        if separate_value and head == "q":
            raise ValueError(
                "separate_value needs head='policy_value'; a Q-network has no value head."
            )
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(
            MLPLayer(a, b, activation) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = head
        self.value_layers = (
            nn.ModuleList(
                MLPLayer(a, b, activation) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            if separate_value
            else None
        )
        if head == "q":
            self.q_head = nn.Linear(sizes[-1], num_actions)
            _init(self, self.q_head, None, init, policy_gain=1.0)
        else:
            self.policy_head = nn.Linear(sizes[-1], num_actions)
            self.value_head = nn.Linear(sizes[-1], 1)
            _init(self, self.policy_head, self.value_head, init)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = x.flatten(1)  # (batch, in_features)
        v = x
        for layer in self.layers:
            x = layer(x)
        if self.head == "q":
            return self.q_head(x)  # (batch, num_actions)
        if self.value_layers is not None:
            for layer in self.value_layers:
                v = layer(v)
        else:
            v = x
        return self.policy_head(x), self.value_head(v).squeeze(-1)


def _head(
    features: int, hidden: int, num_actions: int
) -> tuple[nn.Linear, HookPoint, HookPoint, nn.Linear, nn.Linear]:
    """What the small CNNs put over their flattened conv map: ``fc`` (hooked at ``hook_fc``, its
    ReLU at ``hook_out``) and the policy and value heads, in that order."""
    fc = nn.Linear(features, hidden)
    hook_fc, hook_out = HookPoint(), HookPoint()
    return fc, hook_fc, hook_out, nn.Linear(hidden, num_actions), nn.Linear(hidden, 1)


def _init(
    net: nn.Module,
    policy_head: nn.Linear,
    value_head: nn.Linear | None,
    init: str,
    policy_gain: float = 0.01,
) -> None:
    if init == "orthogonal":
        orthogonal_init(net, policy_head, value_head, policy_gain)
    elif init != "default":
        raise ValueError(f"Unknown init {init!r}; use 'orthogonal' or 'default' (PyTorch's).")


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Arch:
    """How to build one architecture from an observation shape."""

    cls: type[nn.Module]
    obs_kind: str
    build: Callable[[tuple[int, ...], int, dict[str, Any]], nn.Module]
    description: str


def _build_impala(obs_shape: tuple[int, ...], num_actions: int, kw: dict[str, Any]) -> nn.Module:
    if len(obs_shape) != 3 or obs_shape[-1] != 3:
        raise ValueError(
            f"impala takes image observations of shape (H, W, 3), got {obs_shape}; "
            "use maze_cnn for channels-first grids."
        )
    return ImpalaCNN(num_actions, in_channels=3, input_size=obs_shape[:2], **kw)


def _build_maze_cnn(obs_shape: tuple[int, ...], num_actions: int, kw: dict[str, Any]) -> nn.Module:
    if len(obs_shape) != 3:
        raise ValueError(
            f"maze_cnn takes channels-first grid observations (C, H, W), got {obs_shape}."
        )
    return MazeCNN(num_actions, in_channels=obs_shape[0], size=obs_shape[1:], **kw)


def _build_clear_cnn(obs_shape: tuple[int, ...], num_actions: int, kw: dict[str, Any]) -> nn.Module:
    if len(obs_shape) != 3 or obs_shape[-1] != 3:
        raise ValueError(f"clear_cnn takes image observations of shape (H, W, 3), got {obs_shape}.")
    return ClearCNN(num_actions, in_channels=3, input_size=obs_shape[:2], **kw)


def _build_mlp(obs_shape: tuple[int, ...], num_actions: int, kw: dict[str, Any]) -> nn.Module:
    return MLP(math.prod(obs_shape), num_actions, **kw)


ARCHS: dict[str, Arch] = {
    "impala": Arch(ImpalaCNN, "image", _build_impala, "IMPALA CNN for (H, W, 3) images"),
    "maze_cnn": Arch(MazeCNN, "grid", _build_maze_cnn, "small residual CNN for (C, H, W) grids"),
    "mlp": Arch(MLP, "vector", _build_mlp, "MLP over flattened observations"),
    "clear_cnn": Arch(
        ClearCNN, "image", _build_clear_cnn, "Hilton et al.'s L2-pooled conv stack for (H, W, 3)"
    ),
}
"""Architecture name -> how to build it."""

_SET_BY_BUILDER = {"num_actions", "in_channels", "input_size", "size", "in_features"}


def build_agent(
    arch: str, obs_shape: Sequence[int], num_actions: int, seed: int = 0, **kwargs: Any
) -> HookedAgent:
    """Build a freshly initialised :class:`HookedAgent` of architecture ``arch``.

    ``obs_shape`` is one environment observation's shape; ``kwargs`` go to the network class
    (e.g. ``scale=4`` for impala, ``channels=32`` for maze_cnn, ``hidden=[256, 256]`` for mlp).
    ``seed`` seeds the weight initialisation without touching the global random state.
    """
    if arch not in ARCHS:
        close = difflib.get_close_matches(str(arch), list(ARCHS), n=2)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown architecture {arch!r}.{hint} Valid: {', '.join(ARCHS)}.")
    spec = ARCHS[arch]
    valid = [p for p in inspect.signature(spec.cls).parameters if p not in _SET_BY_BUILDER]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"Unknown option {key!r} for {arch}.{hint} Valid options: {', '.join(valid)}."
            )
    obs_shape = tuple(int(s) for s in obs_shape)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build(obs_shape, int(num_actions), dict(kwargs))
    config = {
        "arch": arch,
        "kwargs": kwargs,
        "obs_shape": list(obs_shape),
        "num_actions": int(num_actions),
        "obs_kind": spec.obs_kind,
        "seed": seed,
    }
    output = "q" if kwargs.get("head") == "q" else "policy_value"
    return HookedAgent(net, obs_shape, num_actions, spec.obs_kind, config, output)


def agent_from_config(config: Any, source: Any = "config") -> HookedAgent:
    """Rebuild an agent (fresh weights) from the config a saved agent carries."""
    if not isinstance(config, dict):
        raise ValueError(f"{source} does not hold an agent config (a JSON object with 'arch').")
    if config.get("arch") is None and is_sb3_config(config):
        return sb3_agent_from_config(config)
    if config.get("arch") is None and "module" in config:
        raise ValueError(
            f"{source} describes a custom network ({config['module']}) wrapped with "
            "HookedAgent.from_module, which cannot be rebuilt from a file; wrap the module again "
            "and call load_weights() on the .safetensors file."
        )
    missing = [k for k in ("arch", "obs_shape", "num_actions") if k not in config]
    if missing:
        raise ValueError(f"{source} lacks the agent config key(s) {', '.join(missing)}.")
    if config["arch"] == DT_ARCH:
        raise ValueError(
            f"{source} holds a decision transformer, which is no HookedAgent; open it with "
            "policylens.load_decision_transformer(...) or the `policylens dt` commands."
        )
    agent = build_agent(
        config["arch"],
        config["obs_shape"],
        config["num_actions"],
        seed=config.get("seed", 0),
        **config.get("kwargs", {}),
    )
    if isinstance(config.get("obs_high"), int | float):
        agent.set_obs_high(float(config["obs_high"]))
    return agent
