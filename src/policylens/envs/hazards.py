"""A CoinRun-like side-view platformer with labelled hazards, batched in NumPy.

Levels read left to right with the coin at the end and are generated from a level seed in
sections, after procgen's CoinRun: flat runs (with a saw, a patrolling enemy, crate piles), steps
up and down, and pits holding lava, a row of saws, patrolling enemies or nothing at all (a chasm
to fall through), sometimes with a platform over them. ``layout="path"`` puts a hazard the agent
must pass in every section (CoinRun's pits are never empty either), so seeing it decides the
outcome; :func:`solve_level` finds a way to the coin with the world's own physics (the tests'
known answer that every such level stays solvable). The physics follows CoinRun's numbers:
gravity 0.2, jump speed 1.5, top speed 0.5 tiles per step; on the ground vx <- 0.8 vx + 0.1 ax,
in the air vx <- 0.97 vx + 0.015 ax; moves in 4-6 sub-steps that stop at solid tiles. Actions
use procgen's layout (``vx = a // 3 - 1``, ``vy = a % 3 - 1`` for ``a < 9``; 9-14 are no-ops).
Touching the coin pays +10 and ends the level; touching a saw, an enemy or lava, or falling out of
the map ends it with nothing; so does the step limit (1,000 by default, as procgen).

Coordinates are ``(row, col)`` in tiles, row 0 at the top; positions are box centres. Saws are
static; enemies walk 0.15 tiles per step and turn at walls and ledges. Drawing order is tiles,
coin, saws, enemies (facing where they walk), agent: an enemy walking past a saw hides it.

Observations (``obs_mode``): ``symbolic`` is a one-hot of the top-most thing in each tile of the
13 x 13 tiles around the agent (channels :data:`CHANNELS`), plus the velocity painted into two
corner cells of its own channel; ``rgb`` the same view as an image at ``tile_px`` pixels per tile;
``rgb64`` a 64 x 64 image at 5 pixels per tile (12.8 tiles), procgen's size. Velocity is painted
as two grey squares in the top-left corner (procgen's ``paint_vel_info``, a tile each).

Every step's ``info`` holds the ground truth: agent position and velocity; each saw and enemy with
position, direction, in-view and occluded flags; per-kind masks and the top-most kind and object
at observation resolution (``masks=True``); the cause of death; the level seed.

The step logic lives once, in :class:`HazardsBatch`; :class:`HazardsEnv` is a batch of one and
:class:`HazardsVecEnv` adds same-step autoreset, as in the maze world.

Why one file of this length: levels, physics, both renderers, labels and both Gymnasium envs
work on one level representation and one set of geometry constants; split, each would import the
others' internals.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.lib.stride_tricks import sliding_window_view

from policylens.envs.batched import BatchedEnv, BatchedVecEnv, LevelBatch
from policylens.errors import check_known

# -- kinds and world geometry ------------------------------------------------------------------
EMPTY, WALL, CRATE, LAVA, COIN, SAW, ENEMY, AGENT, HUD = range(9)
KINDS = ("empty", "wall", "crate", "lava", "coin", "saw", "enemy", "agent", "hud")
"""Kind codes of tiles, of the ``top_kind`` label and of the masks (``hud``: velocity squares)."""
CHANNELS = (
    "wall",
    "crate",
    "lava",
    "coin",
    "saw",
    "enemy_left",
    "enemy_right",
    "agent",
    "velocity",
)
"""Channels of the ``symbolic`` observation."""
CAUSES = ("none", "saw", "enemy", "lava", "fell", "timeout", "multiple")
"""Values of ``info["death_cause"]``: how an episode ended (``none``: the coin, or still going)."""
NONE, BY_SAW, BY_ENEMY, BY_LAVA, FELL, TIMEOUT, MULTIPLE = range(7)
ENEMY_SIDES = ("", "front", "back", "above")
"""Values of ``info["enemy_side"]``: where the agent touched the enemy that killed it."""

HEIGHT, WIDTH = 16, 64
"""World size in tiles; levels end with a wall, so most are shorter than WIDTH."""
MAX_SAWS, MAX_ENEMIES = 25, 15
"""Slots of the saw and enemy label arrays (the generator never places more)."""

GRAVITY, JUMP_SPEED, MAX_SPEED = 0.2, 1.5, 0.5
GROUND_MIX, AIR_CONTROL = 0.2, 0.15
"""vx mixes toward ``MAX_SPEED * ax`` at 0.2 per step on the ground and 0.2 * 0.15 in the air."""
ENEMY_SPEED = 0.15
COIN_REWARD = 10.0
AGENT_HALF = (0.45, 0.4)
"""Half height and half width of the agent's box (0.9 x 0.8 tiles)."""
ENEMY_HALF = (0.35, 0.4)
SAW_HALF = (0.4, 0.4)
MARGIN = 0.98
"""Collision corners sit at this fraction of the half sizes, as in procgen."""
MAX_GROUND, MAX_STEP_UP, MAX_PIT = 8, 4, 5
"""Highest ground, highest step up and widest pit the generator makes (jumps rise 6.4 tiles and
carry 8 at top speed)."""
RGB64_TILE_PX = 5
LAYOUTS = ("classic", "path")
"""Values of ``HazardsConfig.layout``: where the generator puts hazards."""

ACTION_NAMES = (
    "left+down", "left", "left+jump", "down", "noop", "jump", "right+down", "right", "right+jump",
    "noop (d)", "noop (a)", "noop (w)", "noop (s)", "noop (q)", "noop (e)",
)  # fmt: skip
"""procgen's 15 actions: 0-8 are (left, none, right) x (down, none, jump); 9-14 do nothing here."""

# Colours of the RGB observation and the level renderer.
SKY = (170, 210, 245)
COLOURS = {
    WALL: (120, 84, 52),
    CRATE: (196, 140, 72),
    LAVA: (232, 88, 24),
    COIN: (250, 204, 30),
    SAW: (150, 150, 165),
    ENEMY: (150, 50, 180),
    AGENT: (40, 90, 220),
}
GRASS, LAVA_TOP_RGB, CRATE_EDGE, SAW_HUB, EYE = (
    (88, 170, 64),
    (252, 170, 40),
    (120, 80, 40),
    (60, 60, 70),
    (255, 255, 255),
)
GROUND_TOP, LAVA_SURFACE = 9, 10  # render-only codes: the exposed top of ground and of lava
SALIENT_SAW, SALIENT_SAW_HUB = (60, 60, 72), (235, 235, 245)
"""``salient_saws``: a dark steel disc with a light hub, in place of the light grey one."""


