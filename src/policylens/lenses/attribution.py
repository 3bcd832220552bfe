"""Attribution for any HookedAgent: saliency, gradient x input, integrated gradients, occlusion.

Attributions go to the network's input (the preprocessed observation, channels-first float) or to
any hook point: ``layer="res1.hook_out"`` attributes to that layer's channels x positions, as
Hilton et al. ("Understanding RL Vision", Distill 2020) did from a middle conv layer to the value
function (zero baseline at the layer, 10 integration steps in their code).

Methods are objects carrying their own options, as in Captum: ``Saliency()``, ``Gradient()``,
``GradXInput()``, ``IntegratedGradients(n_steps=10, baseline="zeros")``, ``Occlusion(window=2)``;
``attribute(agent, obs, IntegratedGradients(n_steps=10), "value", layer)``. A bad option fails
when the object is built; :func:`method_from_name` maps a command-line name (``"ig"``) to one.
``LRP(rules=...)`` (:mod:`.relevance`), ``GradCAM()`` and ``GuidedBackprop()`` (:mod:`.cam`) go
through :func:`attribute` the same way.

Targets (:func:`parse_target`): ``"value"``, an action logit (``3`` or ``"logit:3"``, or
``"logit:up"`` given action names), a log-probability (``"logprob:3"``), the log-probability of the
action taken (``"action"``; pass ``actions``, else the greedy action), or a function
``f(logits, value) -> (batch,)``.

Integrated gradients (Sundararajan et al. 2017) uses the same quadrature rules as Captum
(``"gausslegendre"``, Captum's default, and the Riemann rules) and agrees with Captum's
``IntegratedGradients`` / ``LayerIntegratedGradients`` to float64 rounding (tests/test_attribution.py).
It is faster than Captum by construction, with memory bounded by ``internal_batch_size``:

- Layer attribution replaces the layer's activation by ``baseline + alpha * (act - baseline)`` for a
  batch of alphas and differentiates with respect to that interpolated activation. When the layer
  is a *cut* of the network (everything downstream depends on the input only through it, checked
  numerically once), the part of the network before the layer runs once per chunk on a single
  observation instead of on every interpolated sample, as Captum does.
- Input attribution of the built-in networks differentiates at their first (affine) layer: for an
  affine map ``a = A x + c`` the input gradient is ``A^T`` of the summed layer gradient, so the
  first layer runs backward once instead of ``n_steps`` times (checked numerically; off
  with ``fast=False``). It still runs forward on every interpolated input, so that exact ties further
  on (max-pooling over flat image regions) break as in a plain IG.
- Parameters are frozen while attributing, so autograd records only what depends on the
  attributed tensor.

The completeness check of integrated gradients (attributions sum to ``f(input) - f(baseline)``)
is reported by :attr:`Attribution.completeness`; for ReLU networks the integrand is piecewise
constant, so the error shrinks with ``n_steps`` but is not zero.

Why one file of this length: every method shares the target parsing, the layer-substitution
machinery and the memory planner, and the IG hot paths are tuned together
(bench/bench_attribution.py); split, those private pieces would become public coupling.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policylens.agents.hooks import HookPoint
from policylens.errors import check_known, unknown_message
from policylens.lenses.cam import GradCAM, GuidedBackprop, grad_cam, guided_backprop
from policylens.lenses.relevance import LRP, lrp

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

INTEGRATION = (
    "gausslegendre",
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
)
BASELINES = ("zeros", "blurred", "mean", "zero_input")
"""``zeros``: zeros in the attributed space (at a layer: a zero activation, as Hilton et al.);
``blurred``: a Gaussian-blurred observation; ``mean``: the mean of ``reference`` observations
(default: the batch); ``zero_input``: the activation of an all-zero input (Captum's layer default).
At a layer, ``blurred`` and ``mean`` use the activation of that observation."""

AFFINE_INPUT_HOOKS = {
    "maze_cnn": "hook_conv",
    "impala": "embedder.block1.hook_conv",
    "mlp": "layers.0.hook_linear",
}
"""Built-in architecture -> its first hook point, an affine function of the input."""

DEFAULT_MEMORY_MB = 256.0
"""Default bound on the activation memory of one internal batch (see ``internal_batch_size``)."""


# --------------------------------------------------------------------------- methods
@dataclass(frozen=True, kw_only=True)
class AttributionMethod:
    """An attribution method and its options (Captum's shape: the method object carries them);
    pass one to :func:`attribute`, or build one by name with :func:`method_from_name`."""

    name: ClassVar[str]
    fast: bool = True
    """Use the exact speed-ups (at a cut layer only the network above runs; input IG through an
    affine first layer); False runs the plain algorithm, for checking."""


@dataclass(frozen=True, kw_only=True)
class Saliency(AttributionMethod):
    """|gradient| of the target (Simonyan et al.; Captum's ``Saliency``)."""

    name: ClassVar[str] = "saliency"


@dataclass(frozen=True, kw_only=True)
class Gradient(AttributionMethod):
    """The signed gradient of the target."""

    name: ClassVar[str] = "gradient"


@dataclass(frozen=True, kw_only=True)
class GradXInput(AttributionMethod):
    """Gradient x the attributed value (Captum's ``InputXGradient``)."""

    name: ClassVar[str] = "grad_x_input"


Baseline = str | float | Tensor | np.ndarray
"""One of :data:`BASELINES`, a number, or a tensor of the attributed (or input) shape."""


@dataclass(frozen=True, kw_only=True)
class BaselineMethod(AttributionMethod):
    """What integrated gradients and occlusion share: a baseline and passes of bounded size."""

    baseline: Baseline = field(default="zeros", compare=False)
    """The reference the inputs are compared with: one of :data:`BASELINES`, a number, or a
    tensor of the attributed tensor's shape (one sample or the batch); at a layer, a tensor of
    the input's shape is mapped through the network."""
    reference: np.ndarray | Tensor | None = field(default=None, compare=False)
    """Observations whose mean is ``baseline="mean"`` (default: the attributed batch)."""
    blur_sigma: float | None = None
    """Gaussian sigma of ``baseline="blurred"`` in cells/pixels (default 0.1 x side)."""
    internal_batch_size: int | None = None
    """Most rows per forward pass; None = as many as fit in ``memory_mb``."""
    memory_mb: float = DEFAULT_MEMORY_MB
    """Bound on the activation memory of one pass when ``internal_batch_size`` is None."""

    def __post_init__(self) -> None:
        kind = type(self).__name__
        b = self.baseline
        if isinstance(b, str) and b not in BASELINES:
            raise ValueError(
                unknown_message(f"{kind}.baseline", b, BASELINES)
                + " A number or a tensor works too."
            )
        if isinstance(b, bool) or not isinstance(b, str | int | float | Tensor | np.ndarray):
            raise ValueError(
                f"{kind}.baseline must be one of {', '.join(BASELINES)}, a number or a tensor, "
                f"got {type(b).__name__}."
            )
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise ValueError(f"{kind}.blur_sigma must be > 0 (or None), got {self.blur_sigma}.")
        size = self.internal_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{kind}.internal_batch_size must be an integer >= 1, got {size!r}.")
        if not self.memory_mb > 0:
            raise ValueError(f"{kind}.memory_mb must be > 0, got {self.memory_mb}.")


@dataclass(frozen=True, kw_only=True)
class IntegratedGradients(BaselineMethod):
    """Integrated gradients (Sundararajan et al. 2017) with Captum's quadrature rules."""

    name: ClassVar[str] = "ig"
    n_steps: int = 50
    """Points on the path from the baseline to the input."""
    integration: str = "gausslegendre"
    """Quadrature rule, one of :data:`INTEGRATION` (:func:`integration_rule`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.n_steps
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(
                f"IntegratedGradients.n_steps must be an integer >= 1, got {n!r}; use e.g. 50."
            )
        if self.integration not in INTEGRATION:
            raise ValueError(
                unknown_message("IntegratedGradients.integration", self.integration, INTEGRATION)
            )
        if self.integration == "riemann_trapezoid" and n < 2:
            raise ValueError(
                "IntegratedGradients.n_steps must be >= 2 for riemann_trapezoid, got 1."
            )


@dataclass(frozen=True, kw_only=True)
class Occlusion(BaselineMethod):
    """The output drop when a window (all channels at once) is replaced by the baseline."""

    name: ClassVar[str] = "occlusion"
    window: int | tuple[int, int] = 1
    """Window side, or (height, width), in cells of the attributed map."""
    stride: int | tuple[int, int] | None = None
    """Step between windows (default: the window, so windows tile the map)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for label, value in (("window", self.window), ("stride", self.stride)):
            if label == "stride" and value is None:
                continue
            pair = (value, value) if isinstance(value, int) else value
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(map(_positive_int, pair))):
                raise ValueError(
                    f"Occlusion.{label} must be an integer >= 1 or a pair of them, got {value!r}."
                )


def _positive_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 1)


Method = AttributionMethod | LRP | GradCAM | GuidedBackprop
"""Any method object: the gradient and path methods here, LRP (:mod:`.relevance`), Grad-CAM and
guided backpropagation (:mod:`.cam`)."""

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (Saliency, Gradient, GradXInput, IntegratedGradients, Occlusion, LRP, GradCAM,
              GuidedBackprop)
}  # fmt: skip
"""Each method by its command-line name."""
METHOD_ALIASES = {
    "integrated_gradients": "ig",
    "input_x_gradient": "grad_x_input",
    "grad": "gradient",
    "grad_cam": "gradcam",
    "guided_backpropagation": "guided_backprop",
}


