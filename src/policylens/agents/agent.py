"""HookedAgent: a policy-value network with named hook points, caches and safe checkpoints.

The agent owns the conversion from environment observations to the network's input
(:meth:`HookedAgent.preprocess`), the action distribution, and the hook machinery
(``run_with_cache``, ``run_with_hooks``, ``hooks(...)``). Hook names are module paths inside the
wrapped network (``embedder.block2.res1.hook_out``) plus the agent's own ``hook_logits`` and
``hook_value``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical
from torch.utils.hooks import RemovableHandle

from policylens import artifacts
from policylens.agents.hooks import (
    ActivationCache,
    HookFn,
    HookPoint,
    HookPointLike,
    ModuleOutputHook,
    NameFilter,
    caching_hook,
    retain_freed_memory_once,
)
from policylens.errors import unknown_message

OBS_KINDS = ("grid", "image", "vector")
OUTPUT_KINDS = ("policy_value", "q")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PRETRAINED_FORMAT = 1
"""The version of the layout :meth:`HookedAgent.save_pretrained` writes (``config.json["policylens"]``)."""

HookSpec = tuple[NameFilter, HookFn]
"""``(name or name filter, fn)``, as in TransformerLens' ``fwd_hooks``."""
OutputSpec = str | Callable[[Any], tuple[Tensor, Tensor]]


