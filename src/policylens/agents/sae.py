"""Sparse autoencoders (SAEs) as hooked modules: architectures, hook sites, splicing, files.

An SAE maps activations ``x -> z -> x_hat``. Every architecture has a pre-encoder bias (``b_dec``
is subtracted before encoding and added back after decoding) and unit-norm decoder rows; they
differ in how pre-activations become latents. Each is one :class:`SparseAutoencoder` subclass
registered by name in :data:`SAE_ARCHITECTURES` (with :func:`register_sae`); :func:`build_sae`
makes the one a config names. Training lives in :mod:`policylens.lenses.sae`; what it minimises
is named by ``SAEConfig.objective`` (:data:`SAE_OBJECTIVES`: reconstruction alone, or with a term
that keeps the agent's behaviour with the SAE spliced in).

A :class:`HookSite` says how a hook's activation becomes SAE input vectors; :func:`splice`,
:func:`remove_latent`, :func:`zero_ablation` and :func:`mean_ablation` return ordinary
``(hook_name, fn)`` pairs for ``agent.hooks(fwd_hooks=[...])`` or ``run_with_hooks``.

Files: :func:`save_sae` writes ``config.json`` + ``sae.safetensors`` (and ``site.json`` with a
site); :func:`export_saelens` writes SAELens 6.x's layout (``cfg.json`` +
``sae_weights.safetensors`` with ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_enc``,
``b_dec`` and ``threshold`` for JumpReLU), which ``sae_lens.SAE.load_from_disk`` reads;
:func:`load_sae` reads either. Weights only ever come from safetensors.

Why one file of this length: the architectures, their hook sites and their two file formats
share the config and the registry; split, each part would import the others' internals.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from policylens.agents.hooks import HookFn
from policylens.artifacts import atomic_path, read_json, read_safetensors, write_json
from policylens.errors import check_known, unknown_message

FORMAT = "policylens-sae/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "sae.safetensors"
SITE_FILE = "site.json"
SITE_FORMAT = "policylens-sae-site/1"
SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens release whose on-disk layout :func:`export_saelens` writes (any 6.x reads it)."""


# -- config ---------------------------------------------------------------------------------------
SAE_OBJECTIVES: dict[str, str] = {
    "mse": "reconstruction only: squared error of the activations",
    "kl": "reconstruction + KL(original || spliced) of the agent's action distributions",
    "logits": "reconstruction + squared error of the spliced agent's logits (Q-values), "
    "relative to their variance",
}
"""What SAE training can minimise (implemented once for every architecture in
:mod:`policylens.lenses.sae`); the behaviour-keeping ones need the agent and its observations."""