def method_from_name(name: str, **options: Any) -> Method:
    """The method called ``name`` (:data:`METHODS` or an alias) with the ``options`` it takes.

    Options that only other methods take are ignored, so one set of command-line flags serves
    every method; an option no method takes is an error.
    """
    key = METHOD_ALIASES.get(name, name)
    check_known([key], METHODS, "method")
    check_known(options, {f.name for m in METHODS.values() for f in fields(m)}, "method option")
    cls = METHODS[key]
    own = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in own})


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """What is attributed: a scalar per sample computed from ``(logits, value)``."""

    kind: str
    """"value", "logit", "logprob", "action" (log-prob of the action taken) or "custom"."""
    action: int | None = None
    fn: Callable[[Tensor, Tensor], Tensor] | None = None
    name: str = ""

    def __call__(self, logits: Tensor, value: Tensor, actions: Tensor | None = None) -> Tensor:
        """``(batch,)`` target values from ``logits (batch, A)`` and ``value (batch,)``."""
        if self.kind == "value":
            return value
        if self.kind == "logit":
            return logits[:, self.action]
        if self.kind == "logprob":
            return torch.log_softmax(logits, dim=-1)[:, self.action]
        if self.kind == "action":
            if actions is None:
                raise ValueError("The 'action' target needs the actions taken; pass actions=.")
            logp = torch.log_softmax(logits, dim=-1)
            return logp.gather(1, actions.view(-1, 1)).squeeze(1)
        assert self.fn is not None
        out = self.fn(logits, value)
        if not isinstance(out, Tensor) or tuple(out.shape) != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"The target function must return one value per observation, shape "
                f"({logits.shape[0]},), but returned {shape}; reduce it to a (batch,) tensor."
            )
        return out


