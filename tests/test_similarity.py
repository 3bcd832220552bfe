"""Representation similarity: CKA (linear, RBF, unbiased) and TwoNN against tdhook's estimators
and written-out references, known answers, the study and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tdhook.latent import CkaEstimator, TwoNnDimensionEstimator
from tensordict import TensorDict
from typer.testing import CliRunner

from policylens.lenses.similarity import (
    RepresentationSet,
    centred_gram,
    cka,
    cka_matrix,
    hsic,
    twonn_dimension,
)


def tdhook_cka(x: np.ndarray, y: np.ndarray) -> float:
    td = TensorDict({"data_a": torch.tensor(x), "data_b": torch.tensor(y)}, batch_size=[])
    return float(CkaEstimator()(td)["cka"])


def tdhook_twonn(x: np.ndarray) -> float:
    td = TensorDict({"data": torch.tensor(x)}, batch_size=[])
    return float(TwoNnDimensionEstimator()(td)["dimension"])


def reps(seed: int = 0, n: int = 200) -> list[np.ndarray]:
    """Related and unrelated representations, with fewer and more features than rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    return [
        x,
        np.tanh(x @ rng.normal(size=(20, 40))) + 0.3 * rng.normal(size=(n, 40)),
        rng.normal(size=(n, 300)),  # more features than rows
        np.abs(x[:, :3]) ** 1.5,
        x @ rng.normal(size=(20, 1)),
    ]