class HookedAgent(nn.Module):
    """A discrete-action agent around ``net`` (preprocessed obs -> ``(logits, value)``).

    Args:
        net: network taking a float tensor ``(batch, *input_shape)``; by default it returns
            ``(logits (batch, num_actions), value (batch,))``; see ``output``.
        obs_shape: shape of ONE environment observation (``(3, 9, 9)`` grid, ``(64, 64, 3)``
            image, ``(8,)`` vector).
        num_actions: number of discrete actions.
        obs_kind: ``"grid"`` (channels-first, used as float as-is), ``"image"`` (``(H, W, 3)``
            uint8 pixels converted to ``(3, H, W)`` / 255, or floats already in [0, 1]) or
            ``"vector"`` (float as-is).
        config: JSON-able recipe that rebuilds ``net`` (``arch``, ``kwargs``, ``obs_shape``,
            ``num_actions``, ``obs_kind``); written beside the weights by :meth:`save`.
        output: what ``net`` returns: ``"policy_value"`` (a ``(logits, value)`` pair), ``"q"``
            (Q-values ``(batch, num_actions)``: logits = Q, value = max Q) or a callable mapping
            the network's output to ``(logits, value)``.
    """

    def __init__(
        self,
        net: nn.Module,
        obs_shape: Sequence[int],
        num_actions: int,
        obs_kind: str,
        config: dict[str, Any],
        output: OutputSpec = "policy_value",
        *,
        submodule_hooks: bool = False,
    ) -> None:
        super().__init__()
        if obs_kind not in OBS_KINDS:
            raise ValueError(f"Unknown obs_kind {obs_kind!r}; use one of {', '.join(OBS_KINDS)}.")
        if not callable(output) and output not in OUTPUT_KINDS:
            raise ValueError(
                f"Unknown output kind {output!r}; use 'policy_value', 'q' or a callable "
                "mapping the network's output to (logits, value)."
            )
        obs_shape = tuple(int(s) for s in obs_shape)
        if obs_kind == "image" and (len(obs_shape) != 3 or obs_shape[-1] != 3):
            raise ValueError(
                f"Image observations must have shape (H, W, 3), got {obs_shape}; "
                "use obs_kind='grid' for channels-first arrays."
            )
        self.net = net
        self.obs_shape = obs_shape
        self.num_actions = int(num_actions)
        self.obs_kind = obs_kind
        self.config = dict(config)
        self.obs_high: float | None = config.get("obs_high")
        """The largest value the world's observations take (its observation space's bound), when
        known: float observations above it are refused (a frame already x255, say)."""
        self.output = output
        self.hook_logits = HookPoint()
        self.hook_value = HookPoint()
        self._handles: list[RemovableHandle] = []
        # An in-place op (nn.ReLU(inplace=True)) after a hook point would overwrite a cached
        # tensor that shares its storage, so caches copy in networks that have one.
        self._clone_cache = any(getattr(m, "inplace", False) is True for m in net.modules())
        self._points = self._trace(self._collect_points(submodule_hooks))

    def set_obs_high(self, high: float) -> None:
        """Record the world's largest observation value (kept in the agent's config)."""
        if math.isfinite(high):
            self.obs_high = float(high)
            self.config["obs_high"] = float(high)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        obs_shape: Sequence[int],
        num_actions: int,
        obs_kind: str = "vector",
        output: OutputSpec = "policy_value",
    ) -> HookedAgent:
        """Wrap any PyTorch module without modifying it.

        Every submodule whose output is a tensor becomes a hook point named
        ``<module path>.hook_out`` (submodules a forward pass never calls are left out); PyTorch
        forward hooks are registered on the submodule only while a hook is attached. ``output``
        says what the module returns: a ``(logits, value)`` pair (``"policy_value"``), Q-values
        (``"q"``), or anything else with a function mapping it to ``(logits, value)``, e.g.
        ``output=lambda out: (out["pi"], out["v"])``. A module that calls one submodule several
        times in a forward records only its last call in a cache.
        """
        config = {
            "arch": None,
            "module": type(module).__name__,
            "obs_shape": list(obs_shape),
            "num_actions": int(num_actions),
            "obs_kind": obs_kind,
            "output": output if isinstance(output, str) else "custom",
        }
        return cls(module, obs_shape, num_actions, obs_kind, config, output, submodule_hooks=True)

    def _collect_points(self, submodule_hooks: bool) -> dict[str, HookPointLike]:
        points: dict[str, HookPointLike] = {}
        for path, module in self.net.named_modules():
            if isinstance(module, HookPoint):
                module.name = path
                points[path] = module
        if submodule_hooks:
            for path, module in self.net.named_modules():
                if path and not isinstance(module, HookPoint):
                    name = f"{path}.hook_out"
                    points[name] = ModuleOutputHook(module, name)
        self.hook_logits.name = "hook_logits"
        self.hook_value.name = "hook_value"
        points["hook_logits"] = self.hook_logits
        points["hook_value"] = self.hook_value
        return points

    def _trace(self, points: dict[str, HookPointLike]) -> dict[str, HookPointLike]:
        """The hook points a forward pass reaches with a tensor, in that order.

        Runs one zero observation through the network, so a wrong ``obs_shape``, ``obs_kind``,
        ``num_actions`` or ``output`` fails here with a sentence saying which.
        """
        seen: dict[str, None] = {}

        def record(act: Any, point: HookPointLike) -> None:
            if isinstance(act, Tensor):
                seen.setdefault(point.name, None)

        modes = {m: m.training for m in self.modules()}
        handles = [p.add_hook(record) for p in points.values()]
        try:
            self.eval()
            dtype = torch.uint8 if self.obs_kind == "image" else self.dtype
            x = self.preprocess(torch.zeros((1, *self.obs_shape), dtype=dtype, device=self.device))
            with torch.no_grad():
                try:
                    out = self.net(x)
                except Exception as e:
                    raise ValueError(
                        f"The network fails on a batch of observations of shape "
                        f"(1, {_fmt(self.obs_shape)}) ({type(e).__name__}: {e}); check obs_shape "
                        "and obs_kind."
                    ) from e
                try:
                    logits, value = self.heads(out)
                    shapes = (tuple(logits.shape), tuple(value.shape))
                except Exception as e:
                    raise ValueError(self._output_message(out)) from e
        finally:
            for h in handles:
                h.remove()
            for m, training in modes.items():
                m.training = training
        if shapes != ((1, self.num_actions), (1,)):
            raise ValueError(
                f"The network returned logits {shapes[0]} and value {shapes[1]} for one "
                f"observation; expected (1, {self.num_actions}) and (1,): check num_actions and "
                "output."
            )
        return {name: points[name] for name in seen}

    def _output_message(self, out: Any) -> str:
        """Why ``output`` cannot read the network's output ``out``, and what to pass instead."""
        given = f"output={self.output!r}" if isinstance(self.output, str) else "the output function"
        return (
            f"With {given}, the network's output ({_describe(out)}) cannot be read as "
            f"(logits (batch, {self.num_actions}), value (batch,)); pass output='q' for "
            "Q-values (batch, num_actions), or output=a function mapping the network's output to "
            "(logits, value), e.g. output=lambda out: (out[0], out[1])."
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> HookedAgent:
        """Copy the agent without the hooks attached through it (the copy starts hook-free).

        A plain deep copy would duplicate those hooks and share their handles with the original,
        so ``reset_hooks()`` on the copy would remove the original's hooks instead.
        """
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = [] if key == "_handles" else copy.deepcopy(value, memo)
        ids = [h.id for h in self._handles]
        for module in new.modules():
            for hook_id in ids:
                module._forward_hooks.pop(hook_id, None)
        return new

    # ------------------------------------------------------------------ device, dtype, input
    @property
    def device(self) -> torch.device:
        t = self._first_tensor()
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        t = self._first_tensor()
        return t.dtype if t is not None else torch.get_default_dtype()

    def _first_tensor(self) -> Tensor | None:
        for p in self.net.parameters():
            if p.is_floating_point():
                return p
        for b in self.net.buffers():
            if b.is_floating_point():
                return b
        return None

    def preprocess(self, obs: np.ndarray | Tensor) -> Tensor:
        """Observation(s) -> network input ``(batch, *input_shape)`` on the agent's device/dtype.

        Accepts one observation of shape ``obs_shape`` or a batch ``(N, *obs_shape)``, as a NumPy
        array or a tensor; a single observation becomes a batch of one.
        """
        if not isinstance(obs, Tensor):
            array = np.asarray(obs)
            if array.dtype.kind not in "biuf":
                raise ValueError(
                    f"Expected numeric observations (an array of shape {self.obs_shape}), got "
                    f"{type(obs).__name__} of dtype {array.dtype}."
                )
            obs = torch.as_tensor(array)
        x = obs
        shape = tuple(x.shape)
        if shape == self.obs_shape:
            x = x.unsqueeze(0)
        elif shape[1:] != self.obs_shape:
            raise ValueError(
                f"Expected observations of shape {self.obs_shape} or a batch "
                f"(N, {_fmt(self.obs_shape)}), got {shape}."
            )
        scaled = x.is_floating_point()
        if scaled:
            _check_float_obs(x, image=self.obs_kind == "image", high=self.obs_high)
        t = self._first_tensor()
        device, dtype = (t.device, t.dtype) if t is not None else (x.device, torch.float32)
        x = x.to(device=device, dtype=dtype)
        if self.obs_kind == "image":  # (batch, 3, H, W) in [0, 1]
            x = x.permute(0, 3, 1, 2)
            x = (x if scaled else x / 255.0).contiguous()
        return x

    # ------------------------------------------------------------------ running the policy
    def forward(self, obs: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """Observations -> ``(logits (batch, num_actions), value (batch,))``."""
        return self.forward_input(self.preprocess(obs))

    def forward_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run on an already preprocessed input ``(batch, *input_shape)`` (for attribution)."""
        return self.heads(self.net(x))

    def heads(self, out: Any) -> tuple[Tensor, Tensor]:
        """The network's output -> ``(logits, value)`` through ``hook_logits`` and ``hook_value``."""
        if self.output == "q":
            logits = self.hook_logits(out)  # (batch, num_actions) Q-values
            return logits, self.hook_value(logits.max(dim=-1).values)
        logits, value = self.output(out) if callable(self.output) else out
        if value.dim() == 2 and value.shape[-1] == 1:
            value = value.squeeze(-1)
        return self.hook_logits(logits), self.hook_value(value)

    def acting_forward(
        self, dtype: torch.dtype, batch: int | None = None
    ) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """A no-grad ``obs -> (logits, value)`` for acting in batches, until the weights change.

        Where the network has a fused form (``net.fused(dtype, batch)``: MazeCNN's oneDNN
        kernels, weights laid out for ``batch`` rows) and no hook is attached, that runs, with
        outputs in ``dtype``; otherwise this agent itself (under the caller's autocast region, if
        any). PPO builds one per rollout.
        """
        fused = getattr(self.net, "fused", None)
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
        if fused is None or hooked or self.output != "policy_value" or self.device.type != "cpu":
            return self
        net = fused(dtype, batch)
        return self if net is None else lambda obs: net(self.preprocess(obs))

    def distribution(self, obs: np.ndarray | Tensor) -> Categorical:
        """The policy's action distribution for a batch of observations."""
        logits, _ = self(obs)
        return Categorical(logits=logits)

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray | Tensor,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample actions ``(batch,)`` (or take the argmax with ``greedy=True``).

        Pass a seeded ``torch.Generator`` on the agent's device for reproducible sampling.
        """
        logits, _ = self(obs)
        if greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def value(self, obs: np.ndarray | Tensor) -> Tensor:
        """State values ``(batch,)``."""
        return self(obs)[1]

    # ------------------------------------------------------------------ hooks
    @property
    def hook_dict(self) -> dict[str, HookPointLike]:
        """Hook name -> hook point, in forward order."""
        return dict(self._points)

    def hook_names(self) -> list[str]:
        """The names of the hook points a forward pass reaches, in that order."""
        return list(self._points)

    def _resolve(self, spec: NameFilter | Iterable[str] | None) -> list[HookPointLike]:
        if spec is None:
            return list(self._points.values())
        if isinstance(spec, str):
            spec = [spec]
        elif callable(spec):
            return [p for n, p in self._points.items() if spec(n)]
        points = []
        for name in spec:
            if name not in self._points:
                raise ValueError(unknown_message("hook", name, list(self._points)))
            points.append(self._points[name])
        return points

    def add_hook(self, name: NameFilter, fn: HookFn, dir: str = "fwd") -> list[RemovableHandle]:
        """Attach ``fn`` to every hook point matching ``name`` until :meth:`reset_hooks`."""
        if not callable(fn):
            raise ValueError(f"Hook for {name!r} is {type(fn).__name__}, not a function.")
        handles = [p.add_hook(fn, dir) for p in self._resolve(name)]
        self._handles.extend(handles)
        return handles

    def reset_hooks(self) -> None:
        """Remove every hook attached through this agent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = ()
    ) -> Iterator[HookedAgent]:
        """Attach hooks for the ``with`` block; they are removed on exit, also on exceptions.

        Backward hooks stay on the graphs built inside the block, so ``loss.backward()`` after the
        block still reaches them.
        """
        added: list[RemovableHandle] = []
        try:
            for direction, specs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for spec in specs:
                    if not (isinstance(spec, tuple | list) and len(spec) == 2):
                        raise ValueError(
                            f"Each {direction} hook must be a (name, fn) pair, got {spec!r}."
                        )
                    added.extend(self.add_hook(spec[0], spec[1], direction))
            yield self
        finally:
            for h in added:
                h.remove()
            ids = {id(h) for h in added}
            self._handles = [h for h in self._handles if id(h) not in ids]

    def run_with_hooks(
        self,
        obs: np.ndarray | Tensor,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
    ) -> tuple[Tensor, Tensor]:
        """One forward pass with temporary hooks; returns ``(logits, value)``."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(obs)

    def run_with_cache(
        self,
        obs: np.ndarray | Tensor,
        names: NameFilter | Iterable[str] | None = None,
        with_grad: bool = False,
    ) -> tuple[tuple[Tensor, Tensor], ActivationCache]:
        """One forward pass recording activations; returns ``((logits, value), cache)``.

        Args:
            names: None for every hook point, a list of names, or a predicate on names.
            with_grad: keep cached tensors in the autograd graph (the pass runs with grad on) so
                outputs can be differentiated with respect to them.
        """
        retain_freed_memory_once()  # dropped caches then cost no page faults (bench_hooks.py)
        store: dict[str, Tensor] = {}
        fn = caching_hook(store, with_grad, self._clone_cache)
        handles = [p.add_hook(fn) for p in self._resolve(names)]
        try:
            with torch.enable_grad() if with_grad else contextlib.nullcontext():
                out = self(obs)
        finally:
            for h in handles:
                h.remove()
        return out, ActivationCache(store, with_grad)

    # ------------------------------------------------------------------ weights
    def save_pretrained(
        self,
        folder: str | os.PathLike,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the agent into ``folder`` in the Hugging Face layout: ``model.safetensors`` and
        ``config.json`` (``{"policylens": 1, "agent": ..., "sha256": ...}`` plus ``extra``
        entries such as ``run`` and ``provenance``), each atomically.

        ``policylens.load_agent(folder)`` rebuilds it, checking the weights' sha256. A folder that
        already holds a ``config.json`` (a run's, another agent's) is refused unless
        ``overwrite``: nothing is written over a file this call did not create.
        """
        return write_pretrained(folder, self.save_weights, self.config, extra, overwrite)

    def save_weights(self, file: str | os.PathLike) -> None:
        """Write the network's weights to one ``.safetensors`` file (atomically)."""
        from safetensors.torch import save_file

        # Copies: safetensors refuses shared or non-contiguous storage.
        tensors = {k: v.detach().clone().contiguous() for k, v in self.net.state_dict().items()}
        with artifacts.atomic_path(file) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt", "writer": "policylens"})

    def load_weights(self, file: str | os.PathLike) -> None:
        """Load weights from one ``.safetensors`` file, strictly (every name and shape must fit)."""
        state = artifacts.read_safetensors(file)
        self.load_net_state_dict(state, source=str(file))

    def load_net_state_dict(self, state: dict[str, Tensor], source: str = "the state dict") -> None:
        """Strictly load ``state`` into the network, naming every parameter that does not fit."""
        check_state_dict(
            self.net, state, source, self.config.get("arch") or type(self.net).__name__
        )
        self.net.load_state_dict(state, strict=True)


def check_state_dict(net: nn.Module, state: dict[str, Tensor], source: str, arch: str) -> None:
    """Raise one ValueError naming missing, unexpected and mis-shaped parameters, if any."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{label} {_list(items)}"
        for label, items in (
            ("missing parameters", missing),
            ("unexpected parameters", unexpected),
            ("mis-shaped parameters", misshaped),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"Checkpoint {source} does not fit this {arch} network: {'; '.join(problems)}; "
            "load it with the architecture and options it was saved with."
        )


def _list(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _check_float_obs(x: Tensor, image: bool, high: float | None = None) -> None:
    """Refuse NaN/infinite observations, float images outside [0, 1], and float observations
    above the world's bound ``high``, in one sentence."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            "Observations contain NaN or infinite values; check the world or preprocessing."
        )
    if not image and high is not None and x.numel() and float(x.max()) > high:
        raise ValueError(
            f"Observations reach {float(x.max()):g}, but this agent's world never exceeds "
            f"{high:g}; pass them as the world gives them (not scaled, e.g. not x255)."
        )
    if image and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"Float image observations must lie in [0, 1], got values in [{lo:g}, {hi:g}]; "
                "pass the uint8 frame (0-255) or divide by 255."
            )