@dataclass
class SAEConfig:
    """Shape, architecture and training recipe of a sparse autoencoder."""

    d_in: int
    """Width of the activations the SAE reads."""
    d_sae: int
    """Number of latents (dictionary size)."""
    arch: str = "topk"
    """A name in :data:`SAE_ARCHITECTURES`: relu, topk, batchtopk, jumprelu."""
    k: int = 32
    """Active latents per sample for topk (on average for batchtopk)."""
    l1_coeff: float = 1.0
    """Weight of the L1 penalty (relu); the loss is sum-over-dims squared error + l1 * sum |z|."""
    l0_coeff: float = 1e-3
    """Weight of the L0 penalty (jumprelu)."""
    jumprelu_bandwidth: float = 0.05
    """Width of the straight-through kernel for the thresholds (jumprelu)."""
    jumprelu_init_threshold: float = 0.01
    """Initial threshold of every latent (jumprelu)."""
    threshold_window: float = 0.1
    """batchtopk: the inference threshold averages the batch cutoffs of this final fraction of steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    lr_decay_frac: float = 0.2
    """Fraction of training at the end over which the learning rate decays linearly to 0."""
    batch_size: int = 4096
    """Samples per optimisation step."""
    samples: int = 1_000_000
    """Training samples in total (steps = ceil(samples / batch_size))."""
    seed: int = 0
    """Seed of the initial weights, data order and resampling."""
    init_encoder_scale: float | None = None
    """Encoder init = this x decoder^T (None: the architecture's ``encoder_scale``)."""
    sparse_below: float = 0.12
    """relu: use the sparse gradient path when fewer than this fraction of latents are active
    (about where the two paths cost the same, measured at 256 -> 2048, batch 4096)."""
    init_b_dec_mean: bool = True
    """Start ``b_dec`` at the mean of the first batch (else zeros)."""
    dead_window: int = 200_000
    """A latent is dead if it did not fire in this many most recent training samples."""
    resample_every: int = 0
    """Resample dead latents every this many steps (0 = never)."""
    resample_until: float = 0.8
    """No resampling after this fraction of training, so resampled latents can settle."""
    resample_encoder_scale: float | None = None
    """Norm of a resampled encoder column relative to the mean alive one (None: the trainer's)."""
    log_every: int = 50
    """Steps between entries of the training history."""
    objective: str = "mse"
    """A name in :data:`SAE_OBJECTIVES`: what training minimises besides the sparsity penalty."""
    behaviour_coeff: float = 1.0
    """Weight of the behaviour term of a behaviour-keeping objective, in units of the
    activations' total variance (so 1.0 weighs one nat of KL like all of the variance)."""
    temperature: float | None = None
    """Temperature of the action distributions the ``kl`` objective compares (None: 1 for a
    policy's logits; for Q-values the median gap between the best and second-best action)."""

    def __post_init__(self) -> None:
        check_known([str(self.arch)], SAE_ARCHITECTURES, "SAE architecture")
        check_known([str(self.objective)], SAE_OBJECTIVES, "SAE objective")
        if self.behaviour_coeff < 0 or (self.temperature is not None and self.temperature <= 0):
            raise ValueError(
                "SAEConfig.behaviour_coeff must be >= 0 and temperature > 0 (or None), got "
                f"{self.behaviour_coeff} and {self.temperature}."
            )
        penalties = ("l1_coeff", "l0_coeff", "lr", "jumprelu_bandwidth", "lr_decay_frac")
        for name in penalties:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SAEConfig.{name} must be a finite number >= 0, got {value!r}.")
        for name in ("d_in", "d_sae", "batch_size", "samples", "dead_window", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"SAEConfig.{name} must be a positive integer, got {getattr(self, name)}."
                )
        if SAE_ARCHITECTURES[self.arch].uses_k and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"SAEConfig.k must be between 1 and d_sae={self.d_sae}, got {self.k}.")
        if not 0.0 <= self.lr_decay_frac <= 1.0:
            raise ValueError(
                f"SAEConfig.lr_decay_frac must be in [0, 1], got {self.lr_decay_frac}."
            )
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]  # JSON gives a list

    @property
    def steps(self) -> int:
        """Optimisation steps of a full training run."""
        return math.ceil(self.samples / self.batch_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a dict (e.g. ``config.json``), refusing unknown keys with the valid ones named."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"Unknown SAEConfig field(s) {unknown}; valid fields: {', '.join(sorted(names))}."
            )
        return cls(**data)


