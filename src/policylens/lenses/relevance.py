"""Layer-wise relevance propagation (LRP) for any HookedAgent, in one forward and one backward.

``attribute(agent, obs, LRP(rules="epsilon_zplus_flat"), "value")`` (:mod:`.attribution`)
spreads the target (the value or an action logit) over the input, or over a hook point's
activation with ``layer=``, by the LRP rules (Bach et al. 2015; Montavon et al. 2019).

How: the "modified gradient" form of LRP. Every tensor's relevance is its value times the
gradient that reaches it, ``R = a * c``. A linear or conv layer keeps its forward value ``z`` but
sends its backward through the rule's modified layer ``z'`` scaled by ``z / stab(z')``, so
``x * grad`` at its input is exactly the rule's relevance. Every other operation keeps its plain
gradient, which under ``R = a * c`` means:

- ReLU passes relevance through (``R_z = R_a``); other elementwise activations (tanh, GELU...)
  are made to pass it through too.
- Max-pooling is winner-take-all (the whole window's relevance goes to its maximum, as in
  Captum and tdhook, which use the epsilon rule there); average pooling is proportional to each
  input (``x_j / sum x``); L2 pooling (``clear_cnn``) to each input's share of the sum of squares.
- A residual addition ``x + f(x)`` splits relevance in proportion to each summand,
  ``R_x = x / (x + f(x)) * R``, exactly (no stabiliser), so the IMPALA and maze networks' skip
  connections conserve it. Neither peer does this for a functional ``+`` (they copy the whole
  relevance into both summands).

Layers are found at run time with a ``TorchFunctionMode`` that sees every ``F.linear`` and
``F.conv*`` call, so any network of standard layers works, with or without ``nn.Module``
wrappers. Parameters stay untouched; no second forward pass is needed (Captum runs two).

Rules (:data:`RULES`), with the peers' conventions where they have the rule:

- ``epsilon``: ``z' = z``, stabiliser ``z + eps * sign(z)`` (sign 0 -> +), as tdhook's and
  Captum's ``EpsilonRule`` (their defaults: eps 1e-6 and 1e-9).
- ``gamma``: weights ``w + gamma * w+``, bias unchanged, as Captum's ``GammaRule``
  (tdhook has none); meant for non-negative inputs (after a ReLU).
- ``zplus`` (alpha 1, beta 0) and ``alpha_beta``: positive and negative contributions
  ``x+ w+ + x- w- (+ b+)`` and ``x+ w- + x- w+ (+ b-)`` as tdhook's ``AlphaBetaRule`` (Zennit's);
  Captum's ``Alpha1_Beta0_Rule`` equals ``zplus`` on non-negative inputs and zero biases.
- ``flat`` and ``w_square``: relevance spread by ones or squared weights (and squared biases),
  independent of the input, as tdhook's ``FlatRule`` / ``WSquareRule``. They only apply to
  the layers that read the attributed tensor (``Composite.first``), where they are used.

A :class:`Composite` says which layer gets which rule; :data:`COMPOSITES` names a few presets.
:attr:`Attribution.completeness` reports conservation: the summed relevance against the target
(biases and the stabiliser absorb some; a bias-free network with ``epsilon=0`` conserves it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from policylens.errors import unknown_message

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

RULES = ("epsilon", "gamma", "zplus", "alpha_beta", "flat", "w_square")
INPUT_RULES = ("flat", "w_square")
"""Rules that ignore the layer's input: only for the layers reading the attributed tensor."""

TargetFn = Callable[[Tensor, Tensor], Tensor]
"""``f(logits, value) -> (batch,)``: what is explained."""


@dataclass(frozen=True, kw_only=True)
class Composite:
    """Which rule each linear and conv layer gets (:data:`RULES`); a named layer's entry in
    ``layers`` wins over ``first``, which wins over the layer kind."""

    dense: str = "epsilon"
    """Rule of linear layers (``F.linear``: ``nn.Linear``, the heads)."""
    conv: str = "epsilon"
    """Rule of convolutions (``F.conv1d/2d/3d``)."""
    first: str | None = None
    """Rule of the layers that read the attributed tensor (the input, or ``layer``'s activation,
    up to reshapes and activations), e.g. ``"flat"``; None: their kind's rule."""
    layers: tuple[tuple[str, str], ...] = ()
    """``(module name, rule)`` pairs, e.g. ``(("embedder.fc", "epsilon"),)``."""

    def __post_init__(self) -> None:
        named = [(f"layers[{name!r}]", rule) for name, rule in self.layers]
        for label, rule in [("dense", self.dense), ("conv", self.conv), *named]:
            if rule not in RULES:
                raise ValueError(unknown_message(f"Composite.{label} rule", rule, RULES))
            if rule in INPUT_RULES and not label.startswith("layers"):
                raise ValueError(
                    f"Composite.{label} cannot be {rule!r}: {rule} ignores the layer's input, so "
                    "it only applies to the layers reading the attributed tensor; set it as "
                    "Composite.first."
                )
        if self.first is not None and self.first not in RULES:
            raise ValueError(unknown_message("Composite.first rule", self.first, RULES))


