"""Frame sampling: which K frames of a video the quality model sees.

:func:`frame_indices` is the one rule from (frame count, sampler, K) to frame indices, used by
the engine's frame sources, ``engine.sample_frames``, training and the benchmarks:

* a sampler that ignores motion (``needs_motion`` false: ``uniform``, ``random``,
  ``uniform_random_start``) picks among ALL N frames of the video — so ``uniform`` is the
  official Q-CLIP loader's ``linspace(0, N-1, K).round()`` for every N and K, and only its K
  frames need decoding;
* a sampler that reads motion picks among the analysis candidates, at most
  ``max_analysis_frames`` (512) frame indices at a uniform stride (:func:`candidate_indices`),
  by their per-frame motion ``m``. The candidate cap bounds motion analysis only.

Every strategy is a pure function of the per-frame motion ``m`` (``frame_mse``, float
``[N]``; higher = more motion, zeros for the motion-free ones, which read only N), ``K``
and, where it draws, a ``numpy`` Generator. All return ``K`` int64 indices (positions in
the N frames they were given) and repeat indices when ``N < K`` instead of failing; all but
``temporal_fragments:T`` return them in non-decreasing temporal order. ``temporal_fragments:T``
keeps the released FAST-VQA order: its segments in turn, and a segment that runs past the last
frame wraps around to the first ones (indices mod N), so its indices can go back in time —
the model sees the frames in that order (the decoders return frames in the order asked,
repeats included).

=======================  ==============================================================
strategy                 rule (``s = N / K``)
=======================  ==============================================================
uniform                  ``linspace(0, N-1, K).round()`` (numpy half-to-even, as the
                         official Q-CLIP code); seed ignored
random                   K distinct uniform draws, sorted; ``N < K``: every frame once
                         plus ``K - N`` draws with replacement, sorted
uniform_random_start     ``floor(r + i·s)`` clipped to ``N-1``; ``r ~ U[0, s)`` when
                         training, ``r = s/2`` at evaluation
mse_sorted_uniform       rank frames by ``m`` (stable: ties keep temporal order), take
                         ranks ``linspace(0, N-1, K).round()``, re-sort by time
segment_mse_mean         K contiguous segments ``[floor(i·N/K), floor((i+1)·N/K))``; in
                         each, the frame whose ``m`` is closest to the segment mean
                         (ties → earliest)
segment_mse_median       the same with the segment median
mixed                    training: one of the six above, uniformly, per call;
                         evaluation: ``segment_mse_mean``
segment_middle           the released CLIPVQA rule, ``t = (N-1)/K``: evaluation
                         ``floor(i·t + t/2)``, the middle of K equal segments;
                         training ``i·d + r_i`` with ``d = floor(t)`` and
                         ``r_i ~ U{0 … d-1}``, or ``round(i·t)`` when ``d = 0``
temporal_fragments:T     FAST-VQA's temporal fragments (released ``FragmentSampleFrames``,
                         its ``fragments_t`` = T): T segments of ``L = N // T`` frames
                         starting at ``i·L``; in segment i, ``f = K/T`` frames at stride
                         ``s = 2`` (``FRAGMENT_FRAME_STRIDE``): ``i·L + r_i + j·s`` mod N
                         (a short video wraps around, as released); training
                         ``r_i ~ U{0 … L - f·s - 1}`` when ``L > f·s``, else 0;
                         evaluation (ours; released draws here too)
                         ``r_i = (L - f·s) // 2`` when ``L > f·s``, else 0. K must be a
                         multiple of T (ValueError at pick time); any T ≥ 1
=======================  ==============================================================

Parametrised samplers: a family registered with :func:`register_sampler_family` answers every
name ``prefix:param`` (``temporal_fragments:8``) through :func:`check_sampler` (which configs,
the engine, training and the artifact schema ask), built once per name and never stored in
``SAMPLERS``: ``SAMPLER_NAMES`` and ``MIXED_CHOICES`` do not grow (``mixed`` never draws from a
family).

Segments when ``N < K``: some ``[floor(i·N/K), floor((i+1)·N/K))`` are empty, so segment
``i`` is taken to be the single frame ``floor(i·N/K)`` (for ``N < K`` every segment has at
most one frame, so this is the rule for all of them). The segment strategies then return
``floor(i·N/K)`` whatever ``m`` is, i.e. every frame, in order, each repeated about
``K/N`` times. Segment boundaries are computed in exact integer arithmetic
(``i·N // K``): ``floor(np.linspace(0, N, K+1))`` is the same rule but can land one frame
early when ``i·N/K`` is an integer that ``linspace`` computes a hair below (e.g. N=122,
K=14, i=7).

``select_frames`` runs one strategy on a motion array; :func:`frame_indices` maps its picks
to frame indices as above. Determinism: the Generator is
``np.random.default_rng(seed)``, so a given ``(strategy, mse, k, seed, training)`` always
gives the same indices; the strategies that do not draw (every strategy at evaluation
except ``random``) are deterministic even with ``seed=None``.
"""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass
from typing import Callable