# -- architectures --------------------------------------------------------------------------------
class SparseAutoencoder(nn.Module, ABC):
    """A sparse autoencoder ``x -> z -> x_hat`` over ``(..., d_in)`` activations.

    Parameters use SAELens's names and shapes: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``,
    ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)``; subclasses add what their activation needs
    (``threshold (d_sae,)``). Build one with :func:`build_sae`.
    """

    arch: ClassVar[str] = ""
    """Registered name (set by :func:`register_sae`)."""
    encoder_scale: ClassVar[float] = 1.0
    """Initial encoder = this x decoder^T unless the config says otherwise."""
    uses_k: ClassVar[bool] = False
    """Whether ``config.k`` sets the sparsity."""
    saelens_arch: ClassVar[str] = ""
    """SAELens architecture this one is saved as."""
    saelens_exact: ClassVar[bool] = True
    """Whether SAELens's architecture of that name is this one (loading it gives this class)."""

    def __init__(self, config: SAEConfig) -> None:
        if config.arch != self.arch:
            raise ValueError(
                f"{type(self).__name__} is the {self.arch or 'abstract'} architecture but the "
                f"config says {config.arch!r}; build SAEs with build_sae(config)."
            )
        super().__init__()
        self.config = config
        c = config
        gen = torch.Generator().manual_seed(c.seed)
        w_dec = torch.randn(c.d_sae, c.d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)  # unit-norm rows
        self.W_dec = nn.Parameter(w_dec)  # (d_sae, d_in)
        scale = self.encoder_scale if c.init_encoder_scale is None else c.init_encoder_scale
        self.W_enc = nn.Parameter((w_dec.T * scale).contiguous())  # (d_in, d_sae), tied at init
        self.b_enc = nn.Parameter(torch.zeros(c.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(c.d_in))

    def _check(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise ValueError(
                f"SAE expects d_in={self.config.d_in} activations, got {x.shape[-1]}; "
                "pass the activations of the layer it was trained on, shape (..., d_in)."
            )
        return x.to(self.W_enc.dtype)

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder pre-activations ``(x - b_dec) @ W_enc + b_enc``: (..., d_in) -> (..., d_sae)."""
        x = self._check(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    @abstractmethod
    def activate(self, pre: Tensor) -> Tensor:
        """Latents from pre-activations (..., d_sae), zeros for inactive latents."""

    def encode(self, x: Tensor) -> Tensor:
        """Latents: (..., d_in) -> (..., d_sae), dense with zeros for inactive latents."""
        return self.activate(self.pre_activations(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction: (..., d_sae) latents -> (..., d_in)."""
        if z.shape[-1] != self.config.d_sae:
            raise ValueError(f"SAE decodes d_sae={self.config.d_sae} latents, got {z.shape[-1]}.")
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction (..., d_in), latents (..., d_sae))."""
        z = self.encode(x)
        return self.decode(z), z

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Restore what training keeps true after each update: unit-norm decoder rows."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


SAE_ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}
"""Architecture name -> :class:`SparseAutoencoder` subclass, in registration order."""


def register_sae(name: str) -> Callable[[type[SparseAutoencoder]], type[SparseAutoencoder]]:
    """Class decorator registering an SAE architecture under ``name``."""

    def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        if name in SAE_ARCHITECTURES:
            raise ValueError(f"An SAE architecture named {name!r} is already registered.")
        cls.arch = name
        SAE_ARCHITECTURES[name] = cls
        return cls

    return register


@register_sae("relu")
class ReluL1SAE(SparseAutoencoder):
    """ReLU latents with an L1 penalty (Anthropic's "Towards Monosemanticity")."""

    encoder_scale = 0.1
    saelens_arch = "standard"

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre)


@register_sae("topk")
class TopKSAE(SparseAutoencoder):
    """The ``k`` largest pre-activations per sample, ReLU'd (Gao et al. 2024)."""

    uses_k = True
    saelens_arch = "topk"

    def activate(self, pre: Tensor) -> Tensor:
        vals, idx = pre.topk(self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))


@register_sae("batchtopk")
class BatchTopKSAE(SparseAutoencoder):
    """The ``k * batch`` largest pre-activations per batch while training; afterwards one learned
    threshold for every latent, i.e. a JumpReLU (Bussmann et al. 2024), as SAELens saves it."""

    uses_k = True
    saelens_arch = "jumprelu"
    saelens_exact = False
    threshold: Tensor  # a buffer, registered in __init__

    def __init__(self, config: SAEConfig) -> None:
        super().__init__(config)
        self.register_buffer("threshold", torch.zeros(config.d_sae))

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre) * (pre > self.threshold)