COMPOSITES: dict[str, Composite] = {
    "epsilon": Composite(),
    "gamma": Composite(dense="gamma", conv="gamma"),
    "zplus": Composite(dense="zplus", conv="zplus"),
    "alpha_beta": Composite(dense="alpha_beta", conv="alpha_beta"),
    "epsilon_gamma": Composite(conv="gamma"),
    "epsilon_zplus": Composite(conv="zplus"),
    "epsilon_alpha_beta": Composite(conv="alpha_beta"),
    "epsilon_zplus_flat": Composite(conv="zplus", first="flat"),
    "epsilon_gamma_wsquare": Composite(conv="gamma", first="w_square"),
}
"""Named composites: one rule everywhere, or epsilon for dense layers with another rule for
convolutions (and flat / w-square for the first layer), as Kohlbrenner et al. 2020 recommend."""


@dataclass(frozen=True, kw_only=True)
class LRP:
    """Layer-wise relevance propagation; ``rules`` is a :data:`COMPOSITES` name or a
    :class:`Composite`, the other fields the rules' parameters."""

    name: ClassVar[str] = "lrp"
    rules: str | Composite = "epsilon"
    epsilon: float = 1e-6
    """Stabiliser of every rule's denominator (0: none; a zero denominator then passes nothing)."""
    gamma: float = 0.25
    alpha: float = 2.0
    """``alpha_beta``: weight of the positive contributions; ``alpha - beta`` must be 1."""
    beta: float = 1.0
    channels_last: bool = True
    """Run image inputs channels-last (oneDNN's fast convolutions; same values up to rounding)."""

    def __post_init__(self) -> None:
        if isinstance(self.rules, str) and self.rules not in COMPOSITES:
            raise ValueError(
                unknown_message("LRP.rules", self.rules, COMPOSITES) + " A Composite works too."
            )
        if not isinstance(self.rules, str | Composite):
            raise ValueError(
                f"LRP.rules must be a composite name or a Composite, got {type(self.rules).__name__}."
            )
        for label in ("epsilon", "gamma", "beta"):
            if not getattr(self, label) >= 0:
                raise ValueError(f"LRP.{label} must be >= 0, got {getattr(self, label)}.")
        if abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(
                f"LRP.alpha - LRP.beta must be 1 (conservation), got alpha={self.alpha}, "
                f"beta={self.beta}; e.g. alpha=2, beta=1."
            )

    @property
    def composite(self) -> Composite:
        return COMPOSITES[self.rules] if isinstance(self.rules, str) else self.rules


@dataclass(frozen=True)
class RuleResult:
    """What a rule-based method returns to :func:`~policylens.lenses.attribution.attribute`."""

    attributions: Tensor
    inputs: Tensor
    """The attributed tensor: the (preprocessed) input or the layer's activation."""
    outputs: Tensor
    """The target at the inputs ``(batch,)``."""
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- running
def forward_from(
    agent: HookedAgent,
    x: Tensor,
    layer: str | None,
    target: TargetFn,
    channels_last: bool,
    on_leaf: Callable[[Tensor], None] = lambda leaf: None,
) -> tuple[Tensor, Tensor]:
    """``(leaf, target (batch,))``: the agent run on ``x`` with the attributed tensor (``x`` or
    ``layer``'s activation) as a leaf that needs grad; the network below ``layer`` runs without
    autograd. ``on_leaf`` sees the leaf as soon as it exists (mid-forward for a layer)."""
    if channels_last and x.dim() == 4 and x.dtype != torch.float64:  # oneDNN has no float64
        x = x.contiguous(memory_format=torch.channels_last)
    leaves: list[Tensor] = []

    def grab(act: Tensor, hook: Any) -> Tensor:
        torch.set_grad_enabled(True)  # from here on; the no_grad block below restores it
        leaf = act.detach().requires_grad_(True)
        leaves.append(leaf)
        on_leaf(leaf)
        return leaf

    if layer is None:
        grab(x, None)
        with torch.enable_grad():
            logits, value = agent.forward_input(leaves[0])
            return leaves[0], target(logits, value)
    with torch.no_grad(), agent.hooks([(layer, grab)]):
        logits, value = agent.forward_input(x)
        if not leaves:
            raise ValueError(f"Hook {layer!r} did not fire in a forward pass; pick another layer.")
        return leaves[0], target(logits, value)


