"""The decision transformer (Chen et al. 2021) on TransformerLens's ``HookedTransformer``.

Offline RL as sequence modelling, after Bloom et al.'s DecisionTransformerInterpretability: a
trajectory is a sequence of ``(return-to-go, state, action)`` token triples, and the action of
each step is read at its state token. The model *is* a ``HookedTransformer`` (a subclass): its
blocks, hook names (``blocks.0.attn.hook_pattern``, ``blocks.0.hook_resid_post`` ...),
``run_with_cache``, ``run_with_hooks`` and ``OV`` / ``QK`` FactoredMatrix are TransformerLens's
own, and its unembedding ``W_U`` is the action head. The token embeddings feed the residual
stream directly (``forward(..., start_at_layer=0)``):

- state token: a linear map of the one-hot view (object, colour and state of each of the 7x7
  cells: ``hook_state_embed``), plus the agent's direction (``hook_dir_embed``, optional);
- return-to-go token: a linear map of the RTG (``hook_rtg_embed``);
- action token: the model's own ``embed`` (``W_E``: one row per action, then a padding row;
  ``hook_embed``);
- every token of step ``t`` adds the timestep embedding (``hook_time_embed``), and every position
  the model's ``pos_embed`` (``hook_pos_embed``); steps before an episode starts (left padding)
  are one learned ``pad`` vector. ``hook_tokens`` is the whole sequence ``(batch, 3K, d_model)``.

``transformer_lens`` (3.x: 4.0 removed ``HookedTransformer``) is imported on first use, so
importing policylens stays fast.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from policylens import artifacts

ARCH = "decision_transformer"
"""The ``arch`` of a decision transformer's config (a run's ``agent`` entry)."""
INSTALL_HINT = (
    "The decision transformer needs TransformerLens 3.x: pip install 'transformer-lens>=3.9,<4' "
    "torch==2.13.0 (4.0 removed HookedTransformer)."
)
OBJECT_CLASSES, COLOR_CLASSES, STATE_CLASSES = 11, 6, 3
"""Values of the three channels of a MiniGrid cell (object index, colour index, door state)."""


@dataclass(frozen=True)
class DTConfig:
    """The architecture of a decision transformer; saved as a run's ``agent`` entry."""

    obs_shape: tuple[int, ...] = (7, 7, 3)
    """One observation: ``(H, W, 3)`` uint8 MiniGrid cells, one-hot encoded per channel."""
    num_actions: int = 3
    context: int = 8
    """Steps the model sees (``n_ctx = 3 * context`` tokens)."""
    max_timestep: int = 256
    """Largest timestep embedded (later ones share the last row)."""
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 2
    d_mlp: int = 512
    attn_only: bool = False
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    """``"LN"`` or None (no LayerNorm, for cleaner linear analyses)."""
    use_direction: bool = True
    """Add the agent's absolute direction (0..3) to the state token."""
    arch: str = ARCH

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_shape", tuple(int(s) for s in self.obs_shape))
        problems = []
        if len(self.obs_shape) != 3 or self.obs_shape[-1] != 3:
            problems.append(f"obs_shape must be (H, W, 3), got {self.obs_shape}")
        for name in ("num_actions", "context", "max_timestep", "n_layers", "d_model", "n_heads"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads >= 1 and self.d_model % self.n_heads:
            problems.append(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if self.normalization_type not in ("LN", None):
            problems.append(
                f"normalization_type must be 'LN' or None, got {self.normalization_type!r}"
            )
        if self.act_fn not in ("relu", "gelu"):
            problems.append(f"act_fn must be 'relu' or 'gelu', got {self.act_fn!r}")
        if self.arch != ARCH:
            problems.append(f"arch must be {ARCH!r}, got {self.arch!r}")
        if problems:
            raise ValueError("Invalid decision transformer config: " + "; ".join(problems) + ".")

    @property
    def n_ctx(self) -> int:
        return 3 * self.context

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["obs_shape"] = list(self.obs_shape)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DTConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown decision transformer config entries: {', '.join(unknown)}.")
        return cls(**data)


@dataclass
class DTBatch:
    """A batch of trajectory windows, right-aligned (step ``K - 1`` is the latest).

    Missing steps before an episode's start have ``mask`` False (their other entries are
    ignored); the latest step's action is unknown when acting (any value: a state token never
    sees the action after it).
    """

    obs: Tensor  # (B, K, H, W, 3) uint8
    actions: Tensor  # (B, K) int64
    rtg: Tensor  # (B, K) float32
    timesteps: Tensor  # (B, K) int64
    mask: Tensor  # (B, K) bool: a real step
    direction: Tensor | None = None  # (B, K) int64
    extra: dict[str, Tensor] = field(default_factory=dict)


def _import_transformer_lens() -> Any:
    try:
        import transformer_lens
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise ImportError(INSTALL_HINT) from e
    if not hasattr(transformer_lens, "HookedTransformer"):  # pragma: no cover
        raise ImportError(INSTALL_HINT)
    return transformer_lens


@functools.cache
def dt_class() -> type:
    """The decision transformer class (made on first use, when TransformerLens is imported)."""
    tl = _import_transformer_lens()
    from transformer_lens.hook_points import HookPoint

    class HookedDecisionTransformer(tl.HookedTransformer):  # type: ignore[misc, name-defined]
        """A ``HookedTransformer`` over ``(RTG, state, action)`` tokens; see the module doc."""

        def __init__(self, config: DTConfig) -> None:
            cfg = tl.HookedTransformerConfig(
                n_layers=config.n_layers,
                d_model=config.d_model,
                n_ctx=config.n_ctx,
                d_head=config.d_model // config.n_heads,
                n_heads=config.n_heads,
                d_mlp=None if config.attn_only else config.d_mlp,
                d_vocab=config.num_actions + 1,  # actions, then the padding action
                d_vocab_out=config.num_actions,
                act_fn=None if config.attn_only else config.act_fn,
                attn_only=config.attn_only,
                normalization_type=config.normalization_type,
                positional_embedding_type="standard",
                device="cpu",
                default_prepend_bos=False,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                super().__init__(cfg)
            self.dt_config = config
            h, w, _ = config.obs_shape
            self.one_hot_size = h * w * (OBJECT_CLASSES + COLOR_CLASSES + STATE_CLASSES)
            d = config.d_model
            self.state_embed = nn.Linear(self.one_hot_size, d)
            self.rtg_embed = nn.Linear(1, d)
            self.time_embed = nn.Embedding(config.max_timestep + 1, d)
            self.dir_embed = nn.Embedding(4, d) if config.use_direction else None
            self.pad = nn.Parameter(torch.zeros(d))
            classes = torch.tensor((OBJECT_CLASSES, COLOR_CLASSES, STATE_CLASSES))
            cell = torch.arange(h * w).reshape(h, w, 1) * int(classes.sum())
            self._channel_offsets = (
                cell + torch.cat([torch.zeros(1), classes.cumsum(0)[:-1]]).long()
            )
            self._channel_max = classes - 1
            for module in (self.state_embed, self.rtg_embed):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            nn.init.normal_(self.time_embed.weight, std=0.02)
            if self.dir_embed is not None:
                nn.init.normal_(self.dir_embed.weight, std=0.02)
            self.hook_state_embed = HookPoint()
            self.hook_dir_embed = HookPoint()
            self.hook_rtg_embed = HookPoint()
            self.hook_time_embed = HookPoint()
            self.hook_tokens = HookPoint()
            self.setup()  # names every hook point, the new ones included

        @property
        def config(self) -> dict[str, Any]:
            """The JSON recipe of this model (a run's ``agent`` entry)."""
            return self.dt_config.to_json()

        def one_hot(self, obs: Tensor) -> Tensor:
            """``(..., H, W, 3)`` uint8 cells -> ``(..., H * W * 20)`` float one-hot."""
            obs = obs.long()
            parts = [
                nn.functional.one_hot(obs[..., i].clamp(0, n - 1), n)
                for i, n in enumerate((OBJECT_CLASSES, COLOR_CLASSES, STATE_CLASSES))
            ]
            cells = torch.cat(parts, dim=-1)  # (..., H, W, 20)
            return cells.flatten(-3).to(self.pad.dtype)

        def embed_state(self, obs: Tensor) -> Tensor:
            """``state_embed(one_hot(obs))`` computed as a sum of the weight's columns at the
            one-hot's ones (an embedding bag: seven times fewer multiplications)."""
            lead = obs.shape[:-3]
            offsets = self._channel_offsets.to(obs.device)
            cells = obs.long().clamp(min=0)
            cells = (
                torch.minimum(cells, self._channel_max.to(obs.device)) + offsets
            )  # (..., H, W, 3)
            index = cells.reshape(-1, cells.shape[-3:].numel())  # (N, H * W * 3)
            out = nn.functional.embedding_bag(index, self.state_embed.weight.t(), mode="sum")
            return (out + self.state_embed.bias).reshape(*lead, -1)

        def embed_tokens(self, batch: DTBatch) -> Tensor:
            """The residual stream's input: ``(B, 3K, d_model)``, tokens R_1 s_1 a_1 R_2 ..."""
            b, k = batch.actions.shape
            if k > self.dt_config.context:
                raise ValueError(
                    f"The batch holds {k} steps; this model sees at most {self.dt_config.context}."
                )
            mask = batch.mask.bool()
            time = self.hook_time_embed(
                self.time_embed(batch.timesteps.long().clamp(0, self.dt_config.max_timestep))
            )
            state = self.hook_state_embed(self.embed_state(batch.obs))
            if self.dir_embed is not None:
                if batch.direction is None:
                    raise ValueError("This model reads the agent's direction; pass direction.")
                state = state + self.hook_dir_embed(self.dir_embed(batch.direction.long() % 4))
            rtg = self.hook_rtg_embed(self.rtg_embed(batch.rtg.to(self.pad.dtype)[..., None]))
            pad_action = self.dt_config.num_actions
            actions = torch.where(mask, batch.actions.long().clamp(0, pad_action), pad_action)
            action = self.hook_embed(self.embed(actions))
            tokens = torch.stack([rtg + time, state + time, action + time], dim=2)  # (B, K, 3, d)
            tokens = torch.where(mask[:, :, None, None], tokens, self.pad)
            tokens = tokens.reshape(b, 3 * k, -1)
            pos = self.hook_pos_embed(self.pos_embed.W_pos[: 3 * k])
            return self.hook_tokens(tokens + pos)

        def forward(self, batch: DTBatch) -> Tensor:  # type: ignore[override]
            """Action logits read at each step's state token: ``(B, K, num_actions)``."""
            logits = super().forward(self.embed_tokens(batch), start_at_layer=0)
            return logits[:, 1::3]

        # -- weights --------------------------------------------------------------------------
        def save_weights(self, file: str | os.PathLike) -> None:
            """Write the weights to one ``.safetensors`` file (atomically)."""
            from safetensors.torch import save_file

            tensors = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}
            with artifacts.atomic_path(file) as tmp:
                save_file(tensors, tmp, metadata={"format": "pt", "writer": "policylens"})

        def load_weights(self, file: str | os.PathLike) -> None:
            """Load weights from one ``.safetensors`` file, strictly."""
            from policylens.agents.agent import check_state_dict

            state = artifacts.read_safetensors(file)
            check_state_dict(self, state, str(file), ARCH)
            self.load_state_dict(state, strict=True)

    return HookedDecisionTransformer


def build_dt(config: DTConfig | dict[str, Any], seed: int = 0) -> Any:
    """A freshly initialised decision transformer (a ``HookedTransformer``), the same for the
    same ``seed`` (the global random state is left as it was)."""
    if isinstance(config, dict):
        config = DTConfig.from_json(config)
    cls = dt_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def load_dt(file: str | os.PathLike, config: DTConfig | dict[str, Any]) -> Any:
    """A decision transformer with the weights of ``file`` (a run's checkpoint), in eval mode."""
    model = build_dt(config)
    model.load_weights(file)
    return model.eval()


def num_parameters(model: nn.Module) -> int:
    """Parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
