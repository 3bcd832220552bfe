"""The rook-checkmate world of DuPlessie's SAE-on-DQN study: king and rook against a lone king.

The agent plays white (king and rook) on a small board (5 x 5 by default) against a scripted
black king and must deliver checkmate. Coordinates are ``(row, col)`` with row 0 at the top; a
square's index is ``row * board_size + col``.

Observation: one-hot planes ``(white king, white rook, black king)`` over the squares, flat
``(3 * n * n,)`` (75 values on 5 x 5) or ``(3, n, n)``; the rook plane is empty once it is taken.

Actions (``8 + 4 * (n - 1)``; 24 on 5 x 5): 0-7 move the king N, NE, E, SE, S, SW, W, NW;
then the rook moves up, down, left, right by 1..n-1 squares (on 5 x 5: 8-11 up, 12-15 down,
16-19 left, 20-23 right). ``ACTION_NAMES`` / :func:`action_names` spell them out.

Rewards: ``+100`` checkmate; ``-100`` for an illegal move (off the board, king next to the black
king or onto the rook, rook through or onto a piece), a blunder (the black king takes the rook)
or stalemate -- each ends the episode; ``-1`` for any other move. Episodes are truncated after
``max_steps`` white moves. After each legal white move the black king replies: ``"random"``
(uniform among its legal moves), ``"greedy"`` (takes the rook when it can, else steps toward the
centre) or ``"chase"`` (DuPlessie's scripted opponent: toward the rook, then the centre).

``rules="duplessie"`` plays DuPlessie's own environment (``envs/chess_env.py`` and
``train_dqn.py`` of github.com/ColemanDuPlessie/Simple-Chess-RL-SAE), so Q-networks trained
there act here unchanged. What differs from the default rules:

- observation planes ``(white rook, white king, black king)`` (his one-hot ``wRook``, ``wKing``,
  ``bKing`` concatenated; square index ``x + y * n`` with ``x`` the column and ``y`` the row, as
  here);
- actions: king 0-7 move E, SE, S, SW, W, NW, N, NE (his ``[1, 0], [1, 1], [0, 1], ...`` in
  ``(x, y)``, i.e. the default numbering turned by two steps), then the rook right, down, left,
  up by 1..n-1 squares (on 5 x 5: 8-11 right, 12-15 down, 16-19 left, 20-23 up; the default
  has up first and right last);
- black plays ``"chase"`` (his "smart" opponent, used to train his published networks; his
  ``random_opponent=True`` is ``opponent="random"``), the rook hangs by ``"hanging"`` (his
  ``_can_black_win``: the game ends -100 when white leaves the rook next to the black king and
  undefended), and the move limit loses: the 50th white move that does not end the game gives
  -100 and ends it (``terminated``, outcome "truncated"); the default truncates at -1;
- starts: the rook on a uniform square, the white king on a uniform other one, the black king
  on a uniform square where it is not attacked (his rejection sampling), not uniform over
  positions;
- a white king moving next to the black king is "illegal" here and a blunder there: both -100
  and the end. Rewards are otherwise the same (+100 mate, -100 illegal, stalemate or blunder,
  -1 a move; his training divided them by 100, like the DQN recipe's ``reward_scale``).

``info``'s action masks are in the rules' numbering; :func:`rules_actions` maps it to the
default's and :func:`position_from_obs` reads a position from either observation.

Ground-truth labels in ``info`` every step (see :meth:`RookEndgameEnv.step`) cover check,
attacked squares, the black king's distance to the edge, piece positions, the outcome and masks
of legal, mating and safe white moves. Every position's labels are computed once and cached per
board size, so stepping costs a few dictionary lookups. :class:`RookEndgameTablebase` solves the
endgame exactly (distance to mate against best defence); :class:`ScriptedEndgamePlayer` is a
reference agent (one-ply "mate if you can, else a random safe move", or perfect play).

Why one file of this length: the board encoding, move labels, tablebase and scripted players
share one cached position table; split, each part would reach into the others' internals.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policylens.errors import check_known, unknown_message

KING_DIRS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
"""Row/col deltas of king actions 0-7: N, NE, E, SE, S, SW, W, NW."""
KING_DIR_NAMES = ("n", "ne", "e", "se", "s", "sw", "w", "nw")
ROOK_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""Row/col deltas of the rook's four directions, in action order: up, down, left, right."""
ROOK_DIR_NAMES = ("up", "down", "left", "right")
WHITE_KING, WHITE_ROOK, BLACK_KING = 0, 1, 2
"""Plane order of the observation."""
CAPTURED = -1
"""Square index of a rook that has been taken."""
NO_POS = (-1, -1)
"""``(row, col)`` label of a rook that has been taken."""
OUTCOMES = ("", "checkmate", "illegal", "blunder", "stalemate", "truncated")
"""Values of ``info["outcome"]``; "" while the episode goes on."""
OPPONENTS = ("random", "greedy", "chase")
RULES = ("policylens", "duplessie")
"""Rule sets of :class:`RookEndgameConfig` (``rules``); see the module doc for what differs."""
PLANE_PIECES = {
    "policylens": (WHITE_KING, WHITE_ROOK, BLACK_KING),
    "duplessie": (WHITE_ROOK, WHITE_KING, BLACK_KING),
}
"""The piece of each observation plane, per rule set."""
DUPLESSIE_KING_DIRS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
"""Row/col deltas of DuPlessie's king actions 0-7 (his ``(x, y)`` deltas with row = y)."""
DUPLESSIE_ROOK_DIRS = ((0, 1), (1, 0), (0, -1), (-1, 0))
"""Row/col deltas of DuPlessie's rook directions, in his action order: right, down, left, up."""