def gradient(leaf: Tensor, out: Tensor, layer: str | None, *extra: Tensor) -> list[Tensor]:
    """Gradients of ``out.sum()`` w.r.t. ``leaf`` and ``extra`` (zeros where unused); a
    ValueError when the target does not depend on the leaf at all."""
    grads = torch.autograd.grad(out.sum(), [leaf, *extra], allow_unused=True)
    if all(g is None for g in grads):
        raise ValueError(
            f"The target does not depend on layer {layer!r}; attribute to a layer the target is "
            "computed from."
        )
    return [
        torch.zeros_like(t) if g is None else g for t, g in zip([leaf, *extra], grads, strict=True)
    ]


class _Relay(torch.autograd.Function):
    """Forward: ``value``; backward: the gradient (times ``scale``) goes to ``through``."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, through: Tensor, scale: Tensor | None) -> Tensor:
        ctx.scale = scale
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, grad if ctx.scale is None else grad * ctx.scale, None


# --------------------------------------------------------------------------- the rules
LAYERS = {F.linear: "dense", F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv"}
RELUS = {F.relu, torch.relu, Tensor.relu, F.relu_, torch.relu_, Tensor.relu_}
ACTIVATIONS = {
    torch.tanh, Tensor.tanh, F.tanh, torch.sigmoid, Tensor.sigmoid, F.sigmoid, F.gelu, F.silu,
    F.elu, F.leaky_relu, F.softplus, F.hardtanh, F.relu6, F.selu, F.celu, F.mish, F.hardswish,
}  # fmt: skip
"""Elementwise activations other than ReLU: relevance passes through them unchanged."""
LAYOUT = {
    Tensor.view, Tensor.view_as, Tensor.reshape, Tensor.reshape_as, torch.reshape, Tensor.flatten,
    torch.flatten, Tensor.permute, torch.permute, Tensor.contiguous, Tensor.transpose,
    torch.transpose, Tensor.t, Tensor.unsqueeze, torch.unsqueeze, Tensor.squeeze, torch.squeeze,
    Tensor.clone, torch.clone, Tensor.to, Tensor.float, Tensor.double, Tensor.bfloat16,
    Tensor.movedim, torch.movedim,
}  # fmt: skip
"""Operations that only move values: a weight or the attributed tensor keeps its identity."""


def stabilise(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with sign(0) = +1 (tdhook's and Captum's); with ``eps == 0``, zeros
    become ones, so a zero denominator passes nothing instead of NaN."""
    if eps == 0:
        return torch.where(z == 0, torch.ones_like(z), z)
    return z + torch.where(z < 0, -eps, eps)


def epsilon_scale(z: Tensor, eps: float) -> Tensor:
    """``z / stabilise(z, eps)`` computed as ``|z| / (|z| + eps)``: the same numbers bit for bit
    (``-|z| - eps`` is ``-(|z| + eps)`` exactly), in three passes over ``z`` instead of six; the
    epsilon rule's hot path on large conv maps."""
    if eps == 0:
        return (z != 0).to(z.dtype)
    a = z.abs()
    return a.div_(a + eps)