@dataclass(frozen=True)
class HazardsConfig:
    """Options of the hazard world; every field is a keyword of ``gymnasium.make``."""

    num_levels: int = 0
    """Number of distinct levels (0 = unlimited), as in procgen."""
    start_level: int = 0
    """First level seed; with num_levels = 0, seeds are drawn from start_level upward."""
    distribution_mode: str = "hard"
    """"hard" (procgen's default) or "easy" (no enemies on flat ground, as procgen's easy CoinRun)."""
    max_difficulty: int = 3
    """Each level draws a difficulty 1..max_difficulty (procgen: 3): more, longer, wider sections."""
    layout: str = "classic"
    """Where hazards go: "classic" (some runs have none, some pits are empty chasms) or "path"
    (every section holds a saw, an enemy or lava the agent must pass; see _path_section)."""
    max_steps: int = 1000
    """Episodes are truncated (cause "timeout") after this many steps (procgen: 1,000)."""
    obs_mode: str = "symbolic"
    """"symbolic" (channels x view x view uint8), "rgb" (view*tile_px square image) or "rgb64"."""
    view: int = 13
    """Side of the agent-centred view in tiles (odd) for "symbolic" and "rgb"."""
    tile_px: int = 4
    """Pixels per tile of the "rgb" observation."""
    paint_vel_info: bool = True
    """Paint the agent's velocity into the observation (procgen's paint_vel_info)."""
    invisible_saws: bool = False
    """Leave saws out of the observation (they still kill, and are still labelled)."""
    invisible_enemies: bool = False
    """Leave enemies out of the observation (they still kill, and are still labelled)."""
    monochrome: bool = False
    """RGB: draw every object as a flat square of its kind's colour (procgen's monochrome assets)."""
    salient_saws: bool = False
    """RGB: draw saws dark with a light hub (:data:`SALIENT_SAW`), not light grey against the
    light sky: a pixel agent trained on the grey saw never came to use its sight of them, on
    this one it did (BENCHMARKS.md, issue 28). Labels and masks are unchanged."""
    masks: bool = True
    """Put per-kind masks and the top-most kind/object maps in info every step (off: faster)."""
    render_mode: str | None = None
    """"rgb_array" to make ``render()`` return the whole level."""

    @property
    def num_actions(self) -> int:
        return len(ACTION_NAMES)

    def __post_init__(self) -> None:
        problems = []
        if self.num_levels < 0 or not 0 <= self.start_level < 2**31 - 1:
            problems.append("num_levels must be >= 0 and start_level in [0, 2**31 - 1)")
        if self.distribution_mode not in ("easy", "hard"):
            problems.append(
                f"distribution_mode must be 'easy' or 'hard', got {self.distribution_mode!r}"
            )
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if not 1 <= self.max_difficulty <= 3:
            problems.append(f"max_difficulty must be 1, 2 or 3, got {self.max_difficulty}")
        if self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.obs_mode not in ("symbolic", "rgb", "rgb64"):
            problems.append(f"obs_mode must be 'symbolic', 'rgb' or 'rgb64', got {self.obs_mode!r}")
        if self.view < 3 or self.view % 2 == 0 or self.view > 31:
            problems.append(f"view must be an odd number of tiles in 3..31, got {self.view}")
        if not 1 <= self.tile_px <= 16:
            problems.append(f"tile_px must lie in 1..16, got {self.tile_px}")
        if self.render_mode not in (None, "rgb_array"):
            problems.append(f"render_mode must be None or 'rgb_array', got {self.render_mode!r}")
        if problems:
            raise ValueError("Invalid hazards option: " + "; ".join(problems) + ".")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> HazardsConfig:
        """Build a config, naming any unknown option and the closest valid ones."""
        check_known(kwargs, [f.name for f in fields(cls)], "hazards option")
        return cls(**kwargs)

    @property
    def pixels_per_tile(self) -> int:
        """Resolution of the observation: 1 cell per tile (symbolic) or the image's pixels."""
        return {"symbolic": 1, "rgb": self.tile_px, "rgb64": RGB64_TILE_PX}[self.obs_mode]

    @property
    def obs_side(self) -> int:
        """Side of the observation in cells or pixels."""
        return 64 if self.obs_mode == "rgb64" else self.view * self.pixels_per_tile

    @property
    def margin(self) -> int:
        """Tiles of padding around the level, so every view and lookup stays inside the arrays."""
        return math.ceil(self.obs_side / 2 / self.pixels_per_tile) + 4


# -- levels --------------------------------------------------------------------------------------
@dataclass
class HazardsState:
    """A level and where everything in it stands: a plain, JSON-serialisable value.

    ``tiles`` holds the static kinds (EMPTY, WALL, CRATE, LAVA, COIN, SAW); saws are tiles, centred
    in theirs. Positions are box centres in tiles, ``(row, col)``.
    """

    tiles: np.ndarray
    agent: tuple[float, float]
    enemies: np.ndarray
    """(E, 2) enemy centres."""
    enemy_dirs: np.ndarray
    """(E,) +1 walking right, -1 walking left."""
    velocity: tuple[float, float] = (0.0, 0.0)
    """Agent velocity (row, col) in tiles per step; row velocity is positive downward."""
    level_seed: int = -1
    """Seed that generated the level, or -1 for a hand-made state."""
    difficulty: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        self.tiles = np.asarray(self.tiles, dtype=np.uint8)
        self.enemies = np.asarray(self.enemies, dtype=np.float64).reshape(-1, 2)
        self.enemy_dirs = np.asarray(self.enemy_dirs, dtype=np.int8).reshape(-1)
        self.agent = (float(self.agent[0]), float(self.agent[1]))
        self.velocity = (float(self.velocity[0]), float(self.velocity[1]))

    @property
    def saws(self) -> np.ndarray:
        """(S, 2) saw centres, in row-major tile order (the order of the saw label slots)."""
        rows, cols = np.nonzero(self.tiles == SAW)
        return np.stack([rows + 0.5, cols + 0.5], axis=1).reshape(-1, 2)

    @property
    def coin(self) -> tuple[int, int]:
        rows, cols = np.nonzero(self.tiles == COIN)
        return (int(rows[0]), int(cols[0])) if len(rows) else (-1, -1)

    @property
    def length(self) -> int:
        """Columns up to and including the coin's."""
        return self.coin[1] + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiles": ["".join(str(int(k)) for k in row) for row in self.tiles],
            "agent": list(self.agent),
            "velocity": list(self.velocity),
            "enemies": self.enemies.tolist(),
            "enemy_dirs": self.enemy_dirs.tolist(),
            "level_seed": self.level_seed,
            "difficulty": self.difficulty,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HazardsState:
        return cls(
            tiles=np.array([[int(ch) for ch in row] for row in data["tiles"]], dtype=np.uint8),
            agent=tuple(data["agent"]),
            velocity=tuple(data.get("velocity", (0.0, 0.0))),
            enemies=np.array(data.get("enemies", []), dtype=np.float64),
            enemy_dirs=np.array(data.get("enemy_dirs", []), dtype=np.int8),
            level_seed=int(data.get("level_seed", -1)),
            difficulty=int(data.get("difficulty", 0)),
            steps=int(data.get("steps", 0)),
        )

    def copy(self, **changes: Any) -> HazardsState:
        arrays = {"tiles": self.tiles, "enemies": self.enemies, "enemy_dirs": self.enemy_dirs}
        return replace(self, **{k: v.copy() for k, v in arrays.items()} | changes)

    def validate(self) -> None:
        """Raise ValueError if the state breaks the world's rules."""
        if self.tiles.shape != (HEIGHT, WIDTH):
            raise ValueError(f"tiles must be {HEIGHT}x{WIDTH}, got shape {self.tiles.shape}")
        if self.tiles.max(initial=0) > SAW:
            raise ValueError(
                "tiles may hold only EMPTY, WALL, CRATE, LAVA, COIN and SAW codes (0-5)"
            )
        if int((self.tiles == COIN).sum()) != 1:
            raise ValueError("a level needs exactly one COIN tile")
        if len(self.saws) > MAX_SAWS or len(self.enemies) > MAX_ENEMIES:
            raise ValueError(f"a level holds at most {MAX_SAWS} saws and {MAX_ENEMIES} enemies")
        if len(self.enemies) != len(self.enemy_dirs) or not np.isin(self.enemy_dirs, (-1, 1)).all():
            raise ValueError("give one direction (+1 or -1) per enemy")
        r, c = self.agent
        if not (0 <= c < WIDTH and -HEIGHT <= r < HEIGHT + 1):
            raise ValueError(f"agent position {self.agent} is outside the {HEIGHT}x{WIDTH} world")