Position = tuple[int, int, int]
"""(white king, white rook, black king) square indices; the rook is ``CAPTURED`` once taken."""
RC = tuple[int, int]


def rules_actions(board_size: int = 5, rules: str = "policylens") -> np.ndarray:
    """For each action of ``rules``, the same move in the default numbering: ``(num_actions,)``.

    ``mask[rules_actions(n, rules)]`` turns a default-numbered mask into the rules' numbering.
    """
    check_known([rules], RULES, "rook endgame rules")
    n = board_size
    if rules == "policylens":
        return np.arange(8 + 4 * (n - 1))
    kings = [KING_DIRS.index(d) for d in DUPLESSIE_KING_DIRS]
    rooks = [
        8 + ROOK_DIRS.index(d) * (n - 1) + k for d in DUPLESSIE_ROOK_DIRS for k in range(n - 1)
    ]
    return np.array(kings + rooks, dtype=np.int64)


def action_names(board_size: int = 5, rules: str = "policylens") -> tuple[str, ...]:
    """Readable names of the actions of ``rules``, e.g. ``king_ne`` or ``rook_left_2``."""
    kings = tuple(f"king_{d}" for d in KING_DIR_NAMES)
    rooks = tuple(f"rook_{d}_{k}" for d in ROOK_DIR_NAMES for k in range(1, board_size))
    names = kings + rooks
    return tuple(names[a] for a in rules_actions(board_size, rules))