def parse_target(
    spec: str | int | Callable | Target,
    num_actions: int,
    action_names: Sequence[str] | None = None,
) -> Target:
    """A :class:`Target` from ``"value"``, ``3``, ``"logit:3"``, ``"logit:up"``, ``"logprob:3"``,
    ``"action"`` or a function ``f(logits, value) -> (batch,)``; unknown actions raise ValueError.
    """
    if isinstance(spec, Target):
        if spec.action is not None:
            _check_action(spec.action, num_actions, action_names)
        return spec
    if callable(spec):
        return Target("custom", fn=spec, name=getattr(spec, "__name__", "custom"))
    if isinstance(spec, bool) or not isinstance(spec, int | str | np.integer):
        raise ValueError(
            f"Unknown target {spec!r}; use 'value', 'action', 'logit:<a>', 'logprob:<a>'."
        )
    if isinstance(spec, int | np.integer):
        return Target(
            "logit", _check_action(int(spec), num_actions, action_names), name=f"logit:{spec}"
        )
    text = spec.strip().lower()
    if text in ("value", "action", "taken", "logprob:action"):
        kind = "value" if text == "value" else "action"
        return Target(kind, name=kind)
    kind, _, arg = text.partition(":")
    if kind in ("logit", "logprob") and arg:
        action = _action_index(arg, num_actions, action_names)
        return Target(kind, action, name=f"{kind}:{arg}")
    valid = ["value", "action", "logit:<a>", "logprob:<a>"]
    close = difflib.get_close_matches(text, ["value", "action", "logit", "logprob"], n=2)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown target {spec!r}.{hint} Use one of {', '.join(valid)}.")


def _action_index(arg: str, num_actions: int, names: Sequence[str] | None) -> int:
    if arg.lstrip("-").isdigit():
        return _check_action(int(arg), num_actions, names)
    lowered = [n.lower() for n in names or []]
    if arg in lowered:
        return lowered.index(arg)
    close = difflib.get_close_matches(arg, lowered, n=2)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known = f"named {', '.join(lowered)} or " if lowered else ""
    raise ValueError(
        f"Unknown action {arg!r}.{hint} This agent's actions are {known}numbered 0..{num_actions - 1}."
    )


def _check_action(action: int, num_actions: int, names: Sequence[str] | None) -> int:
    if not 0 <= action < num_actions:
        named = f" ({', '.join(names)})" if names else ""
        raise ValueError(
            f"Action {action} does not exist for this agent: it has {num_actions} actions "
            f"0..{num_actions - 1}{named}; pick one of them."
        )
    return action