def generate_level(level_seed: int, config: HazardsConfig | None = None) -> HazardsState:
    """The level a seed fixes (procgen CoinRun's section generator, in this world's sizes).

    ``config.layout`` picks where hazards go: ``classic`` as before (a pit may be an empty chasm,
    a flat run holds a saw with chance 0.2 x difficulty); ``path`` puts them where the agent must
    pass (see :func:`_path_section`).
    """
    config = config or HazardsConfig()
    rng = np.random.default_rng(level_seed)
    dif = int(rng.integers(1, config.max_difficulty + 1))
    sections = int(rng.integers(dif)) + dif
    ground = np.zeros(WIDTH, dtype=np.int64)  # ground height per column (0: a chasm)
    tiles = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    saws: list[tuple[int, int]] = []  # (height above ground row 0, column) of the tile
    enemies: list[tuple[int, int, int]] = []  # (height, column, direction)
    crates: list[tuple[int, int]] = []
    lava: list[tuple[int, int, int]] = []  # (column from, column to, height)

    ground[0] = HEIGHT  # the left wall
    ground[1:5] = 1
    x, h = 5, 1
    for _ in range(sections):
        if x + 12 >= WIDTH:
            break
        dy = min(int(rng.integers(4)) + 1 + dif // 3, MAX_STEP_UP)
        if h + dy > MAX_GROUND or (h >= 4 and rng.integers(2) == 1):
            dy = -dy
        dx = int(rng.integers(2 * dif)) + 3 + dif // 3
        h = int(np.clip(h + dy, 1, MAX_GROUND))
        if config.layout == "path":
            _path_section(
                rng, config, dif, x, dx, h, dy, ground, tiles, saws, enemies, crates, lava
            )
            x += dx
            continue
        if dx >= 6 and h >= 3 and rng.random() < 0.85:
            x1, x2 = int(rng.integers(1, 3)), int(rng.integers(1, 3))
            width = min(dx - x1 - x2, MAX_PIT)
            x2 = dx - x1 - width
            ground[x : x + x1] = h
            ground[x + dx - x2 : x + dx] = h
            pit = range(x + x1, x + x1 + width)
            danger = int(rng.integers(4))
            ground[pit.start : pit.stop] = 0 if danger == 3 else 1
            if danger == 0:
                lava.append((pit.start, pit.stop, int(rng.integers(1, h - 1))))
            elif danger == 1:
                saws += [(1, c) for c in pit]
            elif danger == 2:
                picks = rng.choice(np.array(pit), size=(width + 1) // 2, replace=False)
                enemies += [(1, int(c), int(rng.integers(2)) * 2 - 1) for c in sorted(picks)]
            if width >= 5:  # a platform level with the pit's edges
                x3, w1 = 1 + int(rng.integers(2)), 1 + int(rng.integers(2))
                tiles[HEIGHT - h, pit.start + x3 : pit.start + x3 + w1] = WALL
        else:
            ground[x : x + dx] = h
            saw_x = enemy_x = -1
            room = 2 if dy > 0 else 1  # a tile to land on after a climb, before any hazard
            if rng.integers(10) < 2 * dif and dx > 3:
                saw_x = x + room + int(rng.integers(dx - 1 - room))
                saws.append((h, saw_x))
            if rng.integers(10) < dif and dx > 3 and config.distribution_mode == "hard":
                enemy_x = x + room + int(rng.integers(dx - 1 - room))
                enemies.append((h, enemy_x, int(rng.integers(2)) * 2 - 1))
            for _ in range(2):
                crate_x = x + int(rng.integers(dx - 2)) + 1
                if rng.integers(2) == 1 and crate_x not in (saw_x, enemy_x):
                    crates += [(h + j, crate_x) for j in range(int(rng.integers(3)) + 1)]
        x += dx
    ground[x] = h
    ground[x + 1 :] = HEIGHT  # the wall behind the coin
    for c, top in enumerate(ground.tolist()):
        tiles[HEIGHT - top :, c] = WALL
    for c0, c1, height in lava:
        tiles[HEIGHT - 1 - height : HEIGHT - 1, c0:c1] = LAVA
    for height, c in crates:
        tiles[HEIGHT - 1 - height, c] = CRATE
    for height, c in saws:
        tiles[HEIGHT - 1 - height, c] = SAW
    tiles[HEIGHT - 1 - h, x] = COIN
    enemy_pos = [(HEIGHT - height - ENEMY_HALF[0], c + 0.5) for height, c, _ in enemies]
    return HazardsState(
        tiles=tiles,
        agent=(HEIGHT - 1 - AGENT_HALF[0], 1.5),
        enemies=np.array(enemy_pos, dtype=np.float64).reshape(-1, 2),
        enemy_dirs=np.array([d for _, _, d in enemies], dtype=np.int8),
        level_seed=level_seed,
        difficulty=dif,
    )


def _path_section(
    rng: np.random.Generator,
    config: HazardsConfig,
    dif: int,
    x: int,
    dx: int,
    h: int,
    dy: int,
    ground: np.ndarray,
    tiles: np.ndarray,
    saws: list[tuple[int, int]],
    enemies: list[tuple[int, int, int]],
    crates: list[tuple[int, int]],
    lava: list[tuple[int, int, int]],
) -> None:
    """One section of a ``path`` level, columns ``x`` to ``x + dx - 1`` at ground height ``h``.

    Every section holds a hazard the agent must pass, so that seeing it decides the outcome: a
    pit is always lava, a floor of saws or patrolling enemies (CoinRun's three; never an empty
    chasm), and from difficulty 2 a platform over a wide pit may carry a saw, so the pit must be
    cleared in one jump; a flat run always holds a saw or (hard mode) an enemy on the ground, to
    be jumped (CoinRun: a saw with chance 0.2 x difficulty), and a second one with chance
    (difficulty - 1) / 3. Hazards keep a tile free to land on after a climb (a run too short for
    that gets its hazard in its last column) and stand apart from crate piles.
    """
    if dx >= 6 and h >= 3 and rng.random() < 0.85:
        x1, x2 = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        width = min(dx - x1 - x2, MAX_PIT)
        x2 = dx - x1 - width
        ground[x : x + x1] = h
        ground[x + dx - x2 : x + dx] = h
        pit = range(x + x1, x + x1 + width)
        ground[pit.start : pit.stop] = 1
        danger = int(rng.integers(3))
        if danger == 0:
            lava.append((pit.start, pit.stop, int(rng.integers(1, h - 1))))
        elif danger == 1:
            saws += [(1, c) for c in pit]
        else:
            picks = rng.choice(np.array(pit), size=(width + 1) // 2, replace=False)
            enemies += [(1, int(c), int(rng.integers(2)) * 2 - 1) for c in sorted(picks)]
        if width >= 5:  # a platform level with the pit's edges
            x3, w1 = 1 + int(rng.integers(2)), 1 + int(rng.integers(2))
            tiles[HEIGHT - h, pit.start + x3 : pit.start + x3 + w1] = WALL
            if danger != 1 and rng.integers(3) < dif - 1:
                saws.append((h, pit.start + x3 + int(rng.integers(w1))))
        return
    ground[x : x + dx] = h
    room = 2 if dy > 0 else 1  # a tile to land on after a climb, before any hazard
    spots = list(range(x + room, max(x + dx - 1, x + room + 1)))  # a short run: its last column
    count = 1 + int(rng.integers(3) < dif - 1 and len(spots) >= 4)
    taken: list[int] = []
    for _ in range(count):
        free = [c for c in spots if all(abs(c - t) >= 3 for t in taken)]
        if not free:
            break
        c = int(rng.choice(np.array(free)))
        taken.append(c)
        if config.distribution_mode == "easy" or rng.integers(2) == 0:
            saws.append((h, c))
        else:
            enemies.append((h, c, int(rng.integers(2)) * 2 - 1))
    for _ in range(2):
        crate_x = x + int(rng.integers(dx - 2)) + 1
        if rng.integers(2) == 1 and all(abs(crate_x - t) >= 2 for t in taken):
            crates += [(h + j, crate_x) for j in range(int(rng.integers(3)) + 1)]


# -- sprites ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sprite:
    """An RGB patch with the mask of pixels it paints."""

    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool


def _disc(p: int, radius: float) -> np.ndarray:
    """Pixels of a p x p tile within ``radius`` tiles of its centre (the centre pixel always)."""
    u = (np.arange(p) + 0.5) / p - 0.5
    d2 = u[:, None] ** 2 + u[None, :] ** 2
    return (d2 <= radius**2) | (d2 <= d2.min() + 1e-9)


@functools.cache
def _tile_sprites(
    p: int, monochrome: bool, salient_saws: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per render code (kinds plus GROUND_TOP, LAVA_SURFACE): RGB tiles (codes, p, p, 3) and the
    kind each pixel shows (codes, p, p)."""
    rgb = np.zeros((11, p, p, 3), dtype=np.uint8)
    kind = np.zeros((11, p, p), dtype=np.uint8)
    rgb[:] = SKY
    band = max(1, p // 4)
    for code, base in ((WALL, WALL), (GROUND_TOP, WALL), (CRATE, CRATE), (LAVA, LAVA),
                       (LAVA_SURFACE, LAVA)):  # fmt: skip
        rgb[code] = COLOURS[base]
        kind[code] = base
    for code, radius in ((COIN, 0.35), (SAW, 0.4)):
        shape = np.ones((p, p), bool) if monochrome else _disc(p, radius)
        rgb[code][shape] = COLOURS[code]
        kind[code][shape] = code
    if not monochrome:
        rgb[GROUND_TOP, :band] = GRASS
        rgb[LAVA_SURFACE, :band] = LAVA_TOP_RGB
        if p >= 4:
            rgb[CRATE, [0, -1], :] = CRATE_EDGE
            rgb[CRATE, :, [0, -1]] = CRATE_EDGE
        rgb[SAW][_disc(p, 0.12) & (p >= 5)] = SAW_HUB
    if salient_saws:
        rgb[SAW][kind[SAW] == SAW] = SALIENT_SAW
        if not monochrome:
            rgb[SAW][_disc(p, 0.2)] = SALIENT_SAW_HUB
    return rgb, kind


def _box_px(half: float, p: int) -> int:
    return max(1, round(2 * half * p))


@functools.cache
def _dynamic_sprites(p: int, monochrome: bool) -> tuple[_Sprite, _Sprite, _Sprite]:
    """The enemy facing left, the enemy facing right, and the agent, at p pixels per tile."""
    eh, ew = _box_px(ENEMY_HALF[0], p), _box_px(ENEMY_HALF[1], p)
    left = np.zeros((eh, ew, 3), dtype=np.uint8)
    left[:] = COLOURS[ENEMY]
    if not monochrome:  # an eye in the upper front corner: which way it faces
        left[: max(1, eh // 3), : max(1, ew // 3)] = EYE
    ah, aw = _box_px(AGENT_HALF[0], p), _box_px(AGENT_HALF[1], p)
    agent = np.zeros((ah, aw, 3), dtype=np.uint8)
    agent[:] = COLOURS[AGENT]
    full = np.ones((eh, ew), bool)
    return (
        _Sprite(left, full),
        _Sprite(left[:, ::-1].copy(), full),
        _Sprite(agent, np.ones((ah, aw), bool)),
    )


def _render_codes(kind: np.ndarray) -> np.ndarray:
    """Kinds -> render codes: the exposed tops of ground and lava get their own look."""
    codes = kind.copy()
    above = np.zeros_like(kind)
    above[..., 1:, :] = kind[..., :-1, :]
    codes[(kind == WALL) & (above != WALL)] = GROUND_TOP
    codes[(kind == LAVA) & (above != LAVA)] = LAVA_SURFACE
    return codes


def _shade(v: np.ndarray) -> np.ndarray:
    """procgen's to_shade: [0, 1] -> grey level."""
    return np.clip(np.round(np.asarray(v) * 255), 0, 255).astype(np.uint8)


def _tiled(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A picture from per-code tiles ``table`` (codes, p, p, ...) and a grid of codes (h, w)."""
    h, w = codes.shape
    p = table.shape[1]
    out = table[codes]  # (h, w, p, p, ...)
    return out.swapaxes(1, 2).reshape(h * p, w * p, *table.shape[3:])


# -- the batched world -----------------------------------------------------------------------------
class HazardsBatch(LevelBatch):
    """N levels stepped together with array operations (no Python loop over levels in ``step``)."""

    WORLD = "the hazard world (procgen's actions)"
    ARRAYS = (
        "kind", "solid", "saw_slot", "pos", "vel", "support", "saw_pos", "saw_valid", "enemy_pos",
        "enemy_dir", "enemy_valid", "coin", "level_seed", "difficulty", "steps", "cause",
        "enemy_side", "success",
    )  # fmt: skip

    def __init__(self, config: HazardsConfig, num_envs: int):
        self.config = config
        self.n = n = num_envs
        super().__init__()
        self.m = m = config.margin
        self.p = config.pixels_per_tile
        self.side = config.obs_side
        self.shape_pad = (HEIGHT + 2 * m, WIDTH + 2 * m)
        self.kind = np.zeros((n, *self.shape_pad), dtype=np.uint8)  # static kinds, padded
        self.solid = np.zeros((n, *self.shape_pad), dtype=bool)
        self.saw_slot = np.full((n, *self.shape_pad), -1, dtype=np.int16)  # saw label slot per tile
        self.pos = np.zeros((n, 2))
        self.vel = np.zeros((n, 2))
        self.support = np.zeros(n, dtype=bool)
        self.saw_pos = np.zeros((n, MAX_SAWS, 2))
        self.saw_valid = np.zeros((n, MAX_SAWS), dtype=bool)
        self.enemy_pos = np.zeros((n, MAX_ENEMIES, 2))
        self.enemy_dir = np.zeros((n, MAX_ENEMIES), dtype=np.int8)
        self.enemy_valid = np.zeros((n, MAX_ENEMIES), dtype=bool)
        self.coin = np.zeros((n, 2), dtype=np.int64)
        self.level_seed = np.zeros(n, dtype=np.int64)
        self.difficulty = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.cause = np.zeros(n, dtype=np.int8)
        self.enemy_side = np.zeros(n, dtype=np.int8)
        self.success = np.zeros(n, dtype=bool)
        self._all = np.arange(n)
        self._env_base = self._all * self.shape_pad[0] * self.shape_pad[1]
        self.obs_space = self._observation_space()
        self.obs = np.zeros((n, *self.obs_space.shape), dtype=np.uint8)
        self.labels: dict[str, np.ndarray] = {}
        self.saw_in_view = np.zeros((n, MAX_SAWS), dtype=bool)
        self.saw_occluded = np.zeros((n, MAX_SAWS), dtype=bool)
        self.enemy_in_view = np.zeros((n, MAX_ENEMIES), dtype=bool)
        self.enemy_occluded = np.zeros((n, MAX_ENEMIES), dtype=bool)
        if config.obs_mode == "symbolic":
            self._kind_windows = sliding_window_view(self.kind, (config.view,) * 2, axis=(1, 2))
            self._slot_windows = sliding_window_view(self.saw_slot, (config.view,) * 2, axis=(1, 2))
        else:  # the padded level drawn once per level; each view is a slice of it
            canvas_shape = (n, self.shape_pad[0] * self.p, self.shape_pad[1] * self.p)
            self.canvas = np.zeros((*canvas_shape, 3), dtype=np.uint8)
            if config.masks:
                self.kind_canvas = np.zeros(canvas_shape, dtype=np.uint8)
                self.slot_canvas = np.full(canvas_shape, -1, dtype=np.int16)

    def _observation_space(self) -> spaces.Box:
        cfg = self.config
        if cfg.obs_mode == "symbolic":
            return spaces.Box(0, 12, (len(CHANNELS), cfg.view, cfg.view), np.uint8)
        return spaces.Box(0, 255, (self.side, self.side, 3), np.uint8)

    # -- levels --------------------------------------------------------------------------------
    def generate(self, level_seed: int) -> HazardsState:
        return generate_level(level_seed, self.config)

    def reset_slots(self, envs: np.ndarray) -> None:
        """Start a new level in each slot of ``envs``, drawing their observations at once."""
        for i in envs:
            self.reset_slot(int(i), observe=False)
        self.observe(envs)

    def reset_slot(self, i: int, observe: bool = True) -> None:
        self.load(i, self.level(self.draw_level_seed(i)), observe)

    def load(self, i: int, state: HazardsState, observe: bool = True) -> None:
        """Put a level with its agent, enemies and step count into slot ``i`` (``observe=False``
        leaves drawing its observation to the caller, who may draw several at once)."""
        m = self.m
        self.kind[i] = EMPTY
        self.kind[i, :, :m] = WALL
        self.kind[i, :, m + WIDTH :] = WALL
        self.kind[i, m : m + HEIGHT, m : m + WIDTH] = state.tiles
        self.solid[i] = (self.kind[i] == WALL) | (self.kind[i] == CRATE)
        saws = state.saws
        self.saw_slot[i] = -1
        rows, cols = np.floor(saws).astype(np.int64).T if len(saws) else ([], [])
        self.saw_slot[i, np.asarray(rows, int) + m, np.asarray(cols, int) + m] = np.arange(
            len(saws)
        )
        self.saw_valid[i] = False
        self.saw_valid[i, : len(saws)] = True
        self.saw_pos[i] = 0
        self.saw_pos[i, : len(saws)] = saws
        k = len(state.enemies)
        self.enemy_valid[i] = False
        self.enemy_valid[i, :k] = True
        self.enemy_pos[i] = 0
        self.enemy_pos[i, :k] = state.enemies
        self.enemy_dir[i] = 0
        self.enemy_dir[i, :k] = state.enemy_dirs
        self.pos[i] = state.agent
        self.vel[i] = state.velocity
        self.coin[i] = state.coin
        self.level_seed[i] = state.level_seed
        self.difficulty[i] = state.difficulty
        self.steps[i] = state.steps
        self.cause[i] = NONE
        self.enemy_side[i] = 0
        self.success[i] = False
        self.support[i] = self._supported(np.array([i]))[0]
        if self.config.obs_mode != "symbolic":
            self._paint_canvas(i)
        if observe:
            self.observe(np.array([i]))

    def get_state(self, i: int) -> HazardsState:
        m, valid = self.m, self.enemy_valid[i]
        return HazardsState(
            tiles=self.kind[i, m : m + HEIGHT, m : m + WIDTH].copy(),
            agent=tuple(self.pos[i]),
            velocity=tuple(self.vel[i]),
            enemies=self.enemy_pos[i, valid].copy(),
            enemy_dirs=self.enemy_dir[i, valid].copy(),
            level_seed=int(self.level_seed[i]),
            difficulty=int(self.difficulty[i]),
            steps=int(self.steps[i]),
        )

    def set_state(self, i: int, state: HazardsState) -> None:
        state.validate()
        self.load(i, state)

    def redraw(self) -> None:
        if self.config.obs_mode != "symbolic":
            for i in range(self.n):
                self._paint_canvas(i)
        self.observe(np.arange(self.n))

    # -- physics -------------------------------------------------------------------------------
    def _lookup(
        self, grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, envs: np.ndarray | None = None
    ) -> np.ndarray:
        """``grid[env, tile(row), tile(col)]`` for float positions of shape (n,) or (n, k), of
        every env or of ``envs``.

        The padding (``config.margin`` tiles) keeps every position the physics reaches inside
        the arrays, so one flat ``take`` does the lookup (clipped: an agent stepped on after
        falling out reads the bottom corner rather than failing).
        """
        wp = self.shape_pad[1]
        base = self._env_base if envs is None else self._env_base[envs]
        base = base if np.ndim(rows) == 1 else base[:, None]
        m = self.m  # positions + m are positive, so truncation is floor
        flat = base + (rows + m).astype(np.int64) * wp + (cols + m).astype(np.int64)
        return grid.ravel().take(flat, mode="clip")

    def _box_touches(self, kinds: tuple[int, ...]) -> list[np.ndarray]:
        """Per kind, whether the agent's box (shrunk by 0.01) has a corner in a tile of it."""
        r, c = self.pos[:, 0], self.pos[:, 1]
        hr, hc = AGENT_HALF[0] - 0.01, AGENT_HALF[1] - 0.01
        corners = [self._lookup(self.kind, r + dr, c + dc) for dr in (-hr, hr) for dc in (-hc, hc)]
        return [(corners[0] == k) | (corners[1] == k) | (corners[2] == k) | (corners[3] == k)
                for k in kinds]  # fmt: skip

    def _supported(self, envs: np.ndarray) -> np.ndarray:
        """Standing on solid ground: a solid tile just under either foot, and no vertical speed."""
        r, c = self.pos[envs, 0] + AGENT_HALF[0] + 0.01, self.pos[envs, 1]
        foot = AGENT_HALF[1] - 0.01
        under = self._lookup(self.solid, r, c - foot, envs) | self._lookup(
            self.solid, r, c + foot, envs
        )
        return under & (self.vel[envs, 0] == 0)

    def _move(self, axis: int, d: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """One sub-step of ``d`` tiles along ``axis`` (0 rows, 1 cols) for the ``sel`` agents;
        a move into a solid tile stops flush against it. Returns which were blocked."""
        sel = sel & (d != 0)
        if not sel.any():
            return sel
        new = self.pos[:, axis] + d
        other = self.pos[:, 1 - axis]
        h, ho = AGENT_HALF[axis], AGENT_HALF[1 - axis] * MARGIN
        lead = new + np.copysign(h * MARGIN, d)  # the trailing side was free before the move
        rows, cols = (lead, other) if axis == 0 else (other, lead)
        if axis == 0:
            blocked = self._lookup(self.solid, rows, cols - ho) | self._lookup(
                self.solid, rows, cols + ho
            )
        else:
            blocked = self._lookup(self.solid, rows - ho, cols) | self._lookup(
                self.solid, rows + ho, cols
            )
        blocked &= sel
        if blocked.any():
            snapped = np.where(d > 0, np.floor(new + h) - h, np.ceil(new - h) + h)
            new = np.where(blocked, snapped, new)
        np.copyto(self.pos[:, axis], new, where=sel)
        return blocked

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move every agent and enemy and draw the observations; returns (reward, terminated,
        truncated)."""
        actions = self.check_actions(actions)
        move = np.where(actions < 9, actions, 4)
        ax, ay = move // 3 - 1, move % 3 - 1
        support = self.support  # as the last step (or the level's load) left it
        prev_row = self.pos[:, 0].copy()
        ay = np.where((ay > 0) & ~support, 0, ay)  # jumps only from the ground

        # velocity (procgen CoinRun's update_agent_velocity; vr is the row velocity, down positive)
        vr, vc = self.vel[:, 0], self.vel[:, 1]
        mix = np.where(support, GROUND_MIX, GROUND_MIX * AIR_CONTROL)
        vc = (1 - mix) * vc + mix * MAX_SPEED * ax
        vc = np.where(np.abs(vc) < mix * MAX_SPEED, 0.0, vc)
        jump = ay > 0
        vr = np.where(jump, -JUMP_SPEED, vr - np.where(support, 0.2 * ay, 0.0))
        vr = np.where(jump, vr, np.clip(vr + GRAVITY, -JUMP_SPEED, JUMP_SPEED))

        # sub-steps: x before y when walking, y first when jumping or pressing down (procgen)
        k = np.maximum(4, (4 * np.hypot(vr, vc)).astype(np.int64))
        x_first = np.where(ay != 0, False, np.where(ax != 0, True, np.abs(vc) >= np.abs(vr)))
        free_r = np.zeros(self.n)
        free_c = np.zeros(self.n)
        active = np.ones(self.n, dtype=bool)
        for s in range(int(k.max())):
            on = active & (s < k)
            dr, dc = vr / k, vc / k
            blocked_c = self._move(1, dc, on & x_first)
            blocked_r = self._move(0, dr, on)
            blocked_c |= self._move(1, dc, on & ~x_first)
            free_r += on & ~blocked_r
            free_c += on & ~blocked_c
            active &= ~(blocked_r & blocked_c)
        self.vel[:, 0] = vr * free_r / k
        self.vel[:, 1] = vc * free_c / k
        self._step_enemies()
        self.steps += 1
        self.support = self._supported(self._all)
        return self._outcomes(prev_row)

    def _step_enemies(self) -> None:
        """Enemies walk 0.15 tiles per step and turn where a wall or a ledge is ahead."""
        er, ec, d = self.enemy_pos[..., 0], self.enemy_pos[..., 1], self.enemy_dir
        new = ec + ENEMY_SPEED * d
        lead = new + d * (ENEMY_HALF[1] - 1e-6)
        wall = self._lookup(self.solid, er, lead)
        ledge = ~self._lookup(self.solid, er + 1, lead)
        turn = self.enemy_valid & (wall | ledge)
        walk = self.enemy_valid & ~turn
        self.enemy_pos[..., 1] = np.where(walk, new, ec)
        self.enemy_dir[...] = np.where(turn, -d, d)

    def _outcomes(self, prev_row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rewards and ends of the step, and the labels of how it ended (``prev_row``: the
        agents' rows before it)."""
        ar, ac = self.pos[:, 0:1], self.pos[:, 1:2]
        lava, coin = self._box_touches((LAVA, COIN))
        dr, dc = self.enemy_pos[..., 0] - ar, self.enemy_pos[..., 1] - ac
        enemy_hit = (
            self.enemy_valid
            & (np.abs(dr) < AGENT_HALF[0] + ENEMY_HALF[0])
            & (np.abs(dc) < AGENT_HALF[1] + ENEMY_HALF[1])
        )
        saw_hit = (
            self.saw_valid
            & (np.abs(self.saw_pos[..., 0] - ar) < AGENT_HALF[0] + SAW_HALF[0])
            & (np.abs(self.saw_pos[..., 1] - ac) < AGENT_HALF[1] + SAW_HALF[1])
        )
        hits = np.stack(
            [
                saw_hit.any(axis=1),
                enemy_hit.any(axis=1),
                lava,
                self.pos[:, 0] - AGENT_HALF[0] > HEIGHT,
            ],
            axis=1,
        )
        n_hits = hits.sum(axis=1)
        dead = n_hits > 0
        self.success = coin & ~dead
        terminated = dead | self.success
        truncated = (self.steps >= self.config.max_steps) & ~terminated
        self.cause = np.select(
            [n_hits > 1, dead, truncated],
            [MULTIPLE, np.argmax(hits, axis=1) + BY_SAW, TIMEOUT],
            NONE,
        ).astype(np.int8)
        # where the agent met the (first) enemy that killed it
        first = np.argmax(enemy_hit, axis=1)
        idx = np.arange(self.n)
        e_r, e_c = self.enemy_pos[idx, first, 0], self.enemy_pos[idx, first, 1]
        above = prev_row + AGENT_HALF[0] <= e_r - ENEMY_HALF[0] + 1e-9  # it came down on it
        front = np.sign(self.pos[:, 1] - e_c) == self.enemy_dir[idx, first]
        side = np.where(above, 3, np.where(front, 1, 2))
        self.enemy_side = np.where(enemy_hit.any(axis=1), side, 0).astype(np.int8)
        reward = np.where(self.success, COIN_REWARD, 0.0).astype(np.float32)
        self.observe(idx)
        return reward, terminated, truncated

    # -- observation and labels ----------------------------------------------------------------
    def _paint_canvas(self, i: int) -> None:
        """The static picture of slot ``i``'s padded level (tiles, coin, saws) at p px per tile."""
        cfg, p = self.config, self.p
        codes = _render_codes(self.kind[i])
        drawn = codes.copy()
        if cfg.invisible_saws:
            drawn[drawn == SAW] = EMPTY
        rgb, kinds = _tile_sprites(p, cfg.monochrome, cfg.salient_saws)
        self.canvas[i] = _tiled(rgb, drawn)
        if cfg.masks:
            self.kind_canvas[i] = _tiled(kinds, codes)
            slots = np.repeat(np.repeat(self.saw_slot[i], p, axis=0), p, axis=1)
            self.slot_canvas[i] = np.where(self.kind_canvas[i] == SAW, slots, -1)

    def _boxes(self, envs: np.ndarray, snap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Drawn boxes (top, bottom, left, right) in tiles of the saws (k, S, 4), enemies (k, E, 4)
        and agent (k, 4); ``snap``: the cells they are drawn in (symbolic)."""

        def box(pos: np.ndarray, half: tuple[float, float]) -> np.ndarray:
            r, c = pos[..., 0], pos[..., 1]
            if snap and half is not AGENT_HALF:  # an object fills the cell holding its centre
                r0, c0 = np.floor(r), np.floor(c)
                return np.stack([r0, r0 + 1, c0, c0 + 1], axis=-1)
            out = np.stack([r - half[0], r + half[0], c - half[1], c + half[1]], axis=-1)
            if snap:  # the agent fills every cell its box overlaps
                out[..., [0, 2]] = np.floor(out[..., [0, 2]])
                out[..., [1, 3]] = np.ceil(out[..., [1, 3]] - 1e-6)
            return out

        return (
            box(self.saw_pos[envs], SAW_HALF),
            box(self.enemy_pos[envs], ENEMY_HALF),
            box(self.pos[envs], AGENT_HALF),
        )

    @staticmethod
    def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether boxes ``a`` and ``b`` (broadcast, last axis top/bottom/left/right) share area."""
        return (
            (a[..., 0] < b[..., 1])
            & (b[..., 0] < a[..., 1])
            & (a[..., 2] < b[..., 3])
            & (b[..., 2] < a[..., 3])
        )

    def _visibility(self, envs: np.ndarray, view: np.ndarray, snap: bool) -> None:
        """In-view and occluded flags of the saws and enemies of ``envs``.

        ``view`` (k, 4) is the observed region in tiles. Occluded: a later-drawn object (an enemy
        over a saw, a later enemy or the agent over an enemy) that the observation shows covers
        part of its drawn box.
        """
        # slots fill from 0: only the first (most used in the batch) are looked at
        ns = int(self.saw_valid[envs].sum(axis=1).max(initial=0))
        ne = int(self.enemy_valid[envs].sum(axis=1).max(initial=0))
        saws, enemies, agent = self._boxes(envs, snap)
        saws, enemies = saws[:, :ns], enemies[:, :ne]
        sv, ev = self.saw_valid[envs, :ns], self.enemy_valid[envs, :ne]
        shown = ev & (not self.config.invisible_enemies)
        by_enemy = (self._overlap(saws[:, :, None], enemies[:, None]) & shown[:, None]).any(axis=2)
        later = np.triu(np.ones((ne, ne), dtype=bool), k=1)
        over = self._overlap(enemies[:, :, None], enemies[:, None]) & later & shown[:, None]
        for flags, value in (
            (self.saw_in_view, sv & self._overlap(saws, view[:, None])),
            (self.saw_occluded, sv & (by_enemy | self._overlap(saws, agent[:, None]))),
            (self.enemy_in_view, ev & self._overlap(enemies, view[:, None])),
            (self.enemy_occluded, ev & (over.any(axis=2) | self._overlap(enemies, agent[:, None]))),
        ):
            flags[envs] = False
            flags[envs, : value.shape[1]] = value

    def observe(self, envs: np.ndarray) -> None:
        """Draw the observations (and labels) of ``envs`` from the current state."""
        if self.config.obs_mode == "symbolic":
            self._observe_symbolic(envs)
        else:
            self._observe_rgb(envs)

    def _view_origin(self, envs: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left cell/pixel (in padded coordinates) of the views centred on the agents."""
        half = self.side // 2
        r = np.clip(self.pos[envs, 0], -2, HEIGHT + 2)
        if p == 1:  # symbolic: centred on the agent's tile
            return (np.floor(r).astype(np.int64) + self.m - half,
                    np.floor(self.pos[envs, 1]).astype(np.int64) + self.m - half)  # fmt: skip
        return (np.round(r * p).astype(np.int64) + self.m * p - half,
                np.round(self.pos[envs, 1] * p).astype(np.int64) + self.m * p - half)  # fmt: skip

    def _observe_symbolic(self, envs: np.ndarray) -> None:
        cfg, v, m, k = self.config, self.config.view, self.m, len(envs)
        y0, x0 = self._view_origin(envs, 1)
        static = self._kind_windows[envs, y0, x0]  # (k, v, v)
        top = static.copy()
        if cfg.invisible_saws:
            top[top == SAW] = EMPTY
        slot = np.where(top == SAW, self._slot_windows[envs, y0, x0], -1).astype(np.int16)
        facing = np.zeros((k, v, v), dtype=np.int8)
        env_idx = np.arange(k)[:, None]
        # enemies, in slot order, in the cell holding their centre
        er = np.floor(self.enemy_pos[envs, :, 0]).astype(np.int64) + m - y0[:, None]
        ec = np.floor(self.enemy_pos[envs, :, 1]).astype(np.int64) + m - x0[:, None]
        inside = self.enemy_valid[envs] & (er >= 0) & (er < v) & (ec >= 0) & (ec < v)
        mask_enemy = np.zeros((k, v, v), dtype=bool)
        e_env, e_slot = np.nonzero(inside)
        mask_enemy[e_env, er[e_env, e_slot], ec[e_env, e_slot]] = True
        if not cfg.invisible_enemies and len(e_env):
            cells = (e_env, er[e_env, e_slot], ec[e_env, e_slot])
            top[cells] = ENEMY
            slot[cells] = e_slot
            facing[cells] = self.enemy_dir[envs[e_env], e_slot]
        # the agent, in every cell its box overlaps
        mask_agent = np.zeros((k, v, v), dtype=bool)
        ar, ac = self.pos[envs, 0], self.pos[envs, 1]
        for rr in (ar - AGENT_HALF[0], ar + AGENT_HALF[0] - 1e-6):
            for cc in (ac - AGENT_HALF[1], ac + AGENT_HALF[1] - 1e-6):
                r = np.floor(rr).astype(np.int64) + m - y0
                c = np.floor(cc).astype(np.int64) + m - x0
                ok = (r >= 0) & (r < v) & (c >= 0) & (c < v)
                cells = (env_idx[ok, 0], r[ok], c[ok])
                mask_agent[cells] = True
                top[cells] = AGENT
                slot[cells] = -1
        obs = np.zeros((k, len(CHANNELS), v, v), dtype=np.uint8)
        for ch, code in enumerate((WALL, CRATE, LAVA, COIN, SAW)):
            obs[:, ch] = top == code
        obs[:, 5] = (top == ENEMY) & (facing < 0)
        obs[:, 6] = (top == ENEMY) & (facing > 0)
        obs[:, 7] = top == AGENT
        if cfg.paint_vel_info:  # quantised: col velocity 0..8 (4 = still), row velocity 0..12
            obs[:, 8, 0, 0] = np.clip(np.round(self.vel[envs, 1] * 8) + 4, 0, 8)
            obs[:, 8, 0, 1] = np.clip(np.round(self.vel[envs, 0] * 4) + 6, 0, 12)
        self.obs[envs] = obs
        view = np.stack([y0 - m, y0 - m + v, x0 - m, x0 - m + v], axis=1).astype(np.float64)
        self._visibility(envs, view, snap=True)
        if cfg.masks:
            self._store_labels(envs, static, mask_enemy, mask_agent, top, slot)

    def _observe_rgb(self, envs: np.ndarray) -> None:
        cfg, p, s, m, k = self.config, self.p, self.side, self.m, len(envs)
        y0, x0 = self._view_origin(envs, p)
        whole = k == self.n  # every env, in order: draw in place
        out = self.obs if whole else np.empty((k, s, s, 3), dtype=np.uint8)
        labels = cfg.masks
        if labels:
            static = np.empty((k, s, s), dtype=np.uint8)
            slot = np.empty((k, s, s), dtype=np.int16)
        # slices of the level pictures: a copy per env beats one strided gather several times
        for j, i in enumerate(envs.tolist()):
            rows, cols = slice(y0[j], y0[j] + s), slice(x0[j], x0[j] + s)
            out[j] = self.canvas[i, rows, cols]
            if labels:
                static[j] = self.kind_canvas[i, rows, cols]
                slot[j] = self.slot_canvas[i, rows, cols]
        if labels:
            top = static.copy()
            if cfg.invisible_saws:
                top[top == SAW] = EMPTY
                slot[static == SAW] = -1
            mask_enemy = np.zeros((k, s, s), dtype=bool)
            mask_agent = np.zeros((k, s, s), dtype=bool)
        left, right, agent = _dynamic_sprites(p, cfg.monochrome)

        def paint(sprite: _Sprite, env: np.ndarray, pos: np.ndarray, half: tuple[float, float],
                  kind: int, slots: np.ndarray | None, mask: np.ndarray | None) -> None:  # fmt: skip
            dy, dx = np.nonzero(sprite.mask)
            rows = (np.round((pos[:, 0] - half[0]) * p).astype(np.int64) + m * p - y0[env])[
                :, None
            ] + dy
            cols = (np.round((pos[:, 1] - half[1]) * p).astype(np.int64) + m * p - x0[env])[
                :, None
            ] + dx
            ok = (rows >= 0) & (rows < s) & (cols >= 0) & (cols < s)  # the pixels in view
            which, pix = np.nonzero(ok)
            where = (env[which], rows[which, pix], cols[which, pix])
            if mask is not None:
                mask[where] = True
            if kind == ENEMY and cfg.invisible_enemies:
                return
            out[where] = sprite.rgb[dy[pix], dx[pix]]
            if labels:
                top[where] = kind
                slot[where] = -1 if slots is None else slots[which]

        e_env, e_slot = np.nonzero(self.enemy_valid[envs])
        facing = self.enemy_dir[envs[e_env], e_slot]
        for sprite, sel in ((left, facing < 0), (right, facing > 0)):
            paint(sprite, e_env[sel], self.enemy_pos[envs[e_env[sel]], e_slot[sel]], ENEMY_HALF,
                  ENEMY, e_slot[sel], mask_enemy if labels else None)  # fmt: skip
        paint(agent, np.arange(k), self.pos[envs], AGENT_HALF, AGENT, None,
              mask_agent if labels else None)  # fmt: skip
        if cfg.paint_vel_info:  # two grey squares, a tile each: col velocity, then row velocity
            up = -self.vel[envs, 0]
            for j, grey in enumerate(
                (
                    _shade(0.5 * self.vel[envs, 1] / MAX_SPEED + 0.5),
                    _shade(0.5 * up / JUMP_SPEED + 0.5),
                )
            ):
                square = (slice(None), slice(0, p), slice(j * p, (j + 1) * p))
                out[square] = grey[:, None, None, None]
                if labels:
                    top[square] = HUD
                    slot[square] = -1
        if not whole:
            self.obs[envs] = out
        origin_r = (y0 - m * p) / p
        origin_c = (x0 - m * p) / p
        view = np.stack([origin_r, origin_r + s / p, origin_c, origin_c + s / p], axis=1)
        self._visibility(envs, view, snap=False)
        if labels:
            self._store_labels(envs, static, mask_enemy, mask_agent, top, slot)

    def _store_labels(self, envs: np.ndarray, static: np.ndarray, mask_enemy: np.ndarray,
                      mask_agent: np.ndarray, top: np.ndarray, slot: np.ndarray) -> None:  # fmt: skip
        """Per-kind masks (whole objects, hidden parts included) and the top-most kind and object
        (the saw or enemy slot, -1 for others) at observation resolution."""
        if not self.labels:
            shape = (self.n, self.side, self.side)
            for name in ("wall", "crate", "lava", "coin", "saw", "enemy", "agent"):
                self.labels[f"mask_{name}"] = np.zeros(shape, dtype=bool)
            self.labels["top_kind"] = np.zeros(shape, dtype=np.uint8)
            self.labels["top_object"] = np.zeros(shape, dtype=np.int16)
        for name, code in (("wall", WALL), ("crate", CRATE), ("lava", LAVA), ("coin", COIN),
                           ("saw", SAW)):  # fmt: skip
            self.labels[f"mask_{name}"][envs] = static == code
        self.labels["mask_enemy"][envs] = mask_enemy
        self.labels["mask_agent"][envs] = mask_agent
        self.labels["top_kind"][envs] = top
        self.labels["top_object"][envs] = slot

    def infos(self) -> dict[str, np.ndarray]:
        """Ground-truth labels for every level (vector-env layout: arrays plus ``_key`` masks)."""
        info: dict[str, np.ndarray] = {
            "agent_pos": self.pos.copy(),
            "agent_vel": self.vel.copy(),
            "on_ground": self.support.copy(),
            "coin_pos": self.coin.copy(),
            "saw_pos": self.saw_pos.copy(),
            "saw_valid": self.saw_valid.copy(),
            "saw_in_view": self.saw_in_view.copy(),
            "saw_occluded": self.saw_occluded.copy(),
            "enemy_pos": self.enemy_pos.copy(),
            "enemy_dir": self.enemy_dir.copy(),
            "enemy_valid": self.enemy_valid.copy(),
            "enemy_in_view": self.enemy_in_view.copy(),
            "enemy_occluded": self.enemy_occluded.copy(),
            "death_cause": np.array(CAUSES)[self.cause],
            "enemy_side": np.array(ENEMY_SIDES)[self.enemy_side],
            "level_seed": self.level_seed.copy(),
            "difficulty": self.difficulty.copy(),
            "steps": self.steps.copy(),
            "success": self.success.copy(),
        }
        info.update({k: v.copy() for k, v in self.labels.items()})
        ones = np.ones(self.n, dtype=bool)
        info.update({f"_{k}": ones for k in list(info)})
        return info


# -- a search for the way to the coin -----------------------------------------------------------
SEARCH_MOVES = (7, 8, 4, 5, 1, 2)
"""The actions the search tries: right, right+jump, noop, jump, left, left+jump."""


class _SearchBatch(HazardsBatch):
    """A batch that steps the physics without drawing: the search reads positions, not pixels."""

    def observe(self, envs: np.ndarray) -> None:
        pass


def solve_level(state: HazardsState, max_steps: int = 500, beam: int = 256) -> list[int] | None:
    """Actions taking the agent from ``state`` to the coin alive, or None if the search finds none.

    A beam search over the world's own physics (:class:`HazardsBatch`): each step tries
    :data:`SEARCH_MOVES` from every kept state, merges states that agree to a quarter tile in
    position and an eighth of a tile per step in velocity, and keeps the ``beam`` furthest right.
    Enemies walk the same way whatever the agent does, so states of one step share them. A path it
    returns is a certificate (play it in :class:`HazardsEnv` to see); None is not a proof that
    none exists.
    """
    moves = np.array(SEARCH_MOVES)
    n = beam * len(moves)
    batch = _SearchBatch(HazardsConfig(masks=False, max_steps=state.steps + max_steps + 1), n)
    batch.load(0, state, observe=False)
    for name in ("kind", "solid", "saw_slot", "saw_pos", "saw_valid", "enemy_pos", "enemy_dir",
                 "enemy_valid", "coin", "steps"):  # fmt: skip
        array = getattr(batch, name)
        array[1:] = array[0]
    pos, vel, support = batch.pos[:1].copy(), batch.vel[:1].copy(), batch.support[:1].copy()
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per step: (parent, action) of each kept state
    for _ in range(max_steps):
        tried = len(pos) * len(moves)
        parent = np.resize(np.repeat(np.arange(len(pos)), len(moves)), n)
        actions = np.resize(moves, n)
        batch.pos[:], batch.vel[:], batch.support[:] = pos[parent], vel[parent], support[parent]
        _, terminated, _ = batch.step(actions)
        won = np.nonzero(batch.success[:tried])[0]
        if len(won):
            path, j = [int(actions[won[0]])], int(parent[won[0]])
            for back_parent, back_action in reversed(trail):
                path.append(int(back_action[j]))
                j = int(back_parent[j])
            return path[::-1]
        alive = np.nonzero(~terminated[:tried])[0]
        if not len(alive):
            return None
        keys = np.concatenate(
            [np.round(batch.pos[alive] * 4), np.round(batch.vel[alive] * 8)], axis=1
        )
        _, first = np.unique(keys, axis=0, return_index=True)
        kept = alive[first]
        kept = kept[np.argsort(-batch.pos[kept, 1], kind="stable")[:beam]]
        trail.append((parent[kept], actions[kept]))
        pos, vel, support = (
            batch.pos[kept].copy(),
            batch.vel[kept].copy(),
            batch.support[kept].copy(),
        )
    return None


# -- the whole-level picture -----------------------------------------------------------------------
def render_level(
    state: HazardsState,
    tile_px: int = 12,
    outline: bool = True,
    trajectory: list[tuple[float, float]] | None = None,
    crop: bool = True,
) -> np.ndarray:
    """The whole level as an RGB image (H x W x 3 uint8), hazards outlined, agent and enemies drawn.

    Outlines: saws red, enemies magenta, lava orange, chasms (columns open to the bottom) dark red.
    ``trajectory`` (agent centres) is drawn as a line; ``crop`` cuts the wall after the coin.
    """
    from PIL import Image, ImageDraw

    p = tile_px
    rgb, _ = _tile_sprites(p, False)
    img = _tiled(rgb, _render_codes(state.tiles))
    left, right, agent = _dynamic_sprites(p, False)
    for pos, d in zip(state.enemies, state.enemy_dirs, strict=True):
        _stamp(img, right if d > 0 else left, pos, ENEMY_HALF, p)
    _stamp(img, agent, np.array(state.agent), AGENT_HALF, p)
    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    width = max(1, p // 6)
    if outline:
        for r, c in state.saws:
            draw.rectangle(_rect(r, c, SAW_HALF, p), outline=(220, 20, 20), width=width)
        for r, c in state.enemies:
            draw.rectangle(_rect(r, c, ENEMY_HALF, p), outline=(230, 0, 230), width=width)
        lava = state.tiles == LAVA
        for c in range(WIDTH):
            rows = np.nonzero(lava[:, c])[0]
            if len(rows):
                draw.rectangle([c * p, rows[0] * p, (c + 1) * p - 1, (rows[-1] + 1) * p - 1],
                               outline=(255, 140, 0), width=width)  # fmt: skip
            if state.tiles[HEIGHT - 1, c] == EMPTY:
                draw.rectangle([c * p, (HEIGHT - 1) * p, (c + 1) * p - 1, HEIGHT * p - 1],
                               outline=(140, 0, 0), width=width)  # fmt: skip
    if trajectory:
        pts = [(c * p, r * p) for r, c in trajectory]
        draw.line(pts, fill=(255, 255, 255), width=max(1, p // 5))
    out = np.asarray(pic)
    return out[:, : min(WIDTH, state.length + 2) * p] if crop else out


def _rect(r: float, c: float, half: tuple[float, float], p: int) -> list[float]:
    return [(c - half[1]) * p, (r - half[0]) * p, (c + half[1]) * p - 1, (r + half[0]) * p - 1]


def _stamp(
    img: np.ndarray, sprite: _Sprite, pos: np.ndarray, half: tuple[float, float], p: int
) -> None:
    """Paint a sprite into an RGB image at a centre position (clipped at the edges)."""
    h, w = sprite.mask.shape
    ty, tx = round((pos[0] - half[0]) * p), round((pos[1] - half[1]) * p)
    dy, dx = np.nonzero(sprite.mask)
    rows, cols = ty + dy, tx + dx
    ok = (rows >= 0) & (rows < img.shape[0]) & (cols >= 0) & (cols < img.shape[1])
    img[rows[ok], cols[ok]] = sprite.rgb[dy[ok], dx[ok]]


# -- Gymnasium envs ----------------------------------------------------------------------------------
class HazardsEnv(BatchedEnv):
    """One hazard level as a Gymnasium environment (``gymnasium.make("policylens/Hazards-v0")``)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    config_class = HazardsConfig
    batch_class = HazardsBatch
    state_class = HazardsState
    render_state = staticmethod(render_level)


class HazardsVecEnv(BatchedVecEnv):
    """N hazard levels as one NumPy-batched Gymnasium ``VectorEnv`` (same-step autoreset; the
    ended level's labels, ``death_cause`` among them, in ``infos["final_info"]``)."""

    config_class = HazardsConfig
    batch_class = HazardsBatch
    state_class = HazardsState
    render_state = staticmethod(render_level)
