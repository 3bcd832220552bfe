"""Hook points and activation caches, TransformerLens style.

A hook point is a named place in a network whose value can be read, replaced or added to while the
network runs. Built-in models place :class:`HookPoint` identity modules at natural places (each
conv, each ReLU, each residual add, the embedding); :meth:`HookedAgent.from_module` turns the
output of every submodule of an arbitrary network into a :class:`ModuleOutputHook` without touching
the network's code. Both kinds have the same small interface, :class:`HookPointLike`.

Hook functions follow TransformerLens: ``fn(activation, hook) -> Tensor | None``. ``hook`` is the
hook point (it has ``.name``); returning a tensor replaces the activation, returning ``None`` keeps
it. Backward hooks ``fn(grad, hook)`` see the gradient with respect to the activation; they are
attached with ``Tensor.register_hook`` during the forward pass, so they apply to the graph built
while they were attached (a backward pass after the ``hooks(...)`` block still reaches them).

Cost when nothing is attached: a HookPoint is an ``nn.Module`` whose forward returns its input,
with no hooks registered, so PyTorch takes its fast call path (about a microsecond).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from policylens.errors import unknown_message

HookFn = Callable[[Tensor, Any], Tensor | None]
"""``fn(activation_or_grad, hook) -> replacement or None``."""
NameFilter = str | Callable[[str], bool]
"""A hook name, or a predicate on hook names (``lambda name: name.endswith("hook_out")``)."""


class HookPointLike(Protocol):
    """What a hook point offers: a name and a way to attach forward and backward hooks."""

    name: str

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> RemovableHandle: ...


def _forward_wrapper(fn: HookFn, point: HookPointLike) -> Callable[..., Any]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        result = fn(output, point)
        # the batch may change (IG substitutes interpolated rows); one sample's shape may not
        if (
            isinstance(result, Tensor)
            and isinstance(output, Tensor)
            and result.shape[1:] != output.shape[1:]
        ):
            raise ValueError(
                f"The hook on {point.name or type(module).__name__} returned samples of shape "
                f"{tuple(result.shape[1:])}, but the activation there has {tuple(output.shape[1:])}; "
                "a hook must return None or a tensor of the activation's shape."
            )
        return result

    return hook


def _backward_wrapper(fn: HookFn, point: HookPointLike) -> Callable[..., Any]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(lambda grad: fn(grad, point))

    return hook


def _attach(module: nn.Module, point: HookPointLike, fn: HookFn, dir: str) -> RemovableHandle:
    if dir == "fwd":
        return module.register_forward_hook(_forward_wrapper(fn, point))
    if dir == "bwd":
        return module.register_forward_hook(_backward_wrapper(fn, point))
    raise ValueError(f"Unknown hook direction {dir!r}; use 'fwd' or 'bwd'.")


class HookPoint(nn.Module):
    """Identity module marking a named activation; the owning agent sets ``.name`` to its path."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> RemovableHandle:
        """Attach ``fn(activation, hook)`` (``dir="fwd"``) or ``fn(grad, hook)`` (``"bwd"``)."""
        return _attach(self, self, fn, dir)

    def extra_repr(self) -> str:
        return repr(self.name) if self.name else ""


class ModuleOutputHook:
    """A hook point on the output of an existing submodule, via ``register_forward_hook``.

    Nothing is registered on the submodule until a hook is attached, so the wrapped network runs
    exactly as before when no hook is in use.
    """

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module
        self.name = name

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> RemovableHandle:
        """Attach ``fn(output, hook)`` to the submodule's output (or its gradient, ``"bwd"``)."""
        return _attach(self.module, self, fn, dir)

    def __repr__(self) -> str:
        return f"ModuleOutputHook({self.name!r}, {type(self.module).__name__})"


class ActivationCache(Mapping[str, Tensor]):
    """Activations recorded by ``run_with_cache``: a read-only mapping ``hook name -> tensor``.

    Tensors are detached unless the cache was made with ``with_grad=True``; then they stay in the
    autograd graph, so ``torch.autograd.grad(value.sum(), cache[name])`` attributes outputs to them.
    Keys are in forward order.
    """

    def __init__(self, data: dict[str, Tensor], with_grad: bool = False) -> None:
        self._data = data
        self.with_grad = with_grad

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(
                unknown_message("activation", name, list(self._data)) + " (not in this cache)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def to(self, device: str | torch.device | torch.dtype) -> ActivationCache:
        """A copy with every tensor moved to ``device`` (or cast to a dtype)."""
        return ActivationCache({k: v.to(device) for k, v in self._data.items()}, self.with_grad)

    def numpy(self) -> dict[str, Any]:
        """The activations as NumPy arrays (moved to the CPU, detached)."""
        return {k: v.detach().cpu().numpy() for k, v in self._data.items()}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._data.items())[:6])
        more = f", ... ({len(self._data)} in all)" if len(self._data) > 6 else ""
        return f"ActivationCache({{{shapes}{more}}})"


def caching_hook(store: dict[str, Tensor], with_grad: bool, clone: bool) -> HookFn:
    """A forward hook storing each activation under its hook point's name (cheap: no copy)."""

    def hook(act: Tensor, point: HookPointLike) -> None:
        if not isinstance(act, Tensor):
            return None
        if not with_grad:
            act = act.detach()
        store[point.name] = act.clone() if clone else act
        return None

    return hook


def retain_freed_memory(
    trim_threshold: int = 256 * 2**20, mmap_threshold: int = 32 * 2**20
) -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of returning it to the OS.

    Why: a forward pass that caches every activation frees megabytes at once when the cache is
    dropped; by default glibc hands that memory back to the OS, and the next pass pays a page
    fault per 4 KiB touched (measured: ~1,900 faults and +25% time per cached maze_cnn forward at
    batch 256). Keeping up to ``trim_threshold`` bytes of freed memory removes that cost (and
    speeds up plain forwards too) at the price of a larger resident size. Process-wide; the
    first ``run_with_cache`` calls it (:func:`retain_freed_memory_once`), and so does the CLI.
    Returns False where glibc's ``mallopt`` is not available (macOS, Windows, musl).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    ok = mallopt(m_trim_threshold, int(trim_threshold)) == 1
    return mallopt(m_mmap_threshold, int(mmap_threshold)) == 1 and ok


@functools.cache
def retain_freed_memory_once() -> bool:
    """:func:`retain_freed_memory` with its defaults, once per process (caching turns it on)."""
    return retain_freed_memory()