from ..defaults import MAX_ANALYSIS_FRAMES

__all__ = [
    "candidate_indices",
    "frame_indices",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "MIXED_CHOICES",
    "Sampler",
    "check_sampler",
    "select_frames",
    "uniform",
    "random_indices",
    "uniform_random_start",
    "mse_sorted_uniform",
    "segment_bounds",
    "segment_mse_mean",
    "segment_mse_median",
    "segment_middle",
    "temporal_fragments",
    "FRAGMENT_FRAME_STRIDE",
    "SAMPLER_FAMILIES",
    "register_sampler_family",
    "choose_mixed_strategy",
]


# -- candidates ------------------------------------------------------------------------------
def candidate_indices(frame_count: int, max_frames: int = MAX_ANALYSIS_FRAMES) -> np.ndarray:
    """At most ``max_frames`` frame indices at a uniform stride over ``frame_count`` frames: the
    frames whose motion is analysed for a sampler that needs motion (see :func:`frame_indices`)."""
    if frame_count <= max_frames:
        return np.arange(frame_count, dtype=np.int64)
    return np.unique(np.linspace(0, frame_count - 1, max_frames).round().astype(np.int64))


# -- validation ----------------------------------------------------------------------------
def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    return int(k)


def _check_nk(n, k) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n < 1:
        raise ValueError(f"cannot sample from {n} frames: need at least one candidate frame")
    return int(n), _check_k(k)


def _check_mse(mse) -> np.ndarray:
    """``mse`` as float64 ``[N]`` (float32 → float64 is exact, so ranks and ties are kept)."""
    try:
        m = np.asarray(mse, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"mse must be a 1-D array of numbers: {e}") from None
    if m.ndim != 1:
        raise ValueError(f"mse must be 1-D [N], got shape {m.shape}")
    if m.size == 0:
        raise ValueError("cannot sample from 0 frames: mse is empty")
    if not np.isfinite(m).all():
        bad = np.flatnonzero(~np.isfinite(m))
        raise ValueError(f"mse must be finite; non-finite values at frames {bad[:10].tolist()}")
    return m


def _uniform_positions(n: int, k: int) -> np.ndarray:
    # The official Q-CLIP formula, numpy's half-to-even round included.
    return np.linspace(0, n - 1, k).round().astype(np.int64)


# -- strategies ------------------------------------------------------------------------------
def uniform(n: int, k: int) -> np.ndarray:
    """``linspace(0, N-1, K).round()``: evenly spaced, first and last frame included (K > 1)."""
    n, k = _check_nk(n, k)
    return _uniform_positions(n, k)