def _fmt(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


def _describe(out: Any) -> str:
    """A short description of a network's output for error messages: types and shapes."""
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {', '.join(_describe(o) for o in out)}"
    if isinstance(out, dict):
        return f"a dict with keys {', '.join(repr(k) for k in out)}"
    return f"a {type(out).__name__}"


def num_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(math.prod(p.shape) for p in module.parameters())


def write_pretrained(
    folder: str | os.PathLike,
    save_weights: Callable[[Path], None],
    agent_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """The Hugging Face layout of any policylens network (a HookedAgent, a decision
    transformer): ``save_weights(file)`` writes ``model.safetensors``, then ``config.json``
    (``{"policylens": 1, "agent": agent_config, "sha256": ...}`` plus ``extra``), atomically; a
    ``config.json`` already there is refused unless ``overwrite``."""
    folder = Path(folder)
    if folder.suffix in (".safetensors", ".pt", ".pth", ".json"):
        raise ValueError(
            f"save_pretrained takes a folder, got the file name {folder}; use save_weights() "
            "for a single .safetensors file."
        )
    config_file = folder / CONFIG_FILE
    if config_file.exists() and not overwrite:
        raise ValueError(
            f"{config_file} already exists; pass overwrite=True to replace the agent there, "
            "or choose an empty folder."
        )
    reserved = sorted({"policylens", "agent", "sha256"} & set(extra or {}))
    if reserved:
        raise ValueError(f"extra may not set {reserved}: save_pretrained writes them.")
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS_FILE)
    config = {
        "policylens": PRETRAINED_FORMAT,
        "agent": agent_config,
        "sha256": {WEIGHTS_FILE: artifacts.sha256_of(folder / WEIGHTS_FILE)},
        **(extra or {}),
    }
    artifacts.write_json(config_file, config)
    return folder
