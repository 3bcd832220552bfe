"""Decision-transformer analyses with known answers, on tiny DTs built here: direct logit
attribution sums to the model's logit, patching nothing recovers 0% and the whole residual stream
100%, attention without queries or keys is uniform over the visible tokens, the OV SVD is the
dense one, and the CLI runs every analysis on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from policylens.agents.dt import DTBatch, DTConfig, build_dt
from policylens.cli import app
from policylens.lenses.transformer import (
    Site,
    circuit_svds,
    fraction_in_span,
    logit_attribution,
    run_patched,
)
from policylens.runs import Run
from policylens.studies import dt_analysis as A
from policylens.train.dt import load_run_dt

K = 4
runner = CliRunner()


def random_batch(b: int = 16, k: int = K, seed: int = 0, pad: int = 0) -> DTBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[:, :pad] = False
    return DTBatch(
        obs=torch.randint(0, 11, (b, k, 7, 7, 3), generator=g).to(torch.uint8),
        actions=torch.randint(0, 3, (b, k), generator=g),
        rtg=torch.rand(b, k, generator=g) * 2 - 1,
        timesteps=torch.arange(k).repeat(b, 1),
        mask=mask,
        direction=torch.randint(0, 4, (b, k), generator=g),
    )


def histories(model, batch: DTBatch) -> A.Histories:
    return A.Histories(model, 0, batch, np.arange(len(batch.actions)), "random")


CONFIGS = {
    "ln-mlp": dict(d_model=32, n_heads=2, d_mlp=48),
    "no-ln": dict(d_model=32, n_heads=4, d_mlp=48, normalization_type=None),
    "attn-only-2-layers": dict(d_model=32, n_heads=2, n_layers=2, attn_only=True),
    "2-layers": dict(d_model=32, n_heads=2, n_layers=2, d_mlp=40, act_fn="gelu"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    m = build_dt(DTConfig(context=K, **CONFIGS[request.param]), seed=2)
    with torch.no_grad():  # a readable RTG and non-trivial biases, as training would give
        m.rtg_embed.weight.mul_(100)
        for name, p in m.named_parameters():
            if name.endswith(("b_O", "b_out", "b_U", "ln_final.b")):
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("kind", ["one-hot", "difference"])
def test_direct_logit_attribution_sums_to_the_logit(model, kind):
    batch = random_batch()
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch)
    last = logits[:, -1]
    coef = torch.nn.functional.one_hot(last.argmax(-1), 3).float()
    if kind == "difference":
        coef = coef - torch.nn.functional.one_hot(last.argmin(-1), 3).float()
    dla = logit_attribution(model, cache, 3 * K - 2, coef)
    want = (last * coef).sum(-1)
    torch.testing.assert_close(dla.values.sum(0), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(dla.logits, want, rtol=0, atol=1e-5)
    heads = [
        f"L{layer}H{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
    ]
    assert set(heads) <= set(dla.labels) and dla.labels[0] == "embed" and dla.labels[-1] == "bias"
    neurons = [lab for lab in dla.labels if "N" in lab]
    assert len(neurons) == (0 if model.cfg.attn_only else model.cfg.n_layers * model.cfg.d_mlp)


def test_the_attribution_study_splits_the_embedding_exactly(model):
    result = A.logit_attribution_study(histories(model, random_batch()), A.AttributionOptions())
    assert result.max_sum_error < 1e-5
    rows = {r["component"]: r["mean"] for r in result.components}
    split = sum(v for k, v in rows.items() if k.startswith("embed."))
    assert split == pytest.approx(rows["embed"], abs=1e-5)
    if not model.cfg.attn_only:  # each MLP row is the sum of its neurons and b_out
        assert len(result.neurons) == 10


def test_patching_nothing_recovers_0_and_the_whole_residual_100_percent(model):
    h = histories(model, random_batch(b=64, seed=3))
    result = A.patching(h, A.PatchOptions(histories=64, min_gap=0.0, high=1.0, low=-1.0))
    assert result.histories >= 2  # the scaled RTG embedding changes some actions
    rows = {r["component"]: r for r in result.rows}
    nothing, whole = rows["nothing"], rows["residual stream before the unembed"]
    assert nothing["recovered"]["mean"] == 0 and nothing["recovered"]["ci"] == [0, 0]
    assert nothing["lost"]["mean"] == 0 and nothing["chosen"] == 0
    assert whole["recovered"]["mean"] == pytest.approx(1, abs=1e-5)
    assert whole["recovered"]["ci"][1] - whole["recovered"]["ci"][0] < 1e-4
    assert whole["lost"]["mean"] == pytest.approx(1, abs=1e-5) and whole["chosen"] == 1
    assert rows["rtg tokens (all steps)"]["recovered"]["mean"] == pytest.approx(1, abs=1e-5)
    # the last state token's own embedding does not hold the RTG: patching it does nothing
    assert rows["embed"]["recovered"]["mean"] == pytest.approx(0, abs=1e-5)
    assert result.fewest["reached"] == (result.fewest["recovered"]["mean"] >= 0.8)
    if model.cfg.n_layers == 1 and not model.cfg.attn_only:  # the MLP reads every head
        assert result.fewest["components"] == ["L0.mlp"] or len(result.fewest["components"]) <= 2


def test_run_patched_without_sites_is_the_plain_run(model):
    batch = random_batch()
    other = A.with_rtg(batch, -1.0)
    with torch.no_grad():
        _, cache = model.run_with_cache(other)
        plain, patched = model(batch), run_patched(model, batch, cache, [])
        full = run_patched(model, batch, cache, [Site("tokens", "hook_tokens")])
    torch.testing.assert_close(patched, plain, rtol=0, atol=0)
    torch.testing.assert_close(full, model(other), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 2])
def test_attention_without_queries_is_uniform_over_the_visible_tokens(pad):
    m = build_dt(DTConfig(context=K, d_model=32, n_heads=2, d_mlp=32), seed=0)
    with torch.no_grad():
        for block in m.blocks:
            block.attn.W_Q.zero_()
            block.attn.b_Q.zero_()
    result = A.attention_by_token_type(histories(m, random_batch(pad=pad)), A.AttentionOptions())
    visible = 3 * K - 1  # the last state token sees every token but the last action
    for head in result.heads:
        t = {k: v["mean"] for k, v in head["by_type"].items()}
        assert sum(t.values()) == pytest.approx(1)
        assert t["R"] == pytest.approx((K - pad) / visible)
        assert t["s"] == pytest.approx((K - pad) / visible)
        assert t["a"] == pytest.approx((K - 1 - pad) / visible)
        assert t["pad"] == pytest.approx(3 * pad / visible)
        assert head["by_step"][-1]["a"] == 0 and len(head["by_step"]) == K


def test_ov_svd_and_alignment_known_answers():
    m = build_dt(DTConfig(context=K, d_model=32, n_heads=2, d_mlp=32, normalization_type=None))
    ov = circuit_svds(m, "OV")
    dense = m.blocks[0].attn.W_V[1] @ m.blocks[0].attn.W_O[1]
    torch.testing.assert_close(ov[0][1].singular_values[:16], torch.linalg.svdvals(dense)[:16])
    left = ov[0][1].left
    assert float(fraction_in_span(left[:, 0], left[:, :4])) == pytest.approx(1)
    assert float(fraction_in_span(left[:, 5], left[:, :4])) == pytest.approx(0, abs=1e-6)
    with torch.no_grad():  # an RTG direction that is head 1's top OV input direction
        m.rtg_embed.weight[:, 0] = left[:, 0] * 3
    result = A.circuits(histories(m, random_batch()), A.CircuitOptions(top=1))
    heads = {h["head"]: h for h in result.heads}
    assert heads["L0H1"]["rtg_in_ov"] == pytest.approx(1, abs=1e-5)
    assert heads["L0H0"]["rtg_in_ov"] < 0.9 and result.chance == pytest.approx(1 / 32)
    assert len(heads["L0H0"]["ov_singular_values"]) == 10


def test_rtg_scan_reads_the_model_at_each_rtg(model):
    batch = random_batch()
    result = A.rtg_scan(histories(model, batch), A.ScanOptions(rtgs=(-1.0, 0.5, 1.0)))
    assert [r["rtg"] for r in result.rows] == [-1.0, 0.5, 1.0]
    for row, probs in zip(result.rows, result.example["probabilities"], strict=True):
        assert sum(r["mean"] for r in row["probability"].values()) == pytest.approx(1)
        with torch.no_grad():
            want = torch.softmax(model(A.with_rtg(batch, row["rtg"]))[0, -1], -1)
        np.testing.assert_allclose(probs, want.numpy(), atol=1e-6)
    assert result.actions == ["left", "right", "forward"]


def invoke(*args) -> dict:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_cli_runs_every_analysis_on_a_tiny_run(tmp_path):
    data, out = tmp_path / "store", tmp_path / "run"
    invoke("dt", "collect", "--out", data, "--episodes", 8, "--json")
    invoke("train", "dt", "--data", data, "--out", out, "--steps", 4, "--context", 3,
           "--d-model", 16, "--d-mlp", 32, "--batch-size", 4, "--json")  # fmt: skip
    common = ["--histories", 16, "--json"]
    scan = invoke("dt", "rtg-scan", out, "--rtg", -1, "--rtg", 1, *common)
    assert len(scan["rows"]) == 2 and scan["histories"] == 16
    dla = invoke("dt", "attribute", out, "--contrast", "mean", *common)
    assert dla["max_sum_error"] < 1e-5 and "minus the mean" in dla["metric"]
    att = invoke("dt", "attention", out, *common)
    assert [h["head"] for h in att["heads"]] == ["L0H0", "L0H1"]
    circ = invoke("dt", "circuits", out, "--top", 2, *common)
    assert len(circ["heads"]) == 2 and 0 <= circ["heads"][0]["rtg_in_ov"] <= 1
    patch = invoke("dt", "patch", out, "--high", 200, "--low", -200, "--min-gap", 0, *common)
    rows = {r["component"]: r for r in patch["rows"]}
    assert rows["nothing"]["recovered"]["mean"] == 0
    assert rows["residual stream before the unembed"]["recovered"]["mean"] == pytest.approx(1)
    bad = runner.invoke(app, ["dt", "attribute", str(out), "--contrast", "max"])
    assert bad.exit_code == 2 and "--contrast" in bad.output


def test_the_memory_tasks_instruction_pca_and_flip_test(tmp_path):
    from policylens.envs.minigrid import DIR_VEC, VIEW
    from policylens.train.dt import TrajectoryData

    data, out = tmp_path / "store", tmp_path / "run"
    invoke("dt", "collect", "--task", "memory", "--out", data, "--episodes", 16, "--json")
    # the view geometry: the object at the instruction square's view cell is the instruction
    frames, labels = TrajectoryData(data), A._memory_labels(str(data))
    view, xy = A._in_view(frames, labels["agent_pos"], (2, 1))
    rows = np.flatnonzero(view)
    cells = np.unique(xy[view], axis=0)
    assert 0 < len(rows) < len(view)
    d = frames.direction.numpy()[rows] % 4
    delta = np.array([2, 1]) - labels["agent_pos"][rows]
    ahead = (delta * np.asarray(DIR_VEC)[d]).sum(-1)
    side = (delta * np.asarray(DIR_VEC)[(d + 1) % 4]).sum(-1)
    obj = frames.obs.numpy()[rows, VIEW // 2 + side, VIEW - 1 - ahead, 0]
    assert np.array_equal(obj, np.where(labels["instruction"][rows] == 0, A.KEY, A.BALL))
    assert {tuple(c) for c in cells.tolist()} == set(
        zip((VIEW // 2 + side).tolist(), (VIEW - 1 - ahead).tolist(), strict=True)
    )
    invoke("train", "dt", "--data", data, "--out", out, "--steps", 3, "--context", 6,
           "--d-model", 16, "--d-mlp", 32, "--n-layers", 2, "--batch-size", 4, "--json")  # fmt: skip
    r = invoke("dt", "instruction", out, "--histories", 50, "--json")
    assert r["frames"]["key"] + r["frames"]["ball"] == len(rows)
    assert r["top2"] == pytest.approx(sum(r["explained"][:2])) and 0 < r["top2"] <= 1
    # the instruction's token embeddings, read off the model's own state embedding of frames:
    # a key (or ball) at the cell minus an empty square there, the rest of the frame held fixed
    model = load_run_dt(Run(out))
    tokens = []
    for x, y in cells.tolist():
        frame = torch.ones(1, 7, 7, 3, dtype=torch.uint8)  # empty squares
        with torch.no_grad():
            empty = model.embed_state(frame)
            for obj in (A.KEY, A.BALL):
                shown = frame.clone()
                shown[0, x, y, 0] = obj
                tokens.append((model.embed_state(shown) - empty)[0].double().numpy())
    np.testing.assert_allclose(
        A.instruction_tokens(model, cells).reshape(-1, 16).double().numpy(), tokens, atol=1e-5
    )
    centred = np.array(tokens) - np.mean(tokens, 0)
    s = np.linalg.svd(centred, compute_uv=False) ** 2
    assert r["cells"] == len(cells)
    np.testing.assert_allclose(r["token_explained"], (s / s.sum())[:5], atol=1e-5)
    # Bloom et al.'s construct, as their app computes it (sklearn's StandardScaler over each
    # unit-length column's entries, then sklearn's PCA over the columns)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    seen = [int((np.all(xy[view] == c, axis=1)).sum()) for c in cells.tolist()]
    top_cells = [cells[i].tolist() for i in sorted(range(len(cells)), key=lambda i: -seen[i])[:2]]
    assert r["anchor_cells"] == top_cells
    weight = model.state_embed.weight.detach().double().numpy()
    offsets = model._channel_offsets  # the column of a one-hot key (ball) at a cell: offset + 5 (6)
    cols = np.stack([weight[:, offsets[x, y, 0] + obj] for x, y in top_cells
                     for obj in (A.KEY, A.BALL)])  # fmt: skip
    cols = cols / np.linalg.norm(cols, axis=1, keepdims=True)
    ratio = PCA().fit(StandardScaler().fit_transform(cols.T).T).explained_variance_ratio_
    np.testing.assert_allclose(r["anchor_explained"][:3], ratio[:3], atol=1e-6)
    assert r["anchor_top2"] == pytest.approx(ratio[:2].sum(), abs=1e-6)
    assert 2 / 3 <= r["anchor_null"]["median"] <= r["anchor_null"]["p95"] < 1  # 3 axes, 4 points
    for key in ("flipped_token", "flipped_token_control"):
        assert r[key]["n"] == r["decisions"] and 0 <= r[key]["rate"] <= 1
    assert r["decisions"] >= 1 and r["accuracy"]["n"] == r["decisions"]
    assert 0 <= r["flipped"]["rate"] <= 1 and 0 <= r["flipped_control"]["rate"] <= 1
    bad = runner.invoke(app, ["dt", "instruction", str(out), "--data", str(tmp_path / "nope")])
    assert bad.exit_code == 2