# ---------------------------------------------------------------------------------- oracles
def kornblith_rbf_cka(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """Kornblith et al.'s reference code (gram_rbf, center_gram, cka), written out."""

    def gram_rbf(a):
        dots = a @ a.T
        sq = np.diag(dots)
        d2 = np.maximum(-2 * dots + sq[:, None] + sq[None, :], 0)
        return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))

    def centre(g):
        g = g - g.mean(axis=0, keepdims=True)
        return g - g.mean(axis=1, keepdims=True)

    k, l = centre(gram_rbf(x - x.mean(0))), centre(gram_rbf(y - y.mean(0)))  # noqa: E741
    return float((k * l).sum() / np.sqrt((k * k).sum() * (l * l).sum()))


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), eq. 5: the unbiased HSIC from Gram matrices with zeroed diagonals."""
    n = len(k)
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float(
        (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
         - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))
    )  # fmt: skip


def song_unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return song_unbiased_hsic(k, l) / math.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l, l))


def test_linear_cka_equals_tdhook():
    rs = reps()
    for i, a in enumerate(rs):
        for b in rs[i:]:
            assert cka(a, b) == pytest.approx(tdhook_cka(a, b), abs=1e-6)
    matrix = cka_matrix(rs)
    theirs = np.array([[tdhook_cka(a, b) for b in rs] for a in rs])
    assert np.abs(matrix - theirs).max() <= 1e-6
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1)


def test_rbf_cka_equals_kornblith_reference():
    # tdhook 0.3 has the linear kernel only ("Only 'linear' is implemented"): the oracle here is
    # Kornblith et al.'s own formulas, written out above.
    rs = reps(1, n=150)
    for fraction in (0.4, 0.8, 1.0):
        for a, b in [(rs[0], rs[1]), (rs[1], rs[2]), (rs[0], rs[3])]:
            ours = cka(a, b, kernel="rbf", rbf_fraction=fraction)
            assert ours == pytest.approx(kornblith_rbf_cka(a, b, fraction), abs=1e-6)
    m = cka_matrix(rs[:3], kernel="rbf", rbf_fraction=0.5)
    assert m[0, 1] == pytest.approx(kornblith_rbf_cka(rs[0], rs[1], 0.5), abs=1e-6)


def test_unbiased_cka_equals_song_et_al_formula():
    # tdhook has no unbiased estimator; the oracle is Song et al.'s trace formula.
    rs = reps(2, n=120)
    for a, b in [(rs[0], rs[1]), (rs[1], rs[2]), (rs[0], rs[4])]:
        assert cka(a, b, unbiased=True) == pytest.approx(song_unbiased_cka(a, b), abs=1e-6)
        k = centred_gram(a, unbiased=True)
        assert hsic(k, k, unbiased=True) == pytest.approx(
            song_unbiased_hsic(a @ a.T, a @ a.T), rel=1e-9
        )
    m = cka_matrix(rs, unbiased=True)
    assert m[1, 2] == pytest.approx(song_unbiased_cka(rs[1], rs[2]), abs=1e-6)


def test_twonn_equals_tdhook():
    rng = np.random.default_rng(3)
    cases = [
        rng.normal(size=(400, 5)),
        rng.normal(size=(300, 3)) @ rng.normal(size=(3, 30)),
        np.concatenate([x8 := rng.normal(size=(200, 8)), x8[:70]]),  # duplicates are skipped
        np.repeat(rng.normal(size=(50, 4)), 2, axis=0),  # every ratio 1: tdhook's fit gives 0
        rng.random(size=(250, 2)),
    ]
    for x in cases:
        assert twonn_dimension(x) == pytest.approx(tdhook_twonn(x), abs=1e-6)


# ---------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("kernel,unbiased", [("linear", False), ("linear", True), ("rbf", False),
                                             ("rbf", True)])  # fmt: skip
def test_cka_is_one_under_rotation_and_affine_maps(kernel, unbiased):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 12)) @ rng.normal(size=(12, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert cka(x, x @ q, kernel, unbiased) == pytest.approx(1, abs=1e-9)
    assert cka(x, 3.5 * x + rng.normal(size=12), kernel, unbiased) == pytest.approx(1, abs=1e-9)
    assert cka_matrix([x, x @ q, -0.2 * x + 7], kernel=kernel, unbiased=unbiased) == pytest.approx(
        np.ones((3, 3)), abs=1e-9
    )


def test_independent_data_unbiased_cka_near_zero_biased_not():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(500, 100)), rng.normal(size=(500, 100))
    # Biased linear CKA of independent data is about sqrt(p q) / n = 0.2 here; unbiased about 0.
    assert cka(x, y) > 0.15
    assert abs(cka(x, y, unbiased=True)) < 0.01
    assert abs(cka(x, y, kernel="rbf", unbiased=True)) < 0.01


@pytest.mark.parametrize("d", [3, 7])
def test_twonn_recovers_the_dimension_of_a_linear_subspace(d):
    # Gaussian points on a d-dimensional subspace of R^50: TwoNN within 10% of d (n = 2000).
    rng = np.random.default_rng(d)
    basis, _ = np.linalg.qr(rng.normal(size=(50, d)))
    x = rng.normal(size=(2000, d)) @ basis.T + 4.0
    assert twonn_dimension(x) == pytest.approx(d, rel=0.1)
    assert twonn_dimension(x, discard_fraction=0.1) == pytest.approx(d, rel=0.1)


def test_blocks_sets_and_dtypes_agree():
    rs = reps(6, n=100)
    whole = cka_matrix(rs)
    assert np.abs(cka_matrix(rs, max_bytes=1) - whole).max() < 1e-12  # one Gram at a time
    assert np.abs(cka_matrix(rs[:2], rs[2:], max_bytes=1) - whole[:2, 2:]).max() < 1e-12
    s = RepresentationSet(100)
    for i, r in enumerate(rs):
        s.add(i, r)
    assert np.abs(s.cka() - whole).max() < 1e-12
    assert s.dimensions[0] == pytest.approx(twonn_dimension(rs[0]), abs=1e-9)
    bf16 = [torch.tensor(r, dtype=torch.bfloat16) for r in rs]
    as64 = [b.double().numpy() for b in bf16]
    assert np.abs(cka_matrix(bf16) - cka_matrix(as64)).max() < 1e-12
    constant = np.ones((100, 3))
    assert math.isnan(cka(constant, rs[0], unbiased=True))
    assert math.isnan(cka_matrix([constant, rs[0]])[0, 1])


def test_bad_input_errors():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="Unknown kernel 'rfb'.*rbf"):
        cka(x, x, kernel="rfb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same inputs; got 10 and 9 rows"):
        cka(x, x[:9])
    with pytest.raises(ValueError, match="rbf_fraction must be a positive number"):
        cka_matrix([x], kernel="rbf", rbf_fraction=0)
    with pytest.raises(ValueError, match="at least 3 points with two distinct neighbours"):
        twonn_dimension(np.zeros((10, 3)))
    from policylens.studies.similarity import SimilarityOptions, pick_checkpoints

    with pytest.raises(ValueError, match="samples must be an integer >= 10"):
        SimilarityOptions(samples=5)
    with pytest.raises(ValueError, match="Unknown kernel"):
        SimilarityOptions(kernel="cosine")
    assert pick_checkpoints([0, 1, 2, 4, 8, 16, 32], 3) == [0, 4, 32]
    assert pick_checkpoints([0, 5], 10) == [0, 5] and pick_checkpoints([0, 5, 9], 0) == [0, 5, 9]


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def two_tiny_maze_runs(tmp_path_factory):
    from policylens.train.ppo import train_ppo
    from policylens.worlds.maze import MazeRecipe

    root = tmp_path_factory.mktemp("similarity")
    runs = []
    for seed in (0, 1):
        config = MazeRecipe(total_steps=2 * 4096, world_size=7, precision="float32",
                            seed=seed).config()  # fmt: skip
        config = dataclasses.replace(config, threads=1, checkpoints=3)
        runs.append(train_ppo(config, root / f"seed{seed}", progress=False))
    return runs


@pytest.mark.slow
def test_cli_similarity_end_to_end(two_tiny_maze_runs):
    from policylens.cli import app

    run, other = two_tiny_maze_runs
    runner = CliRunner()
    args = ["similarity", str(run.path), "--other", str(other.path), "--checkpoints", "3",
            "--samples", "120", "--episodes", "20", "--hook", "hook_conv", "--hook", "hook_out",
            "--hook", "hook_value", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    steps = [s for s, _ in run.checkpoints()]
    from policylens.studies.similarity import pick_checkpoints

    assert len(steps) >= 3 and data["steps"] == pick_checkpoints(steps, 3)
    n = len(data["steps"]) * 3
    assert np.array(data["cka"], dtype=float).shape == (n, n)
    assert np.allclose(np.diag(np.array(data["cka"], dtype=float)), 1)
    assert np.array(data["cross"], dtype=float).shape == (n, len(data["other_steps"]) * 3)
    assert set(data["dimension"]) == {"hook_conv", "hook_out", "hook_value"}
    saved = run.path / "analysis" / "similarity" / f"cka_linear_vs_{other.name}.json"
    assert data["meta"]["json"] == str(saved)
    on_disk = json.loads(saved.read_text())
    assert on_disk["cka"] == data["cka"] and on_disk["hooks"] == data["hooks"]
    html = saved.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") == 2
    # The same layer of the same run compared with itself is 1; the saved matrix is what the
    # lens computes on the same observations.
    from policylens.studies.similarity import SimilarityOptions, observations

    options = SimilarityOptions(samples=120, episodes=20, hooks=["hook_out"])
    obs = observations(run, options)
    assert len(obs) == data["samples"]
    from policylens.lenses.similarity import layer_cka

    last = run.load_agent()
    direct = layer_cka(last, obs, ["hook_conv", "hook_out", "hook_value"],
                       other=other.load_agent())  # fmt: skip
    cross = np.array(data["cross_layers_at_last"], dtype=float)
    assert np.abs(direct - cross).max() < 1e-6
    # Unbiased RBF through the CLI, table output; bad input is one sentence.
    table = runner.invoke(app, ["similarity", str(run.path), "--kernel", "rbf", "--unbiased",
                                "--checkpoints", "2", "--samples", "60", "--episodes", "20",
                                "--no-dimension"])  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "CKA of each layer with its final self" in table.output
    assert (run.path / "analysis" / "similarity" / "cka_rbf_unbiased.json").is_file()
    bad = runner.invoke(app, ["similarity", str(run.path), "--kernel", "cosine"])
    assert bad.exit_code == 2 and "Unknown kernel 'cosine'" in bad.output
    bad = runner.invoke(app, ["similarity", str(run.path), "--hook", "hook_outt"])
    assert bad.exit_code == 2 and "hook_out" in bad.output