class _Propagation(TorchFunctionMode):
    """Applies the rules to every linear and conv call of a forward pass (see module docstring).

    ``tracked`` holds the attributed tensor and what is made from it by :data:`LAYOUT` ops and
    activations, each with its twin: the same ops applied to a ones tensor, the leaf through which
    ``flat`` and ``w_square`` send relevance. ``weights`` names the weights (and views of them).
    """

    def __init__(self, method: LRP, weights: dict[int, tuple[Tensor, str]]) -> None:
        super().__init__()
        self.method, self.composite = method, method.composite
        self.named = dict(self.composite.layers)
        self.weights = weights
        self.tracked: dict[int, tuple[Tensor, Tensor | None]] = {}
        self.ones: Tensor | None = None
        self.applied: dict[str, str] = {}

    def start(self, leaf: Tensor) -> None:
        if self.composite.first in INPUT_RULES or any(
            r in INPUT_RULES for r in self.named.values()
        ):
            self.ones = torch.ones_like(leaf).requires_grad_(True)
        self.tracked[id(leaf)] = (leaf, self.ones)

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in LAYERS:
            return self._layer(func, args, kwargs)
        out = func(*args, **kwargs)
        first = args[0] if args else None
        if not isinstance(first, Tensor) or not isinstance(out, Tensor):
            return out
        if func in ACTIVATIONS and first.requires_grad:
            z = first.detach()
            out = _Relay.apply(
                out.detach(), first, out.detach() / stabilise(z, self.method.epsilon)
            )
        key = id(first)
        if key in self.tracked and (func in LAYOUT or func in RELUS or func in ACTIVATIONS):
            twin = self.tracked[key][1]
            if twin is not None and func in LAYOUT:
                twin = func(twin, *args[1:], **kwargs)
            self.tracked[id(out)] = (out, twin)
        if key in self.weights and func in LAYOUT:
            self.weights[id(out)] = (out, self.weights[key][1])
        return out

    def _layer(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        x, weight, *rest = args
        bias = rest.pop(0) if rest else kwargs.pop("bias", None)

        def op(inp: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return func(inp, w, b, *rest, **kwargs)  # type: ignore[no-any-return]

        if not (isinstance(x, Tensor) and x.requires_grad):  # below the attributed tensor
            return op(x, weight, bias)
        kind = LAYERS[func]
        name = self.weights.get(id(weight), (None, f"{kind} {len(self.applied)}"))[1]
        first = id(x) in self.tracked
        rule = (
            self.named.get(name)
            or (first and self.composite.first)
            or getattr(self.composite, kind)
        )
        if rule in INPUT_RULES and not first:
            raise ValueError(
                f"LRP rule {rule!r} at layer {name!r} needs a layer that reads the attributed "
                "tensor; give this layer another rule."
            )
        self.applied[name] = rule
        return self._apply(rule, op, x, weight, bias)

    def _apply(
        self,
        rule: str,
        op: Callable[[Tensor, Tensor, Tensor | None], Tensor],
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        m, eps = self.method, self.method.epsilon
        if rule == "epsilon":
            z = op(x, weight, bias)
            zd = z.detach()
            return _Relay.apply(zd, z, epsilon_scale(zd, eps))
        with torch.no_grad():
            z = op(x, weight, bias)
        if rule == "gamma":
            zm = op(x, weight + m.gamma * weight.clamp(min=0), bias)
            return _Relay.apply(z, zm, z / stabilise(zm.detach(), eps))
        if rule in INPUT_RULES:
            twin = self.tracked[id(x)][1]
            assert twin is not None  # start() made one: the composite has an input rule
            flat = rule == "flat"
            zm = op(twin, torch.ones_like(weight) if flat else weight**2,
                    None if flat or bias is None else bias**2)  # fmt: skip
            return _Relay.apply(z, zm, z / stabilise(zm.detach(), eps))
        alpha, beta = (1.0, 0.0) if rule == "zplus" else (m.alpha, m.beta)
        pos, neg = weight.clamp(min=0), weight.clamp(max=0)
        bpos, bneg = (None, None) if bias is None else (bias.clamp(min=0), bias.clamp(max=0))
        if bool((x < 0).any()):
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            zp = op(xp, pos, bpos) + op(xn, neg, None)
            zn = op(xp, neg, bneg) + op(xn, pos, None) if beta else None
        else:  # after a ReLU: half the convolutions
            zp = op(x, pos, bpos)
            zn = op(x, neg, bneg) if beta else None
        through = zp * (alpha * z / stabilise(zp.detach(), eps))
        if zn is not None:
            through = through - zn * (beta * z / stabilise(zn.detach(), eps))
        return _Relay.apply(z, through, None)


def _weight_names(agent: HookedAgent) -> dict[int, tuple[Tensor, str]]:
    return {
        id(p): (p, name)
        for name, module in agent.net.named_modules()
        for p in [getattr(module, "weight", None)]
        if isinstance(p, Tensor)
    }


def lrp(
    agent: HookedAgent, x: Tensor, method: LRP, target: TargetFn, layer: str | None
) -> RuleResult:
    """Relevance of ``target`` at the input ``x`` or at hook ``layer`` (``(batch, ...)``)."""
    mode = _Propagation(method, _weight_names(agent))
    with mode:
        leaf, out = forward_from(agent, x, layer, target, method.channels_last, mode.start)
    extra = [mode.ones] if mode.ones is not None else []
    grads = gradient(leaf, out, layer, *extra)
    relevance = leaf.detach() * grads[0]
    if extra:
        relevance = relevance + grads[1]
    info = {"rules": dict(mode.applied), "epsilon": method.epsilon}
    return RuleResult(relevance.contiguous(), leaf.detach().contiguous(), out.detach(), info)