@register_sae("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """Per-latent learned thresholds, trained with an L0 penalty (Rajamanoharan et al. 2024)."""

    encoder_scale = 0.1
    saelens_arch = "jumprelu"

    def __init__(self, config: SAEConfig) -> None:
        super().__init__(config)
        self.threshold = nn.Parameter(
            torch.full((config.d_sae,), float(config.jumprelu_init_threshold))
        )

    def activate(self, pre: Tensor) -> Tensor:
        return F.relu(pre) * (pre > self.threshold)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Unit-norm decoder rows and positive thresholds."""
        super().apply_constraints()
        self.threshold.clamp_(min=1e-6)


def build_sae(config: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of the architecture ``config.arch`` names (seeded by ``config.seed``)."""
    return SAE_ARCHITECTURES[config.arch](config)


# -- hook sites -----------------------------------------------------------------------------------
LAYOUTS: dict[str, str] = {
    "auto": "channels for (C, H, W) activations, vector for (d,), flat otherwise",
    "vector": "one (d,) vector per observation",
    "channels": "one (C,) channel vector per spatial position of a (C, H, W) activation",
    "flat": "the whole activation flattened per observation",
}


@dataclass(frozen=True)
class HookSite:
    """A hook of an agent and how its activations map to SAE input vectors."""

    hook: str
    layout: str
    """``vector``, ``channels`` or ``flat`` (see :data:`LAYOUTS`)."""
    shape: tuple[int, ...]
    """Activation shape of one observation, e.g. ``(256,)`` or ``(16, 9, 9)``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.layout not in ("vector", "channels", "flat"):
            raise ValueError(
                f"Unknown layout {self.layout!r}; use one of vector, channels, flat (or auto)."
            )
        if self.layout == "channels" and len(self.shape) != 3:
            raise ValueError(
                f"Hook {self.hook!r} gives activations of shape {self.shape} per observation; the "
                "channels layout needs (C, H, W): use layout 'flat' or 'vector'."
            )
        if self.layout == "vector" and len(self.shape) != 1:
            raise ValueError(
                f"Hook {self.hook!r} gives activations of shape {self.shape} per observation; the "
                "vector layout needs (d,): use layout 'channels' or 'flat'."
            )

    @classmethod
    def resolve(cls, hook: str, shape: Sequence[int], layout: str = "auto") -> HookSite:
        """The site of ``hook`` with activations of ``shape``; ``auto`` picks the layout by shape."""
        check_known([str(layout)], LAYOUTS, "layout")
        shape = tuple(int(s) for s in shape)
        if layout == "auto":
            layout = {3: "channels", 1: "vector"}.get(len(shape), "flat")
        return cls(hook, layout, shape)

    @property
    def d_in(self) -> int:
        """Width of one SAE input vector."""
        return self.shape[0] if self.layout == "channels" else max(1, math.prod(self.shape))

    @property
    def positions(self) -> int:
        """SAE input vectors per observation (H * W for channels, else 1)."""
        return self.shape[1] * self.shape[2] if self.layout == "channels" else 1

    def describe(self) -> str:
        if self.layout == "channels":
            c, h, w = self.shape
            return f"{c}-wide channel vectors at {h}x{w} positions of {self.hook!r}"
        return f"{self.d_in}-wide vectors of {self.hook!r} (activation shape {self.shape})"

    def to_vectors(self, act: Tensor) -> Tensor:
        """``(batch, *shape)`` -> ``(batch * positions, d_in)`` float vectors."""
        if tuple(act.shape[1:]) != self.shape:
            raise ValueError(
                f"Hook {self.hook!r} gave activations of shape {tuple(act.shape[1:])} per "
                f"observation, but this site expects {self.shape}; rebuild the site for this agent."
            )
        if self.layout == "channels":
            # permute + reshape (not view): conv activations may be channels_last tensors
            return act.permute(0, 2, 3, 1).reshape(-1, self.shape[0]).float()  # (B*H*W, C)
        return act.reshape(act.shape[0], -1).float()  # (B, d_in)

    def from_vectors(self, vectors: Tensor, batch: int) -> Tensor:
        """``(batch * positions, d_in)`` -> ``(batch, *shape)`` (the inverse of to_vectors)."""
        if self.layout == "channels":
            c, h, w = self.shape
            return vectors.reshape(batch, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        return vectors.reshape(batch, *self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "layout": self.layout, "shape": list(self.shape)}


def hook_site(agent, hook: str, layout: str = "auto") -> HookSite:
    """The site of ``hook`` on ``agent`` (its activation shape read from one forward pass)."""
    if hook not in agent.hook_names():
        raise ValueError(unknown_message("hook", hook, agent.hook_names()))
    dtype = torch.uint8 if agent.obs_kind == "image" else agent.dtype
    obs = torch.zeros((1, *agent.obs_shape), dtype=dtype, device=agent.device)
    with torch.no_grad():
        _, cache = agent.run_with_cache(obs, names=[hook])
    return HookSite.resolve(hook, cache[hook].shape[1:], layout)


def site_for_sae(agent, info: dict[str, Any], hook: str | None = None) -> HookSite:
    """The site an SAE folder's :func:`read_site` names (``hook`` overrides it), checked on ``agent``."""
    name = hook or info.get("hook")
    if not name:
        raise ValueError("The SAE folder does not name its hook; pass --hook.")
    site = hook_site(agent, name, info.get("layout", "auto") if hook is None else "auto")
    if info.get("shape") and tuple(info["shape"]) != site.shape and hook is None:
        raise ValueError(
            f"The SAE was trained on {name!r} activations of shape {tuple(info['shape'])} but "
            f"this agent's are {site.shape}; use the agent the SAE was trained on."
        )
    return site


def check_sae_fits(sae: SparseAutoencoder, site: HookSite) -> None:
    """Raise a clear ValueError when the SAE's width is not the site's vector width."""
    if sae.config.d_in != site.d_in:
        raise ValueError(
            f"The SAE reads {sae.config.d_in}-wide vectors but the hook gives "
            f"{site.describe()}; use an SAE trained on this hook (and layout) or pick the hook "
            "it was trained on."
        )


# -- hooks ----------------------------------------------------------------------------------------
def splice(
    sae: SparseAutoencoder, site: HookSite, zero_latents: Sequence[int] | Tensor | None = None
) -> tuple[str, HookFn]:
    """``(hook, fn)`` replacing the site's activation by the SAE reconstruction (some latents zeroed)."""
    check_sae_fits(sae, site)
    keep = None
    if zero_latents is not None and len(zero_latents):
        keep = torch.ones(sae.config.d_sae)
        keep[torch.as_tensor(zero_latents, dtype=torch.long)] = 0.0

    def fn(act: Tensor, hook: Any) -> Tensor:
        z = sae.encode(site.to_vectors(act))  # (B * positions, d_sae)
        if keep is not None:
            z = z * keep.to(z.device)
        return site.from_vectors(sae.decode(z), act.shape[0]).to(act.dtype)

    return site.hook, fn


def remove_latent(sae: SparseAutoencoder, site: HookSite, latent: int) -> tuple[str, HookFn]:
    """``(hook, fn)`` subtracting latent ``latent``'s decoder contribution from the activation.

    The reconstruction error stays in (activation - z_j * W_dec[j]), so the effect measured is the
    latent's effect on the real agent, not on the SAE-spliced one.
    """
    check_sae_fits(sae, site)

    def fn(act: Tensor, hook: Any) -> Tensor:
        z_j = sae.encode(site.to_vectors(act))[:, latent]  # (B * positions,)
        delta = z_j[:, None] * sae.W_dec[latent]  # (B * positions, d_in)
        return act - site.from_vectors(delta, act.shape[0]).to(act.dtype)

    return site.hook, fn


def zero_ablation(site: HookSite) -> tuple[str, HookFn]:
    """``(hook, fn)`` zeroing the site's whole activation."""
    return site.hook, lambda act, hook: torch.zeros_like(act)


def mean_ablation(site: HookSite, mean: Tensor) -> tuple[str, HookFn]:
    """``(hook, fn)`` putting ``mean`` (one observation's activation, ``site.shape``) everywhere."""
    if tuple(mean.shape) != site.shape:
        raise ValueError(
            f"Mean activation of shape {tuple(mean.shape)} does not fit hook {site.hook!r} with "
            f"activations {site.shape}; compute the mean on this hook."
        )
    return site.hook, lambda act, hook: mean.to(act.device, act.dtype).expand_as(act).clone()


# -- files ----------------------------------------------------------------------------------------
def _save_tensors(
    tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def save_sae(
    sae: SparseAutoencoder,
    path: str | os.PathLike,
    site: HookSite | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` and ``sae.safetensors`` into the folder ``path``; returns the folder.

    With ``site``, also ``site.json``: the site and ``meta`` (source run, world, metrics...).
    """
    folder = Path(path)
    if site is not None:
        check_sae_fits(sae, site)
    _save_tensors(dict(sae.state_dict()), folder / WEIGHTS_FILE, {"format": FORMAT})
    write_json(folder / CONFIG_FILE, {"format": FORMAT, "config": asdict(sae.config)})
    if site is not None:
        write_json(folder / SITE_FILE, {"format": SITE_FORMAT, **site.to_dict(), **(meta or {})})
    return folder


def export_saelens(
    sae: SparseAutoencoder,
    path: str | os.PathLike,
    site: HookSite | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae`` in SAELens 6.x's on-disk layout, loadable with ``SAE.load_from_disk(path)``.

    Each architecture is saved as its ``saelens_arch`` (batchtopk as a jumprelu with its one
    learned threshold repeated per latent, as SAELens saves it). ``site`` names the hook
    (``hook_name``); ``metadata`` goes into the config's metadata too.
    """
    c = sae.config
    arch = type(sae).saelens_arch
    folder = Path(path)
    where = {"hook_name": site.hook, "policylens_site": site.to_dict()} if site else {}
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "exported_by": "policylens",
            "policylens_config": asdict(c),
            **where,
            **(metadata or {}),
        },
    }
    if arch == "topk":  # SAELens's topk config carries k
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    tensors = {k: v.float() for k, v in sae.state_dict().items()}
    _save_tensors(tensors, folder / SAELENS_WEIGHTS_FILE)
    write_json(folder / SAELENS_CFG_FILE, cfg)
    return folder


def _load_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"No SAE weights at {path}; save the SAE there first.")
    tensors = read_safetensors(path)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(
            f"{path} lacks tensor(s) {missing}; it is not a complete SAE of this architecture."
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)} but the config says {shape}; "
                "the weights and config do not belong together."
            )
    return {k: tensors[k].float() for k in expected}


def _with_weights(config: SAEConfig, file: Path, fold: Callable | None = None) -> SparseAutoencoder:
    """An SAE of ``config`` holding the weights in ``file`` (passed through ``fold`` first)."""
    sae = build_sae(config)
    weights = _load_weights(file, {k: tuple(v.shape) for k, v in sae.state_dict().items()})
    sae.load_state_dict(fold(weights) if fold is not None else weights)
    return sae.eval()


def _read_saelens(folder: Path) -> SparseAutoencoder:
    """An SAE saved in SAELens 6.x's layout (its standard, topk or jumprelu architectures).

    Decoder-norm rescaling (topk's ``rescale_acts_by_decoder_norm``) and ``apply_b_dec_to_input:
    false`` are folded into the weights, so the SAE computes the same function.
    """
    cfg_path = folder / SAELENS_CFG_FILE
    cfg = read_json(cfg_path)
    readers = {c.saelens_arch: name for name, c in SAE_ARCHITECTURES.items() if c.saelens_exact}
    arch = cfg.get("architecture", "standard")
    if arch not in readers:
        raise ValueError(
            f"SAELens architecture {arch!r} is not supported; policylens reads {', '.join(readers)}."
        )
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{cfg_path} normalizes activations ({cfg['normalize_activations']!r}); fold the "
            "normalization into the weights in SAELens first (fold_activation_norm_scaling_factor)."
        )
    own = (cfg.get("metadata") or {}).get("policylens_config")
    base = SAEConfig.from_dict(own) if isinstance(own, dict) else None
    kwargs: dict[str, Any] = asdict(base) if base is not None else {}
    kwargs.update(d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), arch=readers[arch])
    if base is not None and SAE_ARCHITECTURES[base.arch].saelens_arch == arch:
        kwargs["arch"] = base.arch  # our own export (e.g. batchtopk): keep the recipe's name
    if arch == "topk":
        kwargs["k"] = int(cfg["k"])
    rescale = arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)
    b_dec_in = cfg.get("apply_b_dec_to_input", True)

    def fold(weights: dict[str, Tensor]) -> dict[str, Tensor]:
        if rescale:
            norms = weights["W_dec"].norm(dim=1).clamp_min(1e-8)  # (d_sae,)
            weights["W_dec"] = weights["W_dec"] / norms[:, None]
            weights["W_enc"] = weights["W_enc"] * norms[None, :]
            weights["b_enc"] = weights["b_enc"] * norms
        if not b_dec_in:
            # x @ W + b_enc == (x - b_dec) @ W + (b_enc + b_dec @ W)
            weights["b_enc"] = weights["b_enc"] + weights["b_dec"] @ weights["W_enc"]
        return weights

    return _with_weights(SAEConfig(**kwargs), folder / SAELENS_WEIGHTS_FILE, fold)


def load_sae(path: str | os.PathLike) -> SparseAutoencoder:
    """Load the SAE in folder ``path``: :func:`save_sae`'s layout or SAELens 6.x's."""
    folder = Path(path)
    own = folder / CONFIG_FILE
    if own.is_file():
        meta = read_json(own)
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            config = SAEConfig.from_dict(meta["config"])
            return _with_weights(config, folder / WEIGHTS_FILE)
    if (folder / SAELENS_CFG_FILE).is_file():
        return _read_saelens(folder)
    if own.is_file():
        raise ValueError(
            f"{own} is not a policylens SAE config; pass a folder written by save_sae."
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No SAE folder at {folder}; train one with `policylens sae train`."
        )
    raise FileNotFoundError(
        f"{folder} holds no SAE ({CONFIG_FILE} or {SAELENS_CFG_FILE}); pass an SAE folder."
    )


def read_site(path: str | os.PathLike) -> dict[str, Any]:
    """What an SAE folder says about its hook: ``hook``, ``layout``, ``shape`` and the saved meta.

    From ``site.json`` (:func:`save_sae`) or a SAELens config's metadata; empty when neither names it.
    """
    folder = Path(path)
    if (folder / SITE_FILE).is_file():
        return dict(read_json(folder / SITE_FILE))
    if (folder / SAELENS_CFG_FILE).is_file():
        meta = read_json(folder / SAELENS_CFG_FILE).get("metadata") or {}
        info = dict(meta.get("policylens_site") or {})
        if "hook" not in info and meta.get("hook_name"):
            info["hook"] = meta["hook_name"]
        return info
    return {}


__all__ = [
    "LAYOUTS",
    "SAE_ARCHITECTURES",
    "SAE_OBJECTIVES",
    "BatchTopKSAE",
    "HookSite",
    "JumpReLUSAE",
    "ReluL1SAE",
    "SAEConfig",
    "SparseAutoencoder",
    "TopKSAE",
    "build_sae",
    "check_sae_fits",
    "export_saelens",
    "hook_site",
    "load_sae",
    "mean_ablation",
    "read_site",
    "register_sae",
    "remove_latent",
    "save_sae",
    "site_for_sae",
    "splice",
    "zero_ablation",
]
