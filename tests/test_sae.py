"""Sparse autoencoders: training quality per architecture, hand gradients, dead latents, files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from policylens.agents.sae import (
    SAE_ARCHITECTURES,
    SAEConfig,
    SparseAutoencoder,
    build_sae,
    export_saelens,
    load_sae,
    register_sae,
    save_sae,
)
from policylens.lenses.sae import (
    _train_step,
    behaviour_loss,
    evaluate_sae,
    resample_dead,
    synthetic_activations,
    train_sae,
)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x = synthetic_activations(24_000, 32, n_features=48, active=3, seed=0)
    return x[:20_000], x[20_000:]


ARCH_KWARGS = {
    "relu": {"l1_coeff": 0.3},
    "topk": {"k": 6},
    "batchtopk": {"k": 6},
    "jumprelu": {"l0_coeff": 0.03},
}


@pytest.mark.parametrize("arch", list(ARCH_KWARGS))
def test_each_arch_learns_structured_data(
    arch: str, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    train, test = data
    cfg = SAEConfig(
        d_in=32, d_sae=128, arch=arch, batch_size=512, samples=80_000, lr=3e-3, **ARCH_KWARGS[arch]
    )
    sae, history = train_sae(train, cfg)
    ev = evaluate_sae(sae, test)
    assert ev["explained_variance"] > 0.9, ev
    assert history[0]["explained_variance"] < history[-1]["explained_variance"]
    assert ev["l0"] < 32  # sparse: far fewer active latents than input dims
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # unit decoder rows
    if arch == "topk":
        z = sae.encode(test)
        assert ((z != 0).sum(-1) <= 6).all() and ev["l0"] > 5.9  # exactly k, bar zero-valued picks
    if arch == "batchtopk":
        assert 4.5 < ev["l0"] < 7.5  # k on average through the learned threshold
        assert sae.threshold.unique().numel() == 1 and float(sae.threshold[0]) > 0


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by the rectangle-kernel straight-through estimator."""

    @staticmethod
    def forward(ctx, pre, theta, eps):  # noqa: ANN001, ANN205
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        pre, theta = ctx.saved_tensors
        kernel = ((pre - theta).abs() < ctx.eps / 2).float() / ctx.eps
        return g * (pre > theta), (-theta * kernel * g).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - theta), the L0 count; d/dtheta = -kernel."""

    @staticmethod
    def forward(ctx, pre, theta, eps):  # noqa: ANN001, ANN205
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).float()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        pre, theta = ctx.saved_tensors
        kernel = ((pre - theta).abs() < ctx.eps / 2).float() / ctx.eps
        return None, (-kernel * g).sum(0), None


def _recon(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The training-time reconstruction (batchtopk's batch top-k, jumprelu's straight-through)."""
    return _reference_loss(sae, x, recon=True)


