"""Grad-CAM and guided backpropagation for any HookedAgent.

- :class:`GradCAM` (Selvaraju et al. 2017): at a conv hook, ``ReLU(sum_c w_c * A_c)`` with
  ``w_c`` the spatial mean of the target's gradient w.r.t. channel ``c`` of the activation ``A``;
  a ``(batch, 1, h, w)`` map, as Captum's ``LayerGradCam(relu_attributions=True)``. With
  ``upsample`` (an ``F.interpolate`` mode) it is resized to the input's height and width exactly
  as Captum's ``LayerAttribution.interpolate`` does (``F.interpolate(cam, size, mode=...)``,
  default corner alignment). Without a layer it uses the last conv hook, as Grad-CAM does.
- :class:`GuidedBackprop` (Springenberg et al. 2015): the gradient with every ReLU's backward
  clamped to non-negative values (``relu(grad) * [z > 0]``), as Captum's ``GuidedBackprop``.
  ReLUs are found at run time (``F.relu``, ``torch.relu``, ``nn.ReLU``...) with a
  ``TorchFunctionMode``, so the built-in networks' functional ReLUs count too; Captum only sees
  ``nn.ReLU`` modules.

Both run the network below the attributed layer without autograd, and image inputs
channels-last (oneDNN's fast convolutions; the same values up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from policylens.errors import unknown_message
from policylens.lenses.relevance import RELUS, RuleResult, TargetFn, forward_from, gradient

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent

UPSAMPLE = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
"""``F.interpolate`` modes for 2-D maps (Captum's ``LayerAttribution.interpolate`` takes them)."""


@dataclass(frozen=True, kw_only=True)
class GradCAM:
    """Grad-CAM at a conv hook (default: the last one)."""

    name: ClassVar[str] = "gradcam"
    relu: bool = True
    """Keep only the positive evidence (Grad-CAM's ReLU); False gives the signed map."""
    upsample: str | None = None
    """None: the map at the layer's resolution; else an ``F.interpolate`` mode
    (:data:`UPSAMPLE`) that resizes it to the input's height and width."""
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.upsample is not None and self.upsample not in UPSAMPLE:
            raise ValueError(unknown_message("GradCAM.upsample mode", self.upsample, UPSAMPLE))


@dataclass(frozen=True, kw_only=True)
class GuidedBackprop:
    """The gradient with ReLU backward passes clamped to positive values."""

    name: ClassVar[str] = "guided_backprop"
    channels_last: bool = True


def grad_cam(
    agent: HookedAgent, x: Tensor, method: GradCAM, target: TargetFn, layer: str
) -> RuleResult:
    """Grad-CAM maps ``(batch, 1, h, w)`` (or the input's ``H, W`` when upsampled)."""
    leaf, out = forward_from(agent, x, layer, target, method.channels_last)
    if leaf.dim() != 4:
        raise ValueError(
            f"Layer {layer!r} has activations of shape {tuple(leaf.shape[1:])} without spatial "
            "dimensions; Grad-CAM needs a (channel, h, w) layer such as a conv hook point."
        )
    (grad,) = gradient(leaf, out, layer)
    act = leaf.detach()
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)
    if method.relu:
        cam = F.relu(cam)
    if method.upsample is not None:
        if x.dim() != 4:
            raise ValueError(
                f"GradCAM.upsample needs image or grid inputs (batch, c, H, W), got shape "
                f"{tuple(x.shape)}; use upsample=None."
            )
        cam = F.interpolate(cam, tuple(x.shape[-2:]), mode=method.upsample)
    info = {"upsample": method.upsample, "relu": method.relu}
    return RuleResult(cam.contiguous(), act.contiguous(), out.detach(), info)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        out = z.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _Guided(TorchFunctionMode):
    """Every ReLU call (in-place ones too) becomes :class:`_GuidedReLU` where grad flows."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in RELUS and isinstance(args[0], Tensor) and args[0].requires_grad:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_backprop(
    agent: HookedAgent, x: Tensor, method: GuidedBackprop, target: TargetFn, layer: str | None
) -> RuleResult:
    """Guided gradients of ``target`` w.r.t. the input or hook ``layer`` (``(batch, ...)``)."""
    with _Guided():
        leaf, out = forward_from(agent, x, layer, target, method.channels_last)
    (grad,) = gradient(leaf, out, layer)
    return RuleResult(grad.contiguous(), leaf.detach().contiguous(), out.detach())