# --------------------------------------------------------------------------- quadrature
def integration_rule(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` in float64 for the path integral over [0, 1] (Captum's rules).

    ``gausslegendre`` uses Gauss-Legendre nodes on [0, 1] (exact for polynomials of degree
    ``2 n - 1``; Captum's default). The Riemann rules use ``n`` equal steps; the trapezoid needs
    ``n >= 2``. Captum builds Riemann alphas with float32 ``torch.linspace`` and multiplies by
    float32 step sizes; these are exact float64 values (differences ~1e-8, relative).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}; use e.g. 50.")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + nodes), 0.5 * w
    check_known([method], INTEGRATION, "integration")
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2; raise n_steps.")
        w = np.full(n, 1.0 / n)
        w[0] /= 2
        w[-1] /= 2
        return np.linspace(0.0, 1.0, n), w
    w = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / n, n), w
    if method == "riemann_right":
        return np.linspace(1.0 / n, 1.0, n), w
    return np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n), w


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class Completeness:
    """How well IG attributions sum to ``f(input) - f(baseline)``, over the batch."""

    sum_attributions_mean: float
    output_difference_mean: float
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    """Mean |error| over mean |f(input) - f(baseline)| (0 when the outputs do not differ)."""

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Attribution:
    """Attributions of ``target`` to the input or to ``layer``'s activation.

    ``attributions`` and ``inputs`` have the attributed tensor's shape ``(batch, *shape)``:
    the preprocessed input (e.g. ``(batch, 3, 9, 9)``) or the layer's activation
    (e.g. ``(batch, channel, h, w)``).
    """

    attributions: Tensor
    inputs: Tensor
    """The attributed values: the preprocessed observations or the layer's activation."""
    outputs: Tensor
    """The target at the inputs ``(batch,)``."""
    method: str
    target: str
    layer: str | None = None
    baselines: Tensor | None = None
    """IG and occlusion: the reference the inputs are compared with (same shape)."""
    baseline_outputs: Tensor | None = None
    """IG: the target at the baselines ``(batch,)``."""
    baseline: str = ""
    """How the baseline was chosen ("zeros", "blurred", ...; "tensor" for a given one)."""
    n_steps: int | None = None
    integration: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_spatial(self) -> bool:
        return self.attributions.dim() == 4

    def spatial(self) -> Tensor:
        """Channel-summed attributions ``(batch, h, w)`` (spatial tensors only)."""
        self._require_spatial("spatial()")
        return self.attributions.sum(1)

    def channels(self) -> Tensor:
        """Attribution per channel, summed over positions ``(batch, channel)``."""
        self._require_spatial("channels()")
        return self.attributions.sum((2, 3))

    def _require_spatial(self, what: str) -> None:
        if not self.is_spatial:
            where = f"layer {self.layer!r}" if self.layer else "the input"
            raise ValueError(
                f"{what} needs spatial attributions (batch, channel, h, w), but {where} has shape "
                f"{tuple(self.attributions.shape)[1:]}; attribute to a conv layer instead."
            )

    @property
    def delta(self) -> Tensor | None:
        """IG completeness error per sample: sum of attributions - (f(input) - f(baseline))."""
        if self.baseline_outputs is None:
            return None
        total = self.attributions.flatten(1).sum(1)
        return total - (self.outputs - self.baseline_outputs)

    @property
    def completeness(self) -> Completeness | None:
        """Summary of :attr:`delta`: how well attributions sum to the output difference (IG)."""
        delta, baseline_outputs = self.delta, self.baseline_outputs
        if delta is None or baseline_outputs is None:  # delta is None exactly without baselines
            return None
        diff = (self.outputs - baseline_outputs).detach().double()
        d = delta.detach().double().abs()
        scale = diff.abs().mean().item()
        return Completeness(
            sum_attributions_mean=float(self.attributions.flatten(1).sum(1).double().mean()),
            output_difference_mean=float(diff.mean()),
            max_abs_error=float(d.max()),
            mean_abs_error=float(d.mean()),
            relative_error=float(d.mean() / scale) if scale > 0 else 0.0,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (no tensors)."""
        a = self.attributions.detach().double()
        check = self.completeness
        out: dict[str, Any] = {
            "method": self.method,
            "target": self.target,
            "layer": self.layer,
            "shape": list(a.shape),
            "baseline": self.baseline or None,
            "n_steps": self.n_steps,
            "integration": self.integration,
            "output_mean": float(self.outputs.detach().double().mean()),
            "mean_abs_attribution": float(a.abs().mean()),
            "completeness": None if check is None else check.to_json(),
        }
        if self.is_spatial:
            ch = self.channels().detach().double().mean(0)
            order = torch.argsort(ch.abs(), descending=True)[:8]
            out["top_channels"] = [{"channel": int(c), "attribution": float(ch[c])} for c in order]
        out.update(self.info)
        return out

    def numpy(self) -> np.ndarray:
        return self.attributions.detach().cpu().numpy()


# --------------------------------------------------------------------------- running the agent
class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activation is recorded."""


@contextlib.contextmanager
def attribution_mode(agent: HookedAgent) -> Iterator[None]:
    """Eval mode and frozen parameters for the block (restored after, also on exceptions).

    Frozen parameters mean autograd records only operations that depend on the attributed tensor.
    """
    params = list(agent.parameters())
    flags = [p.requires_grad for p in params]
    modes = {m: m.training for m in agent.modules()}
    try:
        agent.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, training in modes.items():
            m.training = training


def check_layer(agent: HookedAgent, layer: str) -> None:
    """ValueError naming the closest hook names when ``layer`` is not one of the agent's."""
    names = agent.hook_names()
    if layer not in names:
        raise ValueError(unknown_message("layer", layer, names))


def layer_activation(agent: HookedAgent, x: Tensor, layer: str, stop: bool = True) -> Tensor:
    """The activation at hook ``layer`` for preprocessed input ``x`` (the forward stops there)."""
    store: list[Tensor] = []

    def grab(act: Tensor, hook: Any) -> None:
        if not store:
            store.append(act)
        if stop:
            raise _StopForward
        return None

    with agent.hooks([(layer, grab)]), contextlib.suppress(_StopForward):
        agent.forward_input(x)
    if not store or not isinstance(store[0], Tensor):
        raise ValueError(
            f"Hook {layer!r} did not produce a tensor in a forward pass; pick another."
        )
    return store[0]


_CUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_cut(agent: HookedAgent, layer: str, x: Tensor) -> bool:
    """Whether the outputs depend on the input only through ``layer`` (numerically checked).

    Replaces the activation of a 2-observation batch by a 3-row batch: a skip connection around
    the layer then fails to broadcast (or gives other outputs than a plain forward), so only a
    true cut passes. The answer is cached per agent and layer.
    """
    cache = _CUTS.setdefault(agent, {})
    if layer in cache:
        return cache[layer]
    x2 = x[[0, -1]] if len(x) > 1 else x[[0, 0]]
    rows = [0, 1, 0]
    ok = False
    with torch.no_grad():
        act = layer_activation(agent, x2, layer)
        ref_logits, ref_value = agent.forward_input(x2[rows])
        if isinstance(act, Tensor) and act.dim() >= 1 and act.shape[0] == 2:
            try:
                with agent.hooks([(layer, lambda a, h: act[rows])]):
                    logits, value = agent.forward_input(x2)
                ok = (
                    logits.shape == ref_logits.shape
                    and torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
                    and torch.allclose(value, ref_value, rtol=1e-4, atol=1e-5)
                )
            except RuntimeError:
                ok = False
    cache[layer] = bool(ok)
    return bool(ok)


_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tail_network(agent: HookedAgent, layer: str) -> nn.Module | None:
    """The network above hook ``layer`` as a module of its own: activation in, output out.

    Built once per agent and layer with torch.fx (not by hand per architecture): the network is
    traced with the hook point as a leaf, and the nodes that depend on it are copied into a new
    graph whose input is the activation. Layer attributions then run only this part for their
    interpolated points; the part below runs once. None when the network cannot be traced or
    the tail also reads something computed below the layer (a skip connection around it).
    The tail shares the network's modules and parameters, so hooks on later layers still fire.
    """
    import torch.fx as fx

    cache = _TAILS.setdefault(agent, {})
    if layer in cache:
        return cache[layer]
    point = agent.hook_dict[layer]
    target_module = getattr(point, "module", point)
    names = {m: n for n, m in agent.net.named_modules()}
    tail = None
    if target_module in names:
        target = names[target_module]

        class LeafAtLayer(fx.Tracer):  # hook points stay modules, so their hooks fire
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return (
                    m is target_module
                    or isinstance(m, HookPoint)
                    or super().is_leaf_module(m, qualname)
                )

        try:
            graph = LeafAtLayer().trace(agent.net)
            tail = _graph_above(agent.net, graph, target)
        except Exception:  # untraceable Python in the network: the hook-based path serves
            tail = None
    cache[layer] = tail
    return tail


def _graph_above(root: nn.Module, graph: Any, target: str) -> nn.Module | None:
    """The sub-graph of ``graph`` computed from the output of module ``target``, or None."""
    import torch.fx as fx

    start = next((n for n in graph.nodes if n.op == "call_module" and n.target == target), None)
    if start is None:
        return None
    above = {start}
    for node in graph.nodes:
        if any(a in above for a in node.all_input_nodes):
            above.add(node)
    tail = fx.Graph()
    env = {start: tail.placeholder("activation")}
    for node in graph.nodes:
        if node is start or node not in above:
            continue
        for a in node.all_input_nodes:
            if a not in env:
                if a.op != "get_attr":
                    return None  # reads something computed below the layer: not a cut
                env[a] = tail.node_copy(a, env.__getitem__)
        env[node] = tail.node_copy(node, env.__getitem__)
    if not any(n.op == "output" for n in tail.nodes):
        return None
    return fx.GraphModule(root, tail)


class _Substitute:
    """Runs the agent with the attributed tensor set to given rows (input or a hook point)."""

    def __init__(self, agent: HookedAgent, x: Tensor, layer: str | None, fast: bool = True):
        self.agent, self.x, self.layer = agent, x, layer
        with torch.no_grad():
            self.act = x if layer is None else layer_activation(agent, x, layer)  # (B, ...)
        self.cut = layer is not None and fast and is_cut(agent, layer, x)
        self.tail = tail_network(agent, layer) if self.cut and layer is not None else None
        self.channels_last = self.act.dim() == 4 and (
            self.act.is_contiguous(memory_format=torch.channels_last)
            and not self.act.is_contiguous()
        )

    def format(self, rows: Tensor) -> Tensor:
        """Rows in the memory layout of the real activation (channels-last convs run faster)."""
        if self.channels_last:
            return rows.contiguous(memory_format=torch.channels_last)
        return rows.contiguous()

    def __call__(self, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, value)`` with the attributed tensor replaced by ``rows`` ``(M, ...)``;
        row ``i`` belongs to observation ``index[i]``."""
        if self.layer is None:
            return self.agent.forward_input(rows)
        if self.tail is not None:  # only the layers above run
            return self.agent.heads(self.tail(rows))
        # A cut layer: the prefix only has to produce something to replace, one observation.
        feed = self.x[index[:1]] if self.cut else self.x[index]
        with self.agent.hooks([(self.layer, lambda act, hook: rows)]):
            return self.agent.forward_input(feed)


def _target_grad(
    sub: _Substitute, rows: Tensor, index: Tensor, target: Target, actions: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Target values ``(M,)`` and their gradients w.r.t. ``rows`` ``(M, ...)``."""
    rows = sub.format(rows.detach()).requires_grad_(True)
    with torch.enable_grad():
        logits, value = sub(rows, index)
        out = target(logits, value, None if actions is None else actions[index])
        (grad,) = torch.autograd.grad(out.sum(), rows, allow_unused=True)
    if grad is None:
        raise ValueError(
            f"The target {target.name!r} does not depend on layer {sub.layer!r}; attribute to a "
            "layer the target is computed from."
        )
    return out.detach(), grad


def _target_values(
    sub: _Substitute, rows: Tensor, index: Tensor, target: Target, actions: Tensor | None
) -> Tensor:
    with torch.no_grad():
        logits, value = sub(sub.format(rows), index)
        return target(logits, value, None if actions is None else actions[index])


def _endpoint_values(
    sub: _Substitute, a: Tensor, base: Tensor, target: Target, actions: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Target at the inputs and at the baselines ``(B,)`` each, in one pass. A baseline that is
    the same for every row (zeros, a zero input, a mean) is run once when the outputs depend on
    nothing else: the input itself or a cut layer (no skip connection carries each row's input
    around it), and no per-row action in the target."""
    n = len(a)
    alone = sub.layer is None or sub.cut
    shared = alone and actions is None and bool(torch.equal(base, base[:1].expand_as(base)))
    rows = torch.cat([a, base[:1] if shared else base])
    index = torch.cat(
        [torch.arange(n, device=a.device), torch.arange(len(rows) - n, device=a.device)]
    )
    both = _target_values(sub, rows, index, target, actions)
    return both[:n], both[n:].expand(n).clone() if shared else both[n:]


# --------------------------------------------------------------------------- baselines
def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur ``(batch, c, h, w)`` per channel with a separable Gaussian (replicate padding)."""
    if x.dim() != 4:
        raise ValueError(
            f"A blurred baseline needs spatial inputs (batch, channel, h, w), got shape "
            f"{tuple(x.shape)}; use baseline='zeros' or 'mean'."
        )
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def _input_baseline(
    kind: str, x: Tensor, reference: Tensor | None, blur_sigma: float | None
) -> Tensor:
    if kind in ("zeros", "zero_input"):
        return torch.zeros_like(x)
    if kind == "blurred":
        sigma = blur_sigma if blur_sigma is not None else 0.1 * max(x.shape[-2:])
        return gaussian_blur(x, sigma)
    ref = x if reference is None else reference
    return ref.mean(0, keepdim=True).expand_as(x).clone()


def _resolve_baseline(
    agent: HookedAgent,
    baseline: Baseline,
    x: Tensor,
    sub: _Substitute,
    reference: Tensor | None,
    blur_sigma: float | None,
) -> tuple[Tensor, str]:
    """The baseline (checked by :class:`BaselineMethod`) in the attributed space ``(B, ...)``
    and a short description."""
    act = sub.act
    if isinstance(baseline, int | float):
        return torch.full_like(act, float(baseline)), f"constant {baseline}"
    if isinstance(baseline, str):
        if sub.layer is None or baseline == "zeros":
            if sub.layer is None:
                return _input_baseline(baseline, x, reference, blur_sigma), baseline
            return torch.zeros_like(act), baseline
        with torch.no_grad():
            if baseline == "mean" and reference is not None:
                ref_act = layer_activation(agent, reference, sub.layer)
                return ref_act.mean(0, keepdim=True).expand_as(act).clone(), baseline
            if baseline == "mean":
                return act.mean(0, keepdim=True).expand_as(act).clone(), baseline
            b = _input_baseline(baseline, x, reference, blur_sigma)
            if baseline == "zero_input":  # one zero observation's activation serves every row
                return layer_activation(agent, b[:1], sub.layer).expand_as(act).clone(), baseline
            return layer_activation(agent, b, sub.layer).clone(), baseline
    b = torch.as_tensor(baseline).to(device=act.device, dtype=act.dtype)
    shape, one = tuple(b.shape), tuple(act.shape[1:])
    if shape in (one, (1, *one), tuple(act.shape)):
        return b.expand_as(act).clone(), "tensor"
    in_one = tuple(x.shape[1:])
    if sub.layer is not None and shape in (in_one, (1, *in_one), tuple(x.shape)):
        with torch.no_grad():
            return layer_activation(agent, b.expand_as(x).contiguous(), sub.layer).clone(), "tensor"
    where = f"layer {sub.layer!r}'s activations" if sub.layer else "the input"
    also = f" or the input {in_one}" if sub.layer else ""
    raise ValueError(
        f"Baseline of shape {shape} does not fit {where} {one}{also}; pass one sample's shape "
        f"or the whole batch's ({len(act)}, ...)."
    )


# --------------------------------------------------------------------------- chunking
_SAMPLE_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _memory_chunk(agent: HookedAgent, x: Tensor, budget_mb: float, above: str | None = None) -> int:
    """Rows per internal batch so that the recorded activations stay within ``budget_mb``;
    with ``above`` (a cut layer), only the activations from that layer on count: the layers
    below run once, not per interpolated row."""
    key = (tuple(x.shape[1:]), x.dtype, above)
    known = _SAMPLE_BYTES.setdefault(agent, {})
    if key not in known:
        known[key] = _sample_bytes(agent, x, above)
    return max(1, int(budget_mb * 2**20 // known[key]))


def _sample_bytes(agent: HookedAgent, x: Tensor, above: str | None) -> int:
    """Bytes of activations (x3: forward, saved, gradient) one sample needs."""
    sizes: dict[str, int] = {}

    def size(act: Any, hook: Any) -> None:
        if isinstance(act, Tensor):
            sizes[hook.name] = act[:1].numel() * act.element_size()

    with torch.no_grad(), agent.hooks([(lambda name: True, size)]):
        agent.forward_input(x[:1])
    if above is not None:  # hooks fire in forward order
        names = list(sizes)
        total = sum(sizes[n] for n in names[names.index(above) :])
    else:
        total = max(sum(sizes.values()), x[:1].numel() * x.element_size())
    # Each activation is stored for the backward pass and has a gradient of its size.
    return 3 * total


def _plan(batch: int, steps: int, rows: int) -> tuple[int, int]:
    """(observations per chunk, steps per chunk) with at most ``rows`` rows per chunk."""
    if rows >= batch:
        return batch, max(1, min(steps, rows // batch))
    return rows, 1


# --------------------------------------------------------------------------- public entry point
def attribute(
    agent: HookedAgent,
    obs: np.ndarray | Tensor,
    method: Method,
    target: str | int | Callable | Target = "value",
    layer: str | None = None,
    *,
    actions: np.ndarray | Tensor | None = None,
    action_names: Sequence[str] | None = None,
    preprocessed: bool = False,
) -> Attribution:
    """Attribute ``target`` to the input or to hook ``layer``, for a batch of observations.

    Args:
        obs: observations ``(batch, *obs_shape)`` (or one observation); with
            ``preprocessed=True``, already preprocessed inputs (``agent.preprocess``).
        method: ``Saliency()``, ``Gradient()``, ``GradXInput()``,
            ``IntegratedGradients(n_steps=..., baseline=...)``, ``Occlusion(window=...)``,
            ``LRP(rules=...)``, ``GradCAM()`` (default layer: the last conv hook) or
            ``GuidedBackprop()`` (:func:`method_from_name` builds one from its name).
        target: see :func:`parse_target` (``action_names`` name the actions there).
        layer: a hook name (``agent.hook_names()``) to attribute to its activation, or None for
            the (preprocessed) input.
        actions: actions taken ``(batch,)`` for ``target="action"`` (default: the greedy ones).
    """
    if not isinstance(method, tuple(METHODS.values())):
        hint = (
            f"; method_from_name({method!r}) builds one from a name"
            if isinstance(method, str)
            else ""
        )
        raise ValueError(
            "method must be Saliency(), Gradient(), GradXInput(), IntegratedGradients(...), "
            f"Occlusion(...), LRP(...), GradCAM(...) or GuidedBackprop(), got {method!r}{hint}."
        )
    tgt = parse_target(target, agent.num_actions, action_names)
    if layer is not None:
        check_layer(agent, layer)
    with attribution_mode(agent):
        x = _as_input(agent, obs, preprocessed)
        acts = _actions(agent, x, tgt, actions)
        if isinstance(method, LRP | GradCAM | GuidedBackprop):
            return _rule_based(agent, x, method, tgt, acts, layer)
        if isinstance(method, Saliency | Gradient | GradXInput):
            sub = _Substitute(agent, x, layer, fast=method.fast)
            index = torch.arange(len(x), device=x.device)
            outputs, grad = _target_grad(sub, sub.act, index, tgt, acts)
            if isinstance(method, Saliency):
                attr = grad.abs()
            elif isinstance(method, Gradient):
                attr = grad
            else:
                attr = grad * sub.act
            return Attribution(attr, sub.act.detach(), outputs, method.name, tgt.name, layer)
        assert isinstance(method, IntegratedGradients | Occlusion)
        ref = None if method.reference is None else _as_input(agent, method.reference, preprocessed)
        if isinstance(method, IntegratedGradients) and layer is None and method.fast:
            hook = AFFINE_INPUT_HOOKS.get(str(agent.config.get("arch")))
            if hook is not None and hook in agent.hook_names():
                result = _ig_affine_input(agent, x, hook, tgt, acts, method, ref)
                if result is not None:
                    return result
        sub = _Substitute(agent, x, layer, fast=method.fast)
        rows = method.internal_batch_size or _memory_chunk(
            agent, x, method.memory_mb, layer if sub.cut else None
        )
        if isinstance(method, Occlusion):
            _require_spatial(sub, layer, "occlusion")
        base, desc = _resolve_baseline(agent, method.baseline, x, sub, ref, method.blur_sigma)
        if isinstance(method, Occlusion):
            return _occlusion(sub, tgt, acts, base, desc, method, rows)
        return _integrated_gradients(sub, tgt, acts, base, desc, method, rows)


def _rule_based(
    agent: HookedAgent,
    x: Tensor,
    method: LRP | GradCAM | GuidedBackprop,
    target: Target,
    actions: Tensor | None,
    layer: str | None,
) -> Attribution:
    """LRP, Grad-CAM and guided backprop; LRP's conservation is reported as completeness against
    a zero baseline output (summed relevance vs the target)."""

    def fn(logits: Tensor, value: Tensor) -> Tensor:
        return target(logits, value, actions)

    if isinstance(method, LRP):
        if target.kind in ("logprob", "action"):
            raise ValueError(
                f"LRP explains a network output, not the log-probability target {target.name!r}; "
                "use 'value' or 'logit:<a>'."
            )
        r = lrp(agent, x, method, fn, layer)
        zeros = torch.zeros_like(r.outputs)
        return Attribution(r.attributions, r.inputs, r.outputs, method.name, target.name, layer,
                           baseline_outputs=zeros, baseline="none", info=r.info)  # fmt: skip
    if isinstance(method, GradCAM):
        if layer is None:  # Grad-CAM's choice: the last conv layer
            spatial = spatial_layers(agent)
            if not spatial:
                raise ValueError(
                    "This agent has no spatial (conv) layers, which Grad-CAM needs; use another "
                    "method such as LRP() or Saliency()."
                )
            layer = spatial[-1]
        r = grad_cam(agent, x, method, fn, layer)
    else:
        r = guided_backprop(agent, x, method, fn, layer)
    return Attribution(r.attributions, r.inputs, r.outputs, method.name, target.name, layer,
                       info=r.info)  # fmt: skip


def _as_input(agent: HookedAgent, obs: np.ndarray | Tensor, preprocessed: bool) -> Tensor:
    """The network input ``(batch, *input_shape)`` on the agent's device and dtype."""
    if not preprocessed:
        return agent.preprocess(obs)
    x = torch.as_tensor(obs)
    return x.to(device=agent.device, dtype=agent.dtype)


def _actions(agent: HookedAgent, x: Tensor, target: Target, actions: Any) -> Tensor | None:
    if target.kind != "action":
        return None
    if actions is None:
        with torch.no_grad():
            return agent.forward_input(x)[0].argmax(-1)
    a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, Tensor) else actions)
    a = a.to(device=x.device, dtype=torch.long).reshape(-1)
    if a.shape[0] != x.shape[0]:
        raise ValueError(
            f"Got {a.shape[0]} actions for {x.shape[0]} observations; pass one action per observation."
        )
    if len(a) and (a.min() < 0 or a.max() >= agent.num_actions):
        bad = int(a[(a < 0) | (a >= agent.num_actions)][0])
        _check_action(bad, agent.num_actions, None)
    return a


def _require_spatial(sub: _Substitute, layer: str | None, what: str) -> None:
    if sub.act.dim() != 4:
        where = f"Layer {layer!r}" if layer else "The input"
        raise ValueError(
            f"{where} has activations of shape {tuple(sub.act.shape[1:])} without spatial "
            f"dimensions; {what} needs a (channel, h, w) layer such as a conv hook point."
        )


def _integrated_gradients(
    sub: _Substitute,
    target: Target,
    actions: Tensor | None,
    base: Tensor,
    desc: str,
    method: IntegratedGradients,
    rows: int,
) -> Attribution:
    a = sub.act.detach()  # (B, ...)
    alphas_np, weights_np = integration_rule(method.n_steps, method.integration)
    alphas = torch.as_tensor(alphas_np, dtype=a.dtype, device=a.device)
    weights = torch.as_tensor(weights_np, dtype=a.dtype, device=a.device)
    diff = a - base
    total = _path_gradients(sub, target, actions, base, diff, alphas, weights, rows)
    outputs, base_out = _endpoint_values(sub, a, base, target, actions)
    return Attribution(
        diff * total, a, outputs, "ig", target.name, sub.layer, base, base_out, desc,
        method.n_steps, method.integration, {"cut_layer": sub.cut, "rows_per_pass": rows},
    )  # fmt: skip


def _path_gradients(
    sub: _Substitute,
    target: Target,
    actions: Tensor | None,
    base: Tensor,
    diff: Tensor,
    alphas: Tensor,
    weights: Tensor,
    rows: int,
    lift: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``sum_k w_k grad f(base + alpha_k diff)`` ``(B, ...)``, in chunks of at most ``rows`` rows.

    With ``lift``, the path runs in ``lift``'s input space and the gradients are taken w.r.t.
    ``lift(base + alpha_k diff)`` (the result has ``lift``'s output shape).
    """
    batch, n = diff.shape[0], len(alphas)
    per_obs, per_step = _plan(batch, n, rows)
    total = None
    extra = (1,) * (diff.dim() - 1)
    for b0 in range(0, batch, per_obs):
        b1 = min(batch, b0 + per_obs)
        idx = torch.arange(b0, b1, device=diff.device)
        for s0 in range(0, n, per_step):
            al = alphas[s0 : s0 + per_step]
            k = len(al)
            # (k, b, ...) -> (k * b, ...), alpha-major as Captum orders it; one fused pass
            scaled = torch.addcmul(
                base[b0:b1].unsqueeze(0), al.view(k, 1, *extra), diff[b0:b1].unsqueeze(0)
            ).reshape(k * (b1 - b0), *diff.shape[1:])
            if lift is not None:
                with torch.no_grad():
                    scaled = lift(scaled)
            _, grad = _target_grad(sub, scaled, idx.repeat(k), target, actions)
            if total is None:
                total = grad.new_zeros((batch, *grad.shape[1:]))
            # sum_k w_k grad_k as one (1, k) x (k, b * size) product: no (k, b, ...) temporary;
            # a channels-last gradient is read as it lies (b, h, w, c), without a copy
            nhwc = grad.dim() == 4 and not grad.is_contiguous()
            g = grad.movedim(1, -1) if nhwc else grad
            summed = (weights[s0 : s0 + k].view(1, k) @ g.reshape(k, -1)).view(
                b1 - b0, *g.shape[1:]
            )
            total[b0:b1] += summed.movedim(-1, 1) if nhwc else summed
    assert total is not None  # n_steps >= 1 and a non-empty batch
    return total


def _ig_affine_input(
    agent: HookedAgent,
    x: Tensor,
    hook: str,
    target: Target,
    actions: Tensor | None,
    method: IntegratedGradients,
    reference: Tensor | None,
) -> Attribution | None:
    """Input IG through the affine first layer (see the module docstring); None if not affine."""
    in_sub = _Substitute(agent, x, None)
    base, desc = _resolve_baseline(agent, method.baseline, x, in_sub, reference, method.blur_sigma)
    sub = _Substitute(agent, x, hook)
    if not sub.cut:
        return None
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        a = layer_activation(agent, xg, hook)  # (B, ...) as a function of x
    with torch.no_grad():
        ab = layer_activation(agent, base, hook)
        mid = layer_activation(agent, base + 0.37 * (x - base), hook)
    tol = 1e-4 if a.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = max(float(a.detach().abs().max()), 1.0)
    if not torch.allclose(mid, ab + 0.37 * (a.detach() - ab), rtol=tol, atol=tol * scale):
        return None
    alphas_np, weights_np = integration_rule(method.n_steps, method.integration)
    alphas = torch.as_tensor(alphas_np, dtype=a.dtype, device=a.device)
    weights = torch.as_tensor(weights_np, dtype=a.dtype, device=a.device)
    rows = method.internal_batch_size or _memory_chunk(agent, x, method.memory_mb)
    # The first layer still runs forward on every interpolated input (not ab + alpha (a - ab),
    # equal up to rounding), so exact ties downstream, e.g. in max-pooling over a flat image,
    # break as in a plain IG; its backward runs once.
    lift = lambda rows_in: layer_activation(agent, rows_in, hook)  # noqa: E731
    total = _path_gradients(sub, target, actions, base, x - base, alphas, weights, rows, lift)
    with torch.enable_grad():
        (g_in,) = torch.autograd.grad(a, xg, total)  # A^T (summed layer gradient)
    outputs, base_out = _endpoint_values(sub, a.detach(), ab, target, actions)
    return Attribution(
        (x - base) * g_in, x, outputs, "ig", target.name, None, base, base_out, desc,
        method.n_steps, method.integration, {"affine_first_layer": hook, "rows_per_pass": rows},
    )  # fmt: skip


def _occlusion(
    sub: _Substitute,
    target: Target,
    actions: Tensor | None,
    base: Tensor,
    desc: str,
    method: Occlusion,
    rows: int,
) -> Attribution:
    """Occlude every window (all channels) with the baseline; each cell gets the mean output drop
    of the windows covering it, spread equally over channels (so a channel sum is the drop)."""
    a = sub.act.detach()  # (B, C, H, W)
    batch, c, h, w = a.shape
    window, stride = method.window, method.stride
    kh, kw = (window, window) if isinstance(window, int) else window
    st = stride if stride is not None else (kh, kw)
    sh, sw = (st, st) if isinstance(st, int) else st
    if not (kh <= h and kw <= w):
        raise ValueError(
            f"Occlusion.window {(kh, kw)} does not fit the {h}x{w} map; use a window between 1 "
            "and the map size."
        )
    tops = list(range(0, h - kh + 1, sh))
    lefts = list(range(0, w - kw + 1, sw))
    if tops[-1] != h - kh:
        tops.append(h - kh)
    if lefts[-1] != w - kw:
        lefts.append(w - kw)
    masks = torch.zeros(len(tops) * len(lefts), 1, h, w, dtype=a.dtype, device=a.device)
    for i, (t, left) in enumerate((t, left) for t in tops for left in lefts):
        masks[i, :, t : t + kh, left : left + kw] = 1.0
    index = torch.arange(batch, device=a.device)
    outputs = _target_values(sub, a, index, target, actions)
    total = torch.zeros_like(a)
    count = masks.sum(0)  # (1, H, W) windows covering each cell
    per_mask = max(1, rows // batch) if rows >= batch else 1
    for m0 in range(0, len(masks), per_mask):
        m = masks[m0 : m0 + per_mask]  # (k, 1, H, W)
        k = len(m)
        occluded = a.unsqueeze(0) * (1 - m.unsqueeze(1)) + base.unsqueeze(0) * m.unsqueeze(1)
        vals = _target_values(
            sub, occluded.reshape(k * batch, c, h, w), index.repeat(k), target, actions
        )
        drop = outputs.unsqueeze(0) - vals.view(k, batch)  # (k, B)
        total += (drop.view(k, batch, 1, 1, 1) * m.unsqueeze(1)).sum(0)
    attr = total / count / c
    return Attribution(
        attr, a, outputs, "occlusion", target.name, sub.layer, base, None, desc,
        info={"window": [kh, kw], "stride": [sh, sw]},
    )  # fmt: skip


def spatial_layers(agent: HookedAgent) -> list[str]:
    """Hook names whose activations are ``(batch, channel, h, w)``, in forward order."""
    dtype = torch.uint8 if agent.obs_kind == "image" else agent.dtype
    obs = torch.zeros((1, *agent.obs_shape), dtype=dtype, device=agent.device)
    with torch.no_grad():
        _, cache = agent.run_with_cache(obs)
    return [n for n in agent.hook_names() if n in cache and cache[n].dim() == 4]


def default_layer(agent: HookedAgent) -> str:
    """A middle residual-stream conv layer (Hilton et al. attributed from a middle conv layer)."""
    spatial = spatial_layers(agent)
    if not spatial:
        raise ValueError(
            "This agent has no spatial (conv) layers; pass a layer from agent.hook_names()."
        )
    residual = [n for n in spatial if n.endswith("hook_out")] or spatial
    return residual[(len(residual) - 1) // 2]