def _reference_loss(sae: SparseAutoencoder, x: torch.Tensor, recon: bool = False) -> torch.Tensor:
    """The training loss written with autograd-friendly ops, for checking hand gradients."""
    c, B = sae.config, x.shape[0]
    pre = sae.pre_activations(x)
    extra = torch.zeros(())
    if c.arch == "relu":
        z = F.relu(pre)
        extra = c.l1_coeff * z.sum() / B
    elif c.arch == "topk":
        v, i = pre.topk(c.k, -1)
        z = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
    elif c.arch == "batchtopk":
        flat = F.relu(pre).flatten()
        v, i = flat.topk(B * c.k)
        z = torch.zeros_like(flat).scatter(0, i, v).view_as(pre)
    else:
        z = _JumpReLU.apply(pre, sae.threshold, c.jumprelu_bandwidth)
        extra = c.l0_coeff * _Step.apply(pre, sae.threshold, c.jumprelu_bandwidth).sum() / B
    if recon:
        return z @ sae.W_dec + sae.b_dec
    return (z @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean() + extra


@pytest.mark.parametrize("behaviour", [False, True], ids=["mse", "with-behaviour"])
@pytest.mark.parametrize("arch", [*ARCH_KWARGS, "relu-sparse"])
def test_hand_gradients_match_autograd(arch: str, behaviour: bool) -> None:
    """Every architecture's hand gradients equal autograd's, also with a behaviour term added
    to the reconstruction's gradient (as the kl and logits objectives add it)."""
    torch.manual_seed(0)
    kw = {"sparse_below": 1.0} if arch == "relu-sparse" else {"sparse_below": 0.0}
    cfg = SAEConfig(
        d_in=16,
        d_sae=64,
        arch=arch.split("-")[0],
        k=4,
        l1_coeff=0.3,
        l0_coeff=0.1,
        jumprelu_bandwidth=0.5,
        jumprelu_init_threshold=0.2,
        **kw,
    )
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
        sae.W_enc.mul_(13.0)
    x = torch.randn(32, 16)
    head, target = torch.randn(16, 5), torch.randn(32, 5)  # a stand-in for the rest of the agent

    def kl_of(recon: torch.Tensor) -> torch.Tensor:
        return behaviour_loss("kl", recon @ head, target, temperature=0.7) * 3.0

    def term(recon: torch.Tensor) -> tuple[float, torch.Tensor]:
        with torch.enable_grad():
            leaf = recon.detach().requires_grad_(True)
            loss = kl_of(leaf)
            return loss.item(), torch.autograd.grad(loss, leaf)[0]

    with torch.no_grad():
        step = _train_step(sae, x, behaviour=term if behaviour else None)
    hand = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    loss = _reference_loss(sae, x)
    if behaviour:
        loss = loss + kl_of(_recon(sae, x))
        assert step.behaviour > 0
    loss.backward()
    assert step.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(hand[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_dead_latents_are_detected_and_revived(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    train, _ = data
    base = dict(
        d_in=32,
        d_sae=96,
        arch="relu",
        l1_coeff=0.1,
        batch_size=512,
        samples=30_000,
        lr=3e-3,
        dead_window=2048,
    )

    def killed(cfg: SAEConfig) -> SparseAutoencoder:
        sae = build_sae(cfg)
        with torch.no_grad():  # latents 0..23 can never fire: zero encoder, very negative bias
            sae.W_enc[:, :24] = 0.0
            sae.b_enc[:24] = -100.0
            sae.b_dec.copy_(train.mean(0))
        return sae

    x = train[:512]
    sae = killed(SAEConfig(**base))
    dead = (sae.encode(x) == 0).all(0)
    assert dead[:24].all()
    n = resample_dead(sae, x, dead, seed=1)
    assert n == int(dead.sum()) >= 24
    assert (sae.encode(x)[:, :24] != 0).any(0).float().mean() > 0.5  # most fire again
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))

    # Inside training: the same forced deaths stay dead without resampling, revive with it.
    stay, hist_stay = train_sae(train, SAEConfig(**base), sae=killed(SAEConfig(**base)))
    cfg = SAEConfig(**base, resample_every=10, resample_until=0.5)
    revived, hist_rev = train_sae(train, cfg, sae=killed(cfg))
    fired_stay = (stay.encode(train[:4096]) != 0).any(0)
    fired_rev = (revived.encode(train[:4096]) != 0).any(0)
    assert not fired_stay[:24].any() and hist_stay[-1]["dead_fraction"] >= 24 / 96
    assert fired_rev[:24].float().mean() > 0.8 and hist_rev[-1]["resampled"] >= 24
    assert hist_rev[-1]["dead_fraction"] < 0.1


def _tiny(arch: str) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=16, d_sae=48, arch=arch, k=5, batch_size=256, samples=2048, seed=3)
    sae, _ = train_sae(synthetic_activations(4096, 16, n_features=24, seed=3), cfg)
    return sae


@pytest.mark.parametrize("arch", list(ARCH_KWARGS))
def test_save_load_and_saelens_round_trips_are_exact(arch: str, tmp_path) -> None:
    sae = _tiny(arch)
    x = torch.randn(64, 16)
    loaded = load_sae(save_sae(sae, tmp_path / "own"))
    assert loaded.config == sae.config
    for name, t in sae.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    assert torch.equal(loaded(x)[0], sae(x)[0])

    folder = export_saelens(sae, tmp_path / "saelens", metadata={"hook_name": "hook_value"})
    cfg = json.loads((folder / "cfg.json").read_text())
    from safetensors.torch import load_file

    weights = load_file(folder / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (16, 48) and weights["W_dec"].shape == (48, 16)
    expected_arch = {"relu": "standard", "topk": "topk"}.get(arch, "jumprelu")
    assert cfg["architecture"] == expected_arch and cfg["d_in"] == 16 and cfg["d_sae"] == 48
    assert cfg["metadata"]["hook_name"] == "hook_value"
    assert ("threshold" in weights) == (expected_arch == "jumprelu")
    if arch == "topk":
        assert cfg["k"] == 5
    back = load_sae(folder)
    assert back.config.arch == arch
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    out, z = back(x)
    assert torch.equal(out, sae(x)[0]) and torch.equal(z, sae(x)[1])


def test_import_folds_saelens_decoder_norm_rescaling(tmp_path) -> None:
    sae = _tiny("topk")
    folder = export_saelens(sae, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    cfg["apply_b_dec_to_input"] = False
    from safetensors.torch import load_file, save_file

    w = load_file(folder / "sae_weights.safetensors")
    scale = torch.linspace(0.5, 2.0, 48)
    w["W_dec"] = w["W_dec"] * scale[:, None]  # SAELens would rescale latents by these norms
    w["W_enc"] = w["W_enc"] / scale[None, :]
    w["b_enc"] = (w["b_enc"] - w["b_dec"] @ sae.W_enc.detach()) / scale
    save_file(w, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    back = load_sae(folder)
    x = torch.randn(32, 16)
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-4, atol=1e-4)


def test_clear_errors() -> None:
    sae = build_sae(SAEConfig(d_in=64, d_sae=128))
    with pytest.raises(ValueError, match="SAE expects d_in=64 activations, got 32"):
        sae(torch.zeros(4, 32))
    with pytest.raises(ValueError, match="Did you mean 'topk'"):
        SAEConfig(d_in=4, d_sae=8, arch="topkk")
    with pytest.raises(ValueError, match="k must be between 1 and d_sae=8"):
        SAEConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="SAE expects d_in=64"):
        train_sae(torch.zeros(100, 32), SAEConfig(d_in=64, d_sae=128, samples=100))
    with pytest.raises(ValueError, match="Cannot continue training an SAE"):
        train_sae(torch.zeros(100, 64), SAEConfig(d_in=64, d_sae=256, samples=100), sae=sae)
    with pytest.raises(ValueError, match="Unknown SAEConfig field"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "widht": 3})


def test_iterable_of_batches_and_seeding() -> None:
    x = synthetic_activations(4096, 16, n_features=24, seed=5)
    cfg = SAEConfig(d_in=16, d_sae=32, arch="topk", k=3, batch_size=256, samples=2048, seed=7)
    a, _ = train_sae(x, cfg)
    b, _ = train_sae(x, cfg)
    assert torch.equal(a.W_enc, b.W_enc)  # same seed, same SAE
    c, hist = train_sae(iter(x.split(256)[:4]), cfg)  # an iterator that ends early
    assert hist[-1]["samples"] == 1024


def test_architectures_are_registered_classes_and_a_new_one_plugs_in(tmp_path) -> None:
    assert list(SAE_ARCHITECTURES) == ["relu", "topk", "batchtopk", "jumprelu"]
    for name, cls in SAE_ARCHITECTURES.items():
        sae = build_sae(SAEConfig(d_in=8, d_sae=16, arch=name, k=4))
        assert type(sae) is cls and sae.arch == name
    with pytest.raises(ValueError, match="the config says 'relu'; build SAEs with build_sae"):
        SAE_ARCHITECTURES["topk"](SAEConfig(d_in=8, d_sae=16, arch="relu"))

    @register_sae("abs_test")
    class AbsSAE(SparseAutoencoder):
        saelens_arch = "standard"
        saelens_exact = False

        def activate(self, pre: torch.Tensor) -> torch.Tensor:
            return pre.abs()

    try:  # a new architecture builds, encodes, saves and loads like the others
        cfg = SAEConfig(d_in=8, d_sae=16, arch="abs_test")
        sae, x = build_sae(cfg), torch.randn(4, 8)
        assert torch.equal(sae.encode(x), sae.pre_activations(x).abs())
        back = load_sae(save_sae(sae, tmp_path / "abs"))
        assert type(back) is AbsSAE and torch.equal(back(x)[0], sae(x)[0])
        with pytest.raises(ValueError, match="'abs_test' has no trainer; register its step"):
            train_sae(x, cfg)
        with pytest.raises(ValueError, match="already registered"):
            register_sae("abs_test")(AbsSAE)
    finally:
        del SAE_ARCHITECTURES["abs_test"]
    with pytest.raises(ValueError, match="Unknown SAE architecture 'abs_test'"):
        SAEConfig(d_in=8, d_sae=16, arch="abs_test")


def test_load_sae_refuses_what_is_not_an_sae(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="No SAE folder at"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no SAE"):
        load_sae(tmp_path / "empty")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "config.json").write_text(json.dumps({"arch": "mlp"}))
    with pytest.raises(ValueError, match="is not a policylens SAE config"):
        load_sae(tmp_path / "agent")