def position_from_obs(obs: np.ndarray, rules: str = "policylens") -> tuple[RC, RC, RC]:
    """(white king, white rook, black king) ``(row, col)`` from an observation of ``rules``
    (flat or planes; the rook ``(-1, -1)`` when its plane is empty)."""
    check_known([rules], RULES, "rook endgame rules")
    planes = np.asarray(obs).reshape(3, -1)
    n = int(round(np.sqrt(planes.shape[1])))
    found: dict[int, RC] = {}
    for plane, piece in zip(planes, PLANE_PIECES[rules], strict=True):
        idx = np.flatnonzero(plane > 0.5)
        found[piece] = (int(idx[0]) // n, int(idx[0]) % n) if len(idx) else NO_POS
    return found[WHITE_KING], found[WHITE_ROOK], found[BLACK_KING]


ACTION_NAMES = action_names(5)


@dataclass(frozen=True)
class RookEndgameConfig:
    """Options of the rook endgame; every field is a keyword of ``gymnasium.make``."""

    rules: str = "policylens"
    """"policylens" or "duplessie" (DuPlessie's encoding, action numbering, starts and move-limit
    loss; see the module doc). It also sets the defaults of opponent, blunder_rule and
    timeout_reward."""
    opponent: str | None = None
    """Black's policy: "random", "greedy" (take the rook, else toward the centre) or "chase"
    (None: "random", or "chase" under DuPlessie's rules)."""
    max_steps: int = 50
    """Episodes end after this many white moves (DuPlessie used 50)."""
    timeout_reward: float | None = None
    """None: the episode is truncated at ``max_steps`` (the last move earns ``step_reward``); a
    number: the move limit is a loss, ending the episode (terminated) with this reward
    (DuPlessie's rules: -100)."""
    board_size: int = 5
    """Side of the square board (4..6; per-position caches grow as n**6); the study used 5."""
    obs_mode: str = "flat"
    """"flat": ``(3 * n * n,)`` one-hot vector (for MLPs); "planes": ``(3, n, n)`` (for CNNs)."""
    obs_dtype: str = "uint8"
    """"uint8" or "float32"."""
    blunder_rule: str | None = None
    """"capture": a blunder ends the episode when black takes the rook; "hanging": as soon as a
    white move leaves the rook where the black king can take it (DuPlessie's rule). None: the
    rules' default ("capture", or "hanging" under DuPlessie's rules)."""
    mate_reward: float = 100.0
    illegal_reward: float = -100.0
    blunder_reward: float = -100.0
    stalemate_reward: float = -100.0
    step_reward: float = -1.0
    """Reward of every move that does not end the episode (also the truncating one)."""
    tablebase_labels: bool = False
    """Add ``mate_distance`` and ``optimal_actions`` to ``info`` (builds the tablebase once)."""
    render_mode: str | None = None
    """"ansi" (text board) or "rgb_array" (picture) for ``render()``."""

    def __post_init__(self) -> None:
        if self.rules not in RULES:
            raise ValueError(unknown_message("rook endgame rules", self.rules, RULES))
        duplessie = self.rules == "duplessie"
        defaults = {
            "opponent": "chase" if duplessie else "random",
            "blunder_rule": "hanging" if duplessie else "capture",
            "timeout_reward": -100.0 if duplessie else None,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: resolve the rules' default once
        problems = []
        if self.opponent not in OPPONENTS:
            problems.append(unknown_message("opponent", str(self.opponent), OPPONENTS).rstrip("."))
        if not 4 <= self.board_size <= 6:
            problems.append(f"board_size must be in 4..6, got {self.board_size}")
        if self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.obs_mode not in ("flat", "planes"):
            problems.append(f"obs_mode must be 'flat' or 'planes', got {self.obs_mode!r}")
        if self.obs_dtype not in ("uint8", "float32"):
            problems.append(f"obs_dtype must be 'uint8' or 'float32', got {self.obs_dtype!r}")
        if self.blunder_rule not in ("capture", "hanging"):
            problems.append(
                f"blunder_rule must be 'capture' or 'hanging', got {self.blunder_rule!r}"
            )
        if self.render_mode not in (None, "ansi", "rgb_array"):
            problems.append(
                f"render_mode must be None, 'ansi' or 'rgb_array', got {self.render_mode!r}"
            )
        if problems:
            raise ValueError("Invalid rook endgame option: " + "; ".join(problems) + ".")

    @property
    def num_actions(self) -> int:
        return 8 + 4 * (self.board_size - 1)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> RookEndgameConfig:
        """Build a config, naming any unknown option and the closest valid ones."""
        check_known(kwargs, [f.name for f in fields(cls)], "rook endgame option")
        return cls(**kwargs)


class _WhiteView:
    """Everything about a position with white to move, computed once (see ``_Board.white``)."""

    __slots__ = (
        "legal",
        "next",
        "mate",
        "safe",
        "attacked",
        "num_attacked",
        "edge",
        "rook_en_prise",
        "black_moves",
        "rc",
        "obs_index",
    )

    legal: np.ndarray
    """Mask of legal white actions (read-only)."""
    next: list[Position | None]
    """Position after each action, black to move; ``None`` where the action is illegal."""
    mate: np.ndarray
    """Mask of actions that checkmate (read-only)."""
    safe: np.ndarray
    """Mask of actions that neither stalemate nor leave the rook to be taken (read-only)."""
    attacked: np.ndarray
    """``uint8`` per square: 1 where white attacks it (read-only)."""
    num_attacked: int
    edge: int
    """The black king's distance to the nearest edge."""
    rook_en_prise: bool
    black_moves: int
    """Number of squares the black king could move to."""
    rc: tuple[RC, RC, RC]
    """``(row, col)`` of white king, white rook (``NO_POS`` once taken) and black king."""
    obs_index: np.ndarray
    """Flat indices of the observation's one-hot entries."""


class _BlackView:
    """A position after a legal white move, black to reply (see ``_Board.black``)."""

    __slots__ = ("check", "moves", "capture", "greedy", "chase")

    check: bool
    moves: tuple[int, ...]
    """Squares the black king may move to."""
    capture: bool
    """True when the black king can take the rook."""
    greedy: tuple[int, ...]
    """Replies of the ``"greedy"`` opponent (ties kept)."""
    chase: tuple[int, ...]
    """Replies of the ``"chase"`` opponent (ties kept)."""


class _Board:
    """Move tables of an ``n x n`` board and caches of per-position analyses (pure functions)."""

    def __init__(self, n: int):
        self.n = n
        self.num_squares = n * n
        self.num_actions = 8 + 4 * (n - 1)
        sq = range(self.num_squares)
        self.rc: list[RC] = [divmod(s, n) for s in sq]

        def on(r: int, c: int) -> bool:
            return 0 <= r < n and 0 <= c < n

        # king_step[s][d]: target of king direction d from s, or -1 off the board.
        self.king_step = [
            tuple(
                r * n + c if on(r, c) else -1
                for r, c in ((sr + dr, sc + dc) for dr, dc in KING_DIRS)
            )
            for sr, sc in self.rc
        ]
        self.king_targets = [tuple(t for t in steps if t >= 0) for steps in self.king_step]
        self.king_near = [sum(1 << t for t in ts) for ts in self.king_targets]  # bitmasks
        self.king_zone = [self.king_near[s] | (1 << s) for s in sq]
        self.rook_rays: list[tuple[tuple[int, ...], ...]] = []
        for sr, sc in self.rc:
            rays = []
            for dr, dc in ROOK_DIRS:
                ray, r, c = [], sr + dr, sc + dc
                while on(r, c):
                    ray.append(r * n + c)
                    r, c = r + dr, c + dc
                rays.append(tuple(ray))
            self.rook_rays.append(tuple(rays))
        self.edge = [min(r, c, n - 1 - r, n - 1 - c) for r, c in self.rc]
        # Doubled squared distance to the centre keeps it an integer on even boards too.
        self.centre_d2 = [(2 * r - n + 1) ** 2 + (2 * c - n + 1) ** 2 for r, c in self.rc]
        self._white: dict[Position, _WhiteView] = {}
        self._black: dict[Position, _BlackView] = {}
        self.starts: list[Position] = [
            (wk, wr, bk)
            for wk in sq
            for wr in sq
            for bk in sq
            if len({wk, wr, bk}) == 3 and self.legal_to_move(wk, wr, bk)
        ]
        """Every legal position with white to move (kings apart, black not in check)."""

    def rook_attacks(self, wr: int, occupied: int) -> int:
        """Bitmask of squares the rook on ``wr`` attacks; rays stop at (and include) a piece."""
        if wr == CAPTURED:
            return 0
        mask = 0
        for ray in self.rook_rays[wr]:
            for t in ray:
                mask |= 1 << t
                if occupied >> t & 1:
                    break
        return mask

    def legal_to_move(self, wk: int, wr: int, bk: int) -> bool:
        """True when white may be to move: kings not adjacent and black not in check."""
        if self.king_zone[wk] >> bk & 1:
            return False
        return not self.rook_attacks(wr, 1 << wk) >> bk & 1

    def black_targets(self, pos: Position) -> tuple[bool, tuple[int, ...]]:
        """(black in check, squares the black king may move to) in ``pos``."""
        wk, wr, bk = pos
        # The rook's rays pass through the black king's own square (it cannot hide behind itself).
        xray = self.rook_attacks(wr, 1 << wk)
        forbidden = self.king_zone[wk] | xray  # a defended rook is next to the white king
        return bool(xray >> bk & 1), tuple(
            t for t in self.king_targets[bk] if not forbidden >> t & 1
        )

    def black(self, pos: Position) -> _BlackView:
        """Black's situation after a legal white move (cached)."""
        view = self._black.get(pos)
        if view is None:
            view = _BlackView()
            view.check, view.moves = self.black_targets(pos)
            wr = pos[1]
            view.capture = wr in view.moves
            if view.capture:
                view.greedy = (wr,)
            else:
                view.greedy = self._argmin(view.moves, lambda t: self.centre_d2[t])
            rr, rc = self.rc[wr] if wr >= 0 else (0, 0)
            view.chase = self._argmin(
                view.moves,
                lambda t: (
                    ((self.rc[t][0] - rr) ** 2 + (self.rc[t][1] - rc) ** 2),
                    self.centre_d2[t],
                ),
            )
            self._black[pos] = view
        return view

    @staticmethod
    def _argmin(items: tuple[int, ...], key: Any) -> tuple[int, ...]:
        if not items:
            return ()
        best = min(key(t) for t in items)
        return tuple(t for t in items if key(t) == best)

    def white(self, pos: Position) -> _WhiteView:
        """Labels, legal moves and their results for a position with white to move (cached)."""
        view = self._white.get(pos)
        if view is None:
            view = self._analyse_white(pos)
            self._white[pos] = view
        return view

    def _analyse_white(self, pos: Position) -> _WhiteView:
        wk, wr, bk = pos
        n2, actions = self.num_squares, self.num_actions
        nxt: list[Position | None] = [None] * actions
        for d, t in enumerate(self.king_step[wk]):
            if t >= 0 and t != wr and not self.king_zone[bk] >> t & 1:
                nxt[d] = (t, wr, bk)
        if wr != CAPTURED:
            for d, ray in enumerate(self.rook_rays[wr]):
                for k, t in enumerate(ray):
                    if t in (wk, bk):
                        break
                    nxt[8 + d * (self.n - 1) + k] = (wk, t, bk)
        legal = np.array([p is not None for p in nxt], dtype=bool)
        mate = np.zeros(actions, dtype=bool)
        safe = np.zeros(actions, dtype=bool)
        for a, p in enumerate(nxt):
            if p is not None:
                b = self.black(p)
                mate[a] = b.check and not b.moves
                safe[a] = (b.check or bool(b.moves)) and not b.capture
        occupied = (1 << wk) | (1 << bk)
        attacked_mask = self.king_near[wk] | self.rook_attacks(wr, occupied)
        attacked = np.array([attacked_mask >> s & 1 for s in range(n2)], dtype=np.uint8)
        view = _WhiteView()
        view.next, view.legal, view.mate, view.safe = nxt, legal, mate, safe
        view.attacked, view.num_attacked = attacked, int(attacked.sum())
        view.edge = self.edge[bk]
        view.rook_en_prise = bool(
            wr != CAPTURED and self.king_near[bk] >> wr & 1 and not self.king_near[wk] >> wr & 1
        )
        view.black_moves = len(self.black_targets(pos)[1])
        view.rc = (self.rc[wk], self.rc[wr] if wr != CAPTURED else NO_POS, self.rc[bk])
        index = [WHITE_KING * n2 + wk, BLACK_KING * n2 + bk]
        if wr != CAPTURED:
            index.append(WHITE_ROOK * n2 + wr)
        view.obs_index = np.array(index, dtype=np.int64)
        for arr in (legal, mate, safe, attacked):
            arr.flags.writeable = False
        return view

    def square(self, rc: Sequence[int], what: str) -> int:
        """Square index of a ``(row, col)`` pair, with a clear error when it is off the board."""
        try:
            r, c = (int(v) for v in rc)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a (row, col) pair, got {rc!r}.") from None
        if not (0 <= r < self.n and 0 <= c < self.n):
            raise ValueError(
                f"{what} {(r, c)} is off the {self.n}x{self.n} board; rows and columns run 0..{self.n - 1}."
            )
        return r * self.n + c

    def position(
        self, white_king: Sequence[int], white_rook: Sequence[int], black_king: Sequence[int]
    ) -> Position:
        """Validate a hand-made position with white to move and return its square indices."""
        wk = self.square(white_king, "white_king")
        wr = self.square(white_rook, "white_rook")
        bk = self.square(black_king, "black_king")
        if len({wk, wr, bk}) < 3:
            raise ValueError(
                f"Two pieces share a square in {self.rc[wk], self.rc[wr], self.rc[bk]}; give three different squares."
            )
        if self.king_zone[wk] >> bk & 1:
            raise ValueError(
                f"The kings on {self.rc[wk]} and {self.rc[bk]} are adjacent, which is illegal; move them apart."
            )
        if not self.legal_to_move(wk, wr, bk):
            raise ValueError(
                f"The black king on {self.rc[bk]} is in check from the rook on {self.rc[wr]} with white "
                "to move, which is illegal; block or move the rook."
            )
        return (wk, wr, bk)


@functools.cache
def _board(n: int) -> _Board:
    return _Board(n)


class RookEndgameEnv(gym.Env):
    """King and rook against king (``gymnasium.make("policylens/RookEndgame-v0")``).

    Options are the fields of :class:`RookEndgameConfig`. ``reset(options={"position":
    (white_king, white_rook, black_king)})`` (``(row, col)`` pairs) starts from a hand-made
    position; otherwise starts are drawn uniformly from all legal positions with white to move
    (under DuPlessie's rules, as his environment draws them).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}

    def __init__(self, **options: Any):
        self.config = RookEndgameConfig.from_kwargs(options)
        self.render_mode = self.config.render_mode
        n = self.config.board_size
        self._board = _board(n)
        self._tablebase = get_tablebase(n) if self.config.tablebase_labels else None
        self._dtype = np.dtype(self.config.obs_dtype)
        self._obs_shape = (3 * n * n,) if self.config.obs_mode == "flat" else (3, n, n)
        self.observation_space = spaces.Box(0, 1, self._obs_shape, dtype=self._dtype)
        self.action_space = spaces.Discrete(self.config.num_actions)
        self._opponent = self.config.opponent
        # the rules' action numbering (to_board[a]: the same move in the board's numbering) and
        # plane order (obs_map[i]: where the board's one-hot index i goes)
        self._to_board = rules_actions(n, self.config.rules)
        n2 = n * n
        planes = PLANE_PIECES[self.config.rules]
        self._obs_map = np.array(
            [planes.index(piece) * n2 + sq for piece in range(3) for sq in range(n2)]
        )
        self._opp_rng: random.Random | None = None
        self._pos: Position = self._board.starts[0]
        self._steps = 0
        self._over = True
        self._outcome = ""
        self._in_check = False

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode from a random legal position (or ``options["position"]``)."""
        super().reset(seed=seed)
        if seed is not None or self._opp_rng is None:
            # A separate stream for black, so the sequence of starts does not depend on play.
            self._opp_rng = random.Random(int(self.np_random.integers(2**63)))
        options = dict(options or {})
        position = options.pop("position", None)
        if options:
            raise ValueError(
                f"Unknown reset option(s) {', '.join(map(repr, options))}; the only option is 'position'."
            )
        if position is None and self.config.rules == "duplessie":
            self._pos = self._duplessie_start()
        elif position is None:
            starts = self._board.starts
            self._pos = starts[int(self.np_random.integers(len(starts)))]
        else:
            self._pos = self._parse_position(position)
        self._steps, self._over, self._outcome, self._in_check = 0, False, "", False
        return self._obs(), self._info()

    def step(self, action):
        """Play a white move, then black's reply.

        ``info`` labels, computed for the position returned (``*_actions`` are masks over the
        actions for white to move there): ``outcome`` (one of ``OUTCOMES``), ``in_check`` (white's
        move gave check, i.e. the black king was in check before it replied), ``attacked`` (0/1
        per square attacked by white, rook rays stopping at the first piece) and
        ``num_attacked``, ``black_king_edge_distance`` (0 on the edge, 2 at the centre of 5x5),
        ``white_king_pos`` / ``white_rook_pos`` / ``black_king_pos`` (``(row, col)``; the rook
        ``(-1, -1)`` once taken), ``legal_actions``, ``mate_actions`` (moves that mate now),
        ``safe_actions`` (legal moves that neither stalemate nor let the king take the rook),
        ``can_mate``, ``rook_en_prise`` (the black king could take the rook),
        ``black_king_moves`` (squares the black king could step to), ``steps``; with
        ``tablebase_labels`` also ``mate_distance`` and ``optimal_actions``.
        """
        a = int(self._to_board[self._check_action(action)])
        if self._over:
            raise ValueError("The episode has ended; call reset() before step().")
        cfg = self.config
        board = self._board
        self._steps += 1
        nxt = board.white(self._pos).next[a]
        if nxt is None:
            return self._end("illegal", cfg.illegal_reward, False)
        black = board.black(nxt)
        self._pos = nxt
        self._in_check = black.check
        if not black.moves:
            if black.check:
                return self._end("checkmate", cfg.mate_reward, black.check)
            return self._end("stalemate", cfg.stalemate_reward, black.check)
        if black.capture and cfg.blunder_rule == "hanging":
            return self._end("blunder", cfg.blunder_reward, black.check)
        rng = self._opp_rng
        if self._opponent == "random":
            choices = black.moves
        elif self._opponent == "greedy":
            choices = black.greedy
        else:
            choices = black.chase
        to = choices[0] if len(choices) == 1 else choices[rng.randrange(len(choices))]
        wk, wr, _ = nxt
        if to == wr:
            self._pos = (wk, CAPTURED, to)
            return self._end("blunder", cfg.blunder_reward, black.check)
        self._pos = (wk, wr, to)
        if self._steps >= cfg.max_steps and cfg.timeout_reward is not None:
            return self._end("truncated", cfg.timeout_reward, black.check)
        if self._steps >= cfg.max_steps:
            self._over, self._outcome = True, "truncated"
            return self._obs(), float(cfg.step_reward), False, True, self._info()
        return self._obs(), float(cfg.step_reward), False, False, self._info()

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return board_text(self.position, self.config.board_size)
        if self.render_mode == "rgb_array":
            return board_image(self.position, self.config.board_size)
        return None

    # -- editing and inspection ---------------------------------------------------------------
    @property
    def position(self) -> tuple[RC, RC, RC]:
        """(white king, white rook, black king) as ``(row, col)``; the rook ``(-1, -1)`` if taken."""
        return self._board.white(self._pos).rc

    def set_position(
        self, white_king: Sequence[int], white_rook: Sequence[int], black_king: Sequence[int]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the pieces on these squares, white to move, and return ``(obs, info)``.

        The episode goes on from there (the step count is kept; an ended episode is reopened).
        Raises ValueError for an illegal position (shared squares, adjacent kings, black in check).
        """
        self._pos = self._board.position(white_king, white_rook, black_king)
        self._over, self._outcome, self._in_check = False, "", False
        if self._opp_rng is None:
            self._opp_rng = random.Random(int(self.np_random.integers(2**63)))
        return self._obs(), self._info()

    def action_masks(self) -> np.ndarray:
        """Legal white moves, shape ``(num_actions,)`` bool (sb3-contrib's MaskablePPO reads this)."""
        return self._board.white(self._pos).legal[self._to_board]

    def observe(
        self, white_king: Sequence[int], white_rook: Sequence[int], black_king: Sequence[int]
    ) -> np.ndarray:
        """The observation of a hand-made position without touching the live game."""
        return self._obs(self._board.position(white_king, white_rook, black_king))

    # -- internals ----------------------------------------------------------------------------
    def _duplessie_start(self) -> Position:
        """A start drawn as DuPlessie's environment draws it: the rook on a uniform square, the
        white king on a uniform other one, the black king on a uniform unattacked square."""
        board, rng = self._board, self.np_random
        wr = int(rng.integers(board.num_squares))
        wk = int(rng.integers(board.num_squares - 1))
        wk += wk >= wr  # uniform over the squares other than the rook's
        free = [
            s
            for s in range(board.num_squares)
            if s not in (wk, wr) and board.legal_to_move(wk, wr, s)
        ]
        return (wk, wr, free[int(rng.integers(len(free)))])

    def _parse_position(self, position: Any) -> Position:
        if isinstance(position, dict):
            keys = ("white_king", "white_rook", "black_king")
            if set(position) != set(keys):
                raise ValueError(
                    f"A position dict needs exactly the keys {', '.join(keys)}, got {', '.join(map(str, position))}."
                )
            return self._board.position(*(position[k] for k in keys))
        try:
            wk, wr, bk = position
        except (TypeError, ValueError):
            raise ValueError(
                f"position must be ((row, col) of white king, of white rook, of black king), got {position!r}."
            ) from None
        return self._board.position(wk, wr, bk)

    def _check_action(self, action: Any) -> int:
        try:
            a = int(action)
            ok = a == action and 0 <= a < self.config.num_actions
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"Action {action!r} is out of range; the rook endgame takes an integer in 0..{self.config.num_actions - 1}."
            )
        return a

    def _end(self, outcome: str, reward: float, in_check: bool):
        self._over, self._outcome, self._in_check = True, outcome, in_check
        return self._obs(), float(reward), True, False, self._info()

    def _obs(self, pos: Position | None = None) -> np.ndarray:
        view = self._board.white(self._pos if pos is None else pos)
        obs = np.zeros(3 * self._board.num_squares, self._dtype)  # (3 * n * n,)
        obs[self._obs_map[view.obs_index]] = 1
        return obs.reshape(self._obs_shape)

    def _info(self) -> dict[str, Any]:
        view = self._board.white(self._pos)
        wk, wr, bk = view.rc
        info = {
            "outcome": self._outcome,
            "success": self._outcome == "checkmate",
            "in_check": self._in_check,
            "attacked": view.attacked.copy(),
            "num_attacked": view.num_attacked,
            "black_king_edge_distance": view.edge,
            "white_king_pos": wk,
            "white_rook_pos": wr,
            "black_king_pos": bk,
            "legal_actions": view.legal[self._to_board],
            "mate_actions": view.mate[self._to_board],
            "safe_actions": view.safe[self._to_board],
            "can_mate": bool(view.mate.any()),
            "rook_en_prise": view.rook_en_prise,
            "black_king_moves": view.black_moves,
            "steps": self._steps,
        }
        if self._tablebase is not None:
            info["mate_distance"] = self._tablebase.mate_distance_of(self._pos)
            info["optimal_actions"] = self._tablebase.optimal_actions_of(self._pos)[self._to_board]
        return info


class RookEndgameTablebase:
    """Exact solution of the endgame by retrograde analysis (a few hundred ms on 5 x 5).

    ``mate_distance`` counts white moves to checkmate against the best defence (1 = mate in one;
    -1 = no forced mate, e.g. after the rook is lost). Black's best defence includes taking an
    undefended rook and stalemating, both of which count as not mated. The step limit is ignored.
    """

    INF = np.iinfo(np.int32).max

    def __init__(self, board_size: int = 5):
        board = _board(board_size)
        self.board = board
        n2, actions = board.num_squares, board.num_actions
        size = n2 * n2 * (n2 + 1)  # the rook index runs over squares plus CAPTURED (stored as n2)

        def idx(p: Position) -> int:
            wk, wr, bk = p
            return (wk * (n2 + 1) + (wr if wr != CAPTURED else n2)) * n2 + bk

        self._idx = idx
        wnext = np.full((size, actions), -1, dtype=np.int32)  # white pos, action -> black pos
        black_positions: dict[Position, int] = {}
        for p in board.starts:
            view = board.white(p)
            row = wnext[idx(p)]
            for a, q in enumerate(view.next):
                if q is not None:
                    row[a] = black_positions.setdefault(q, idx(q))
        bnext = np.full((size, 8), -1, dtype=np.int32)  # black pos, reply -> white pos
        bvalue0 = np.full(
            size, self.INF, dtype=np.int64
        )  # fixed values of terminal black positions
        open_black = np.zeros(size, dtype=bool)
        for q, j in black_positions.items():
            b = board.black(q)
            if not b.moves:
                bvalue0[j] = 0 if b.check else self.INF
            elif not b.capture:  # a takeable rook is a draw: black takes it
                open_black[j] = True
                wk, wr, _ = q
                for m, t in enumerate(b.moves):
                    bnext[j, m] = idx((wk, wr, t))
        inf = self.INF
        wdist = np.full(size, inf, dtype=np.int64)
        open_b = np.nonzero(open_black)[0]
        bn = bnext[open_b]  # (open black positions, 8)
        while True:
            bval = bvalue0.copy()
            replies = np.where(bn >= 0, wdist[np.maximum(bn, 0)], -1)
            bval[open_b] = replies.max(axis=1)
            cand = np.where(wnext >= 0, bval[np.maximum(wnext, 0)], inf)
            best = cand.min(axis=1)
            new = np.where(best < inf, best + 1, inf)
            if np.array_equal(new, wdist):
                break
            wdist = new
        self._wdist = wdist
        self._wnext = wnext
        self._bval = bval
        self._positions = board.starts

    def mate_distance_of(self, pos: Position) -> int:
        d = int(self._wdist[self._idx(pos)])
        return -1 if d == self.INF else d

    def optimal_actions_of(self, pos: Position) -> np.ndarray:
        """Mask of white moves that keep the shortest forced mate (all False if there is none)."""
        i = self._idx(pos)
        d = self._wdist[i]
        nxt = self._wnext[i]
        if d == self.INF:
            return np.zeros(len(nxt), dtype=bool)
        return (nxt >= 0) & (self._bval[np.maximum(nxt, 0)] == d - 1)

    def mate_distance(
        self, white_king: Sequence[int], white_rook: Sequence[int], black_king: Sequence[int]
    ) -> int:
        """Moves to a forced mate from a ``(row, col)`` position with white to move (-1 if none)."""
        return self.mate_distance_of(self.board.position(white_king, white_rook, black_king))

    def distances(self) -> np.ndarray:
        """Mate distance of every legal start position, in ``RookEndgameEnv`` start order."""
        return np.array([self.mate_distance_of(p) for p in self._positions], dtype=np.int64)


@functools.cache
def get_tablebase(board_size: int = 5) -> RookEndgameTablebase:
    """The (cached) tablebase of a board size."""
    return RookEndgameTablebase(board_size)


class ScriptedEndgamePlayer:
    """A reference agent that reads only ``info`` labels.

    ``policy="one_ply"``: mate if a move mates, else a random safe move (no stalemate, rook not
    left en prise), else a random legal move. ``policy="tablebase"``: perfect play (a random move
    among those keeping the shortest forced mate). ``policy="random_legal"``: a random legal move.
    Moves are numbered as in ``rules`` (the world's).
    """

    POLICIES = ("one_ply", "tablebase", "random_legal")

    def __init__(
        self, policy: str = "one_ply", board_size: int = 5, seed: int = 0, rules: str = "policylens"
    ):
        check_known([policy], self.POLICIES, "player policy")
        self.policy = policy
        self.to_board = rules_actions(board_size, rules)
        self.board = _board(board_size)
        self.tablebase = get_tablebase(board_size) if policy == "tablebase" else None
        self.rng = np.random.default_rng(seed)

    def act(self, info: dict[str, Any]) -> int:
        """Choose a white move from the labels of the current position."""
        if self.tablebase is not None:
            pos = self.board.position(
                info["white_king_pos"], info["white_rook_pos"], info["black_king_pos"]
            )
            best = self.tablebase.optimal_actions_of(pos)[self.to_board]
            if best.any():
                return int(self.rng.choice(np.flatnonzero(best)))
        keys = (
            ("legal_actions",)
            if self.policy == "random_legal"
            else ("mate_actions", "safe_actions", "legal_actions")
        )
        for key in keys:
            mask = np.asarray(info[key])
            if mask.any():
                return int(self.rng.choice(np.flatnonzero(mask)))
        raise ValueError("No legal white move in this position; the episode should have ended.")


def evaluate_player(
    player: ScriptedEndgamePlayer, episodes: int = 500, seed: int = 0, **options: Any
) -> dict[str, float]:
    """Play ``episodes`` games and return the share of each outcome and the mean episode length."""
    env = RookEndgameEnv(**options)
    counts: Counter[str] = Counter()
    lengths = []
    for e in range(episodes):
        _, info = env.reset(seed=seed + e)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(player.act(info))
            done = terminated or truncated
        counts[info["outcome"]] += 1
        lengths.append(info["steps"])
    result = {o: counts[o] / episodes for o in OUTCOMES if o}
    result["mean_length"] = float(np.mean(lengths))
    return result


# -- rendering ------------------------------------------------------------------------------------
def board_text(position: tuple[RC, RC, RC], board_size: int = 5) -> str:
    """A text board: ``K`` white king, ``R`` white rook, ``k`` black king, row 0 on top."""
    rows = [["."] * board_size for _ in range(board_size)]
    for (r, c), ch in zip(position, "KRk", strict=True):
        if r >= 0:
            rows[r][c] = ch
    return "\n".join(" ".join(row) for row in rows) + "\n"


def board_image(position: tuple[RC, RC, RC], board_size: int = 5, cell_px: int = 48) -> np.ndarray:
    """An RGB picture (H x W x 3 uint8): white disc king, white square rook, black disc king."""
    from PIL import Image, ImageDraw

    side = board_size * cell_px
    img = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(img)
    for r in range(board_size):
        for c in range(board_size):
            fill = (240, 217, 181) if (r + c) % 2 == 0 else (181, 136, 99)
            draw.rectangle(
                [c * cell_px, r * cell_px, (c + 1) * cell_px - 1, (r + 1) * cell_px - 1], fill=fill
            )
    pad = cell_px // 6
    for (r, c), piece in zip(position, (WHITE_KING, WHITE_ROOK, BLACK_KING), strict=True):
        if r < 0:
            continue
        box = [
            c * cell_px + pad,
            r * cell_px + pad,
            (c + 1) * cell_px - pad,
            (r + 1) * cell_px - pad,
        ]
        colour = (0, 0, 0) if piece == BLACK_KING else (255, 255, 255)
        if piece == WHITE_ROOK:
            draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
        else:
            draw.ellipse(
                box, fill=colour, outline=(0, 0, 0) if piece == WHITE_KING else None, width=2
            )
    return np.asarray(img)