def random_indices(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """K distinct frames drawn uniformly, sorted; for ``N < K`` every frame plus ``K-N`` repeats."""
    n, k = _check_nk(n, k)
    if n >= k:
        idx = rng.choice(n, size=k, replace=False)
    else:
        idx = np.concatenate([np.arange(n), rng.integers(0, n, size=k - n)])
    return np.sort(idx).astype(np.int64)


def uniform_random_start(n: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``floor(r + i·s)`` with stride ``s = N/K``; ``r ~ U[0, s)`` from ``rng``, or ``s/2`` if ``rng`` is None."""
    n, k = _check_nk(n, k)
    s = n / k
    r = rng.uniform(0.0, s) if rng is not None else s / 2
    idx = np.floor(r + np.arange(k) * s).astype(np.int64)
    return np.minimum(idx, n - 1)  # guards r + (K-1)·s rounding up to N


def segment_middle(n: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The released CLIPVQA loader's frames (module docstring): with ``rng`` (training) a draw in
    each segment, without it (evaluation) each segment's middle. Its segments span the first N-1
    frames (that loader takes clips of one frame at interval 2, so the last frame is never a start)."""
    n, k = _check_nk(n, k)
    t = (n - 1) / k
    if rng is None:
        return np.floor(np.arange(k) * t + t / 2).astype(np.int64)
    d = (n - 1) // k
    if d > 0:
        return np.arange(k, dtype=np.int64) * d + rng.integers(d, size=k)
    return np.round(np.arange(k) * t).astype(np.int64)  # numpy's half-to-even, as that loader's np.around


# FAST-VQA's frame interval within a temporal fragment (its released configs' frame_interval: 2).
FRAGMENT_FRAME_STRIDE = 2


def temporal_fragments(n: int, k: int, segments: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """FAST-VQA's temporal fragments (module docstring): ``segments`` equal segments, ``k /
    segments`` frames at stride ``FRAGMENT_FRAME_STRIDE`` in each, a drawn start in each when
    ``rng`` is given (training), the centred one without it (evaluation). Indices mod N, in the
    released order (not sorted: a segment that runs past the end wraps around)."""
    n, k = _check_nk(n, k)
    if isinstance(segments, bool) or not isinstance(segments, (int, np.integer)) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    if k % segments:
        raise ValueError(f"temporal_fragments:{segments} takes a frame count that is a multiple of {segments}, got {k}")
    per = k // segments
    length = n // segments
    span = per * FRAGMENT_FRAME_STRIDE  # the frames one segment's picks cover
    if length > span:
        r = (rng.integers(length - span, size=segments) if rng is not None
             else np.full(segments, (length - span) // 2))
    else:
        r = np.zeros(segments, dtype=np.int64)
    starts = np.arange(segments, dtype=np.int64) * length + r
    return ((starts[:, None] + np.arange(per) * FRAGMENT_FRAME_STRIDE).reshape(-1) % n).astype(np.int64)


def mse_sorted_uniform(mse: np.ndarray, k: int) -> np.ndarray:
    """Uniform over the frames ranked by motion (stable), re-sorted by time."""
    m = _check_mse(mse)
    k = _check_k(k)
    order = np.argsort(m, kind="stable")
    return np.sort(order[_uniform_positions(m.size, k)]).astype(np.int64)


def segment_bounds(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and (exclusive) end of the K segments, ``floor(i·N/K)`` in exact integer arithmetic.

    A segment that would be empty (only when ``N < K``) is widened to its single start
    frame ``floor(i·N/K)``.
    """
    n, k = _check_nk(n, k)
    b = np.arange(k + 1, dtype=np.int64) * n // k
    starts = b[:-1]
    return starts, np.maximum(b[1:], starts + 1)


def _segment_closest(mse, k: int, centre) -> np.ndarray:
    m = _check_mse(mse)
    starts, ends = segment_bounds(m.size, k)
    out = np.empty(len(starts), dtype=np.int64)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        seg = m[a:b]
        out[i] = a + int(np.argmin(np.abs(seg - centre(seg))))  # argmin: first → earliest on ties
    return out


def segment_mse_mean(mse: np.ndarray, k: int) -> np.ndarray:
    """Per segment, the frame whose motion is closest to the segment's mean (ties → earliest)."""
    return _segment_closest(mse, k, np.mean)


def segment_mse_median(mse: np.ndarray, k: int) -> np.ndarray:
    """Per segment, the frame whose motion is closest to the segment's median (ties → earliest)."""
    return _segment_closest(mse, k, np.median)


# -- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    """A named frame-sampling rule.

    ``pick(m, k, rng, training)`` returns K positions among the N frames ``m`` describes;
    ``needs_motion`` says whether it reads ``m`` at all. Those that do not pick among every
    frame of the video and only their picks are decoded (by seeking); those that do pick
    among the analysis candidates (:func:`frame_indices`). ``draws`` says whether its training
    picks come from the Generator, so change from epoch to epoch.
    """

    name: str
    needs_motion: bool
    pick: Callable[[np.ndarray, int, np.random.Generator, bool], np.ndarray]
    draws: bool = False


SAMPLERS: dict[str, Sampler] = {}
# prefix → (builder of the Sampler for a parameter string, the family's name form, in words)
SAMPLER_FAMILIES: dict[str, tuple[Callable[[str], Sampler], str]] = {}
_built: dict[str, Sampler] = {}  # a family's samplers, built once per name


def register_sampler_family(prefix: str, build: Callable[[str], Sampler], form: str) -> None:
    """Add a parametrised sampler family: ``prefix:param`` names the Sampler ``build(param)`` returns
    (``build`` raises ValueError for a bad parameter); ``form`` shows the name's form in errors."""
    if prefix in SAMPLER_FAMILIES or ":" in prefix:
        raise ValueError(f"sampler family {prefix!r} is already registered or malformed")
    SAMPLER_FAMILIES[prefix] = (build, form)


def _family_sampler(name) -> Sampler | None:
    """The family sampler called ``name``; None when no family claims it; ValueError for a family
    name with a bad parameter."""
    if not isinstance(name, str) or ":" not in name:
        return None
    prefix, _, param = name.partition(":")
    if prefix not in SAMPLER_FAMILIES:
        return None
    if name not in _built:
        _built[name] = SAMPLER_FAMILIES[prefix][0](param)
    return _built[name]


def register_sampler(name: str, *, needs_motion: bool, draws: bool = False):
    """Add ``pick`` to the registry under ``name`` (the config, the engine and training see it at once)."""

    def register(pick):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        SAMPLERS[name] = Sampler(name, needs_motion, pick, draws)
        return pick

    return register


register_sampler("uniform", needs_motion=False)(lambda m, k, rng, training: uniform(m.size, k))
register_sampler("random", needs_motion=False, draws=True)(lambda m, k, rng, training: random_indices(m.size, k, rng))
register_sampler("uniform_random_start", needs_motion=False, draws=True)(
    lambda m, k, rng, training: uniform_random_start(m.size, k, rng if training else None))
register_sampler("mse_sorted_uniform", needs_motion=True)(lambda m, k, rng, training: mse_sorted_uniform(m, k))
register_sampler("segment_mse_mean", needs_motion=True)(lambda m, k, rng, training: segment_mse_mean(m, k))
register_sampler("segment_mse_median", needs_motion=True)(lambda m, k, rng, training: segment_mse_median(m, k))

# What ``mixed`` draws from during training: every sampler registered before it.
MIXED_CHOICES = tuple(SAMPLERS)


def choose_mixed_strategy(rng: np.random.Generator) -> str:
    """The strategy ``mixed`` uses for one training call: uniform over ``MIXED_CHOICES``."""
    return MIXED_CHOICES[int(rng.integers(len(MIXED_CHOICES)))]


@register_sampler("mixed", needs_motion=True, draws=True)
def _mixed(m: np.ndarray, k: int, rng: np.random.Generator, training: bool) -> np.ndarray:
    if not training:
        return segment_mse_mean(m, k)
    return SAMPLERS[choose_mixed_strategy(rng)].pick(m, k, rng, True)


# Registered after ``mixed``, so not among its choices: CLIPVQA's own rule (model/clipvqa/).
register_sampler("segment_middle", needs_motion=False, draws=True)(
    lambda m, k, rng, training: segment_middle(m.size, k, rng if training else None))

SAMPLER_NAMES = tuple(SAMPLERS)


def _temporal_fragments_sampler(param: str) -> Sampler:
    if not (param.isascii() and param.isdigit()) or param != str(int(param)) or int(param) < 1:
        raise ValueError(f"unknown sampler 'temporal_fragments:{param}': temporal_fragments:T takes an integer "
                         "T ≥ 1 (the segments), written plainly (e.g. temporal_fragments:8)")
    segments = int(param)
    return Sampler(f"temporal_fragments:{segments}", needs_motion=False, draws=True,
                   pick=lambda m, k, rng, training: temporal_fragments(m.size, k, segments, rng if training else None))


# After SAMPLER_NAMES and MIXED_CHOICES: a family adds names to neither.
register_sampler_family("temporal_fragments", _temporal_fragments_sampler, "temporal_fragments:T (T ≥ 1 segments)")


def check_sampler(name: str, frames: int | None = None) -> Sampler:
    """The sampler called ``name`` (registered, or a family's ``prefix:param``); ``ValueError``
    naming the choices otherwise. With ``frames``, also ValueError unless it can pick that many
    (``temporal_fragments:T`` needs a multiple of T): a model or engine refuses such a pair when
    it is built rather than on every video."""
    if not isinstance(name, str):
        raise ValueError(f"unknown sampler {name!r}; {_choices()}")
    sampler = _family_sampler(name)  # ValueError of its own for a bad parameter
    if sampler is None:
        try:
            sampler = SAMPLERS[name]
        except KeyError:
            raise ValueError(f"unknown sampler {name!r}; {_choices()}") from None
    if frames is not None:
        k = _check_k(frames)
        sampler.pick(np.zeros(k), k, np.random.default_rng(0), False)  # a dry run: ValueError if it cannot
    return sampler


def _choices() -> str:
    families = ", ".join(form for _, form in SAMPLER_FAMILIES.values())
    return f"choose one of {SAMPLER_NAMES}" + (f" or a parametrised one: {families}" if families else "")


# -- entry point -------------------------------------------------------------------------------
def select_frames(
    strategy: str,
    mse: np.ndarray,
    k: int,
    seed: int | None = None,
    training: bool = False,
) -> np.ndarray:
    """Indices (int64 ``[k]``; non-decreasing but for ``temporal_fragments:T``'s wrap-around) of
    the frames to feed the model.

    ``mse`` is the per-frame motion ``m`` of the N candidate frames. ``seed`` seeds
    ``np.random.default_rng``; ``None`` draws fresh entropy, which only matters for
    ``random`` and for training-mode draws. Raises ValueError for an unknown strategy,
    an empty, non-1-D or non-finite ``mse``, or ``k < 1``.
    """
    sampler = check_sampler(strategy)
    m = _check_mse(mse)
    k = _check_k(k)
    return sampler.pick(m, k, np.random.default_rng(seed), bool(training))


def frame_indices(
    frame_count: int,
    sampler: str | Sampler,
    k: int,
    motion: np.ndarray | None = None,
    *,
    candidates: np.ndarray | None = None,
    max_analysis_frames: int = MAX_ANALYSIS_FRAMES,
    seed=None,
    training: bool = False,
) -> np.ndarray:
    """Frame indices (int64 ``[k]`` in ``[0, frame_count)``; non-decreasing, except that
    ``temporal_fragments:T`` may wrap around: module docstring) the model sees.

    The one rule (module docstring). A sampler with ``needs_motion`` false picks among all
    ``frame_count`` frames (``motion`` and ``candidates`` are not read): ``uniform`` gives
    ``linspace(0, frame_count-1, k).round()``. A sampler that needs motion picks among
    ``candidates`` — by default ``candidate_indices(frame_count, max_analysis_frames)``; pass
    the indices actually decoded when a decoder left some out — with ``motion`` the per-frame
    ``m`` of exactly those candidates (required). ``seed`` and ``training`` are
    :func:`select_frames`'. Raises ValueError for an unknown sampler, ``frame_count < 1``,
    ``k < 1``, or missing / mismatched motion.
    """
    s = sampler if isinstance(sampler, Sampler) else check_sampler(sampler)
    n, k = _check_nk(frame_count, k)
    rng = np.random.default_rng(seed)
    if not s.needs_motion:  # every frame of the video; the candidate cap is for motion analysis only
        return np.asarray(s.pick(np.zeros(n), k, rng, bool(training)), dtype=np.int64)
    cand = candidate_indices(n, max_analysis_frames) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if motion is None:
        raise ValueError(f"sampler {s.name!r} needs the motion of its {len(cand)} candidate frames")
    m = _check_mse(motion)
    if m.size != cand.size:
        raise ValueError(f"motion has {m.size} values for {cand.size} candidate frames")
    return cand[s.pick(m, k, rng, bool(training))]
