"""PPO trainer and run folders: schedule, metrics, checkpoints, exact resume, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policylens.runs import Run, find_runs
from policylens.train.ppo import (
    PPOConfig,
    checkpoint_updates,
    compute_dtype,
    gae,
    sample_actions,
    train_ppo,
)
from policylens.worlds.maze import ENV_ID as MAZE_ID

# threads pinned: a run repeats bit for bit only with a fixed thread count (train/threads.py)
TINY = dict(
    total_steps=16 * 32 * 6, num_envs=16, num_steps=32, checkpoints=3, resume_every=2, threads=1
)


def tiny(**kw) -> PPOConfig:
    return PPOConfig(**{**TINY, "env_id": MAZE_ID, "env_kwargs": {"max_steps": 40}, **kw})


def test_sampled_actions_follow_the_softmax_and_the_seed():
    logits = np.array([[0.0, 1.0, -1.0, 2.0], [5.0, -30.0, 0.0, 0.0]], dtype=np.float32)
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    rows = np.repeat(logits, 20_000, axis=0)
    action, logp = sample_actions(rows, torch.Generator().manual_seed(0))
    again, _ = sample_actions(rows, torch.Generator().manual_seed(0))
    assert np.array_equal(action, again)
    np.testing.assert_allclose(logp, np.log(probs[np.repeat([0, 1], 20_000), action]), rtol=1e-5)
    for r in range(2):
        freq = np.bincount(action[r * 20_000 : (r + 1) * 20_000], minlength=4) / 20_000
        # 0.01 is at least 2.9 binomial standard deviations here
        np.testing.assert_allclose(freq, probs[r], atol=0.01)
    assert (action[20_000:] != 1).all()  # a probability of 1e-15 is not drawn


def test_gae_matches_a_hand_computation():
    rewards = np.array([[0, 1], [1, 0], [0, 2]], np.float32)  # (T=3 steps, 2 envs)
    values = np.array([[1, 0.5], [2, 1], [3, 0]], np.float32)
    dones = np.array([[0, 0], [1, 0], [0, 0]], np.float32)  # env 0's episode ends at step 1
    next_value = np.array([4, 1], np.float32)
    # gamma 0.9, lambda 0.5: delta_t = r_t + 0.9 V_t+1 (0 after a done) - V_t; A_t = delta_t +
    # 0.45 A_t+1, the trace cut at a done
    env0 = [0.8 + 0.45 * -1, 1 - 2, 0 + 0.9 * 4 - 3]
    env1 = [1.4 + 0.45 * (-1 + 0.45 * 2.9), -1 + 0.45 * 2.9, 2 + 0.9 * 1 - 0]
    adv = gae(rewards, values, dones, next_value, 0.9, 0.5)
    assert adv.dtype == np.float32 and adv.shape == (3, 2)
    np.testing.assert_allclose(adv, np.array([env0, env1]).T, rtol=1e-6)
    one = gae(rewards[:, 1], values[:, 1], dones[:, 1], 1.0, 0.9, 0.5)  # one episode, (T,)
    np.testing.assert_allclose(one, env1, rtol=1e-6)
    np.testing.assert_allclose(  # lambda 0: one-step TD errors
        gae(rewards[:, 1], values[:, 1], dones[:, 1], 1.0, 0.9, 0.0), [1.4, -1, 2.9], rtol=1e-6
    )


def hand_gae(rewards, values, terminated, truncated, final_values, next_value, gamma, lam):
    """The recursion written out per env with its endings explicit: a terminated step follows
    nothing, a truncated one follows its final observation's value, the rollout's last step
    (neither) follows ``next_value``; either ending cuts the trace."""
    T, N = rewards.shape
    out = np.zeros((T, N))
    for n in range(N):
        following_adv = 0.0
        for t in reversed(range(T)):
            if terminated[t, n]:
                nxt, following_adv = 0.0, 0.0
            elif truncated[t, n]:
                nxt, following_adv = final_values[t, n], 0.0
            else:
                nxt = next_value[n] if t == T - 1 else values[t + 1, n]
            out[t, n] = rewards[t, n] + gamma * nxt - values[t, n] + gamma * lam * following_adv
            following_adv = out[t, n]
    return out


def test_gae_of_a_rollouts_endings_bootstraps_only_from_what_follows():
    """train_ppo's convention (a truncated step's reward carries gamma x its final observation's
    value, and every ended step is done) against the recursion above, on a rollout whose last
    step is, per env: terminated, truncated, running on, and truncated mid-rollout then running."""
    gamma, lam = 0.9, 0.8
    rewards = np.array([[0.5, 0, 1, 0], [0, 1, 0, 2], [1, 0.5, 0, 0]], np.float64)  # (T=3, N=4)
    values = np.array([[1, 2, 0.5, 1], [2, 1, 1, 3], [0.5, 1.5, 2, 0.25]], np.float64)
    terminated = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    truncated = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], bool)
    final_values = np.where(truncated, [[0, 0, 0, 0], [0, 0, 0, 7.0], [0, 5.0, 0, 0]], 0.0)
    next_value = np.array([9.0, 9.0, 4.0, 6.0])  # the next episodes' first observations
    expected = hand_gae(rewards, values, terminated, truncated, final_values, next_value, gamma,
                        lam)  # fmt: skip
    # the last step by hand: terminated r - V; truncated r + g V_final - V; running r + g V' - V
    np.testing.assert_allclose(expected[-1], [1 - 0.5, 0.5 + 0.9 * 5 - 1.5, 0 + 0.9 * 4 - 2,
                                              0 + 0.9 * 6 - 0.25])  # fmt: skip
    # env 3 truncated at step 1: its step 1 follows V_final = 7, not step 2's V, and the trace
    # from step 2 does not reach it
    assert expected[1, 3] == pytest.approx(2 + 0.9 * 7 - 3)
    as_trained = rewards + gamma * final_values * truncated
    adv = gae(as_trained.astype(np.float32), values.astype(np.float32),
              (terminated | truncated).astype(np.float32), next_value.astype(np.float32), gamma,
              lam)  # fmt: skip
    np.testing.assert_allclose(adv, expected, rtol=1e-6, atol=1e-6)


def test_checkpoint_schedule_is_log_spaced_and_includes_ends():
    ups = checkpoint_updates(1000, 10, "log")
    assert ups[0] == 0 and ups[-1] == 1000
    gaps = [b - a for a, b in zip(ups[1:], ups[2:], strict=False)]
    assert gaps == sorted(gaps)  # denser early than late
    assert checkpoint_updates(10, 3, "linear") == [0, 1, 6, 10]


def test_run_folder_metrics_and_checkpoints(tmp_path):
    run = train_ppo(tiny(), tmp_path / "r", progress=False)
    steps = [s for s, _ in run.checkpoints()]
    assert steps[0] == 0 and steps[-1] == TINY["total_steps"]
    rows = run.metrics()
    assert len(rows) == 6
    for col in ("step", "return", "length", "success", "policy_loss", "value_loss", "entropy",
                "explained_variance", "steps_per_s", "path_ratio"):  # fmt: skip
        assert col in rows[0]
    agent = run.load_agent()
    logits, value = agent(torch.zeros(2, 3, 9, 9, dtype=torch.uint8))
    assert logits.shape == (2, 4) and value.shape == (2,)
    assert (run.path / "DONE").exists()
    assert [r.path for r in find_runs(tmp_path)] == [run.path]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_end(tmp_path):
    full = train_ppo(tiny(), tmp_path / "full", progress=False)
    part = train_ppo(tiny(), tmp_path / "part", progress=False, stop_after_updates=3)
    assert not (part.path / "DONE").exists()
    part = train_ppo(tiny(), tmp_path / "part", resume=True, progress=False)
    a = load_file(full.checkpoint()[1])
    b = load_file(part.checkpoint()[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(
        [r["return"] for r in full.metrics()], [r["return"] for r in part.metrics()]
    )


def test_existing_run_is_not_overwritten(tmp_path):
    train_ppo(tiny(total_steps=512, num_envs=16, num_steps=32), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train_ppo(tiny(total_steps=512, num_envs=16, num_steps=32), tmp_path / "r", progress=False)


def test_resume_with_other_config_is_refused(tmp_path):
    train_ppo(tiny(total_steps=512), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="another config"):
        train_ppo(tiny(total_steps=512, seed=3), tmp_path / "r", resume=True, progress=False)


def test_corrupt_resume_state_is_reported(tmp_path):
    run = train_ppo(tiny(total_steps=1024), tmp_path / "r", progress=False)
    (run.path / "resume.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        Run(run.path).load_resume_state()


def test_partial_metrics_line_is_ignored(tmp_path):
    run = train_ppo(tiny(total_steps=1024), tmp_path / "r", progress=False)
    n = len(run.metrics())
    with open(run.path / "metrics.csv", "a") as f:
        f.write("99999,1.0,3")  # a kill in the middle of a line
    assert len(run.metrics()) == n


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(total_steps=10), "smaller than one rollout"),
        (dict(num_minibatches=7), "must divide"),
        (dict(gamma=1.5), "gamma"),
        (dict(checkpoint_spacing="cubic"), "checkpoint_spacing"),
        (dict(precision="fp8"), "precision must be 'auto', 'float32' or 'bfloat16'"),
    ],
)
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kw)


def test_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a policylens run"):
        Run(tmp_path)


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as the Linux kernel reports them (None off Linux/x86)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None
    )
    return set(flags) if flags is not None else None


def test_precision_resolves_to_a_compute_dtype():
    assert compute_dtype("float32") == torch.float32
    assert compute_dtype("bfloat16") == torch.bfloat16
    assert compute_dtype("auto", convolutional=False) == torch.float32  # MLPs: bf16 is slower
    assert compute_dtype("bfloat16", convolutional=False) == torch.bfloat16  # asked for: given
    assert compute_dtype("float32", convolutional=False) == torch.float32


@pytest.mark.parametrize("avx512_bf16, amx", [(False, False), (True, False), (False, True),
                                              (True, True)])  # fmt: skip
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    want = torch.bfloat16 if avx512_bf16 or amx else torch.float32
    assert compute_dtype("auto") == want
    assert compute_dtype("auto", convolutional=False) == torch.float32
    assert compute_dtype("float32") == torch.float32 and compute_dtype("bfloat16") == torch.bfloat16


def test_auto_precision_follows_this_cpus_flags():
    """Oracle independent of torch's CPU probes: the kernel's flags in /proc/cpuinfo."""
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    native = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert compute_dtype("auto") == (torch.bfloat16 if native else torch.float32)


def test_bfloat16_training_keeps_float32_weights_and_tracks_float32(tmp_path):
    """bf16 autocast changes the arithmetic, not the run: float32 weights, finite losses, and
    the first update's losses close to a float32 run's from the same seed."""
    runs = {
        p: train_ppo(tiny(precision=p), tmp_path / p, progress=False)
        for p in ("float32", "bfloat16")
    }
    assert runs["bfloat16"].config["compute_dtype"] == "bfloat16"
    assert runs["float32"].config["compute_dtype"] == "float32"
    weights = load_file(str(runs["bfloat16"].checkpoints()[-1][1]))
    assert all(w.dtype == torch.float32 for w in weights.values())
    first = {p: run.metrics()[0] for p, run in runs.items()}
    for key in ("value_loss", "entropy"):
        assert np.isfinite(first["bfloat16"][key])
        assert first["bfloat16"][key] == pytest.approx(first["float32"][key], rel=0.05)


def test_thread_governor_follows_the_free_cores(monkeypatch):
    """Alone it keeps the most threads; with another process busy on all but one core it drops
    to one; a pinned count never changes."""
    from policylens.train import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads, "busy_seconds", lambda cores: clock["busy"])
    before = torch.get_num_threads()
    try:
        governor = threads.ThreadGovernor(0, every_s=2.0)
        assert governor.current == 2 and torch.get_num_threads() == 2

        def elapse(seconds: float, own_cores: float, other_cores: float) -> int:
            clock["t"] += seconds
            clock["own"] += own_cores * seconds
            clock["busy"] += (own_cores + other_cores) * seconds
            return governor.update()

        assert elapse(3, own_cores=2, other_cores=0.1) == 2  # alone
        assert elapse(1, own_cores=1.3, other_cores=0.7) == 2  # not yet time to look
        assert elapse(3, own_cores=1.3, other_cores=0.7) == 1  # a busy neighbour
        assert torch.get_num_threads() == 1
        assert elapse(3, own_cores=1, other_cores=1) == 1
        assert elapse(3, own_cores=1, other_cores=0) == 2  # it left
        pinned = threads.ThreadGovernor(2)
        clock["t"] += 10
        clock["busy"] += 20
        assert pinned.update() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        threads.ThreadGovernor(-1)


def test_resume_may_change_threads_but_not_what_is_learned(tmp_path):
    part = train_ppo(tiny(threads=0), tmp_path / "r", progress=False,
                     stop_after_updates=1)  # fmt: skip
    assert not part.done
    run = train_ppo(tiny(threads=2), tmp_path / "r", resume=True,
                    progress=False)  # fmt: skip
    assert run.done and {r["threads"] for r in run.metrics()} <= {1.0, 2.0}
    with pytest.raises(ValueError, match="another config"):
        train_ppo(tiny(threads=1, seed=9), tmp_path / "r", resume=True,
                  progress=False)  # fmt: skip


def test_init_weights_starts_a_new_run_from_a_trained_one(tmp_path):
    first = train_ppo(tiny(), tmp_path / "a", progress=False)
    _, last = first.checkpoint()
    warm = train_ppo(tiny(init_weights=str(last)), tmp_path / "b", progress=False,
                     stop_after_updates=1)  # fmt: skip
    start = load_file(warm.checkpoints()[0][1])
    for name, weight in load_file(last).items():
        assert torch.equal(start[name], weight), name
    # a resumed run takes its weights from resume.pt, whatever file a new one would start from
    resumed = train_ppo(tiny(), tmp_path / "b", resume=True, progress=False)
    assert resumed.done
    with pytest.raises(ValueError, match=r"mis-shaped parameters .*conv\.weight"):
        train_ppo(tiny(init_weights=str(last), arch_kwargs={"channels": 8}), tmp_path / "c",
                  progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="init_from or init_weights, not both"):
        train_ppo(tiny(init_weights=str(last)), tmp_path / "d", progress=False, init_from=last)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
