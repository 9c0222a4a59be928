"""Alert rules with hysteresis: scores, health spans and source states in, alert events out.

Pure bookkeeping, one :class:`SourceAlerts` per source. Every rule is a condition that is bad or
good; an alert is ``raised`` once when its condition has been bad for ``for_s`` and ``cleared``
once when it has been good for ``clear_s`` — never once per window — and may be raised again
after that. A bad spell shorter than ``for_s`` raises nothing; a good spell shorter than
``clear_s`` leaves the alert raised (its clearing starts over at the next good spell).

Rules (``RULES``) and their clocks:

* ``score_below``: bad while the windows' scores are ``< threshold``; ``for_s`` counts media
  seconds covered by consecutive windows below it (``last.end_s − first.start_s ≥ for_s``: one
  window covers ``window_s``). A raised alert clears only on windows scoring
  ``≥ threshold + margin`` covering ``clear_s`` (a window inside the band neither raises nor
  counts towards clearing: a score wavering around the threshold does not flap). Error records
  (no score) are skipped: they neither raise, clear nor break a run.
* ``frozen`` / ``black``: bad from the health's ``start`` span to its ``end`` span
  (``monitor/health.py``: a run already ``freeze_s`` / ``black_s`` long); ``for_s`` /
  ``clear_s`` add wall seconds on top (``tick``'s clock; normally 0).
* ``stalled`` / ``failed``: bad while the source's state is that state; wall seconds.

A state of ``stopped`` clears every raised alert at once (detail ``reason: "stopped"``) and
nothing is raised for the source until its state changes again. Only the rules given produce
events.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

RULES = ("score_below", "frozen", "black", "stalled", "failed")
_STATE_RULES = ("stalled", "failed")
_SPAN_RULES = ("frozen", "black")
_EPS = 1e-9


@dataclass(frozen=True)
class AlertRule:
    """One rule: see the module docstring for what ``for_s``, ``clear_s`` and ``margin`` count."""

    rule: str
    threshold: float | None = None  # score_below only (required there)
    for_s: float = 0.0
    clear_s: float = 0.0
    margin: float = 0.02  # score_below: cleared only by scores ≥ threshold + margin

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r} (known: {', '.join(RULES)})")
        if self.rule == "score_below":
            if self.threshold is None:
                raise ValueError("rule score_below: threshold is required")
            object.__setattr__(self, "threshold", _number(self.rule, "threshold", self.threshold))
        elif self.threshold is not None:
            raise ValueError(f"rule {self.rule}: threshold applies to score_below only")
        for name in ("for_s", "clear_s", "margin"):
            object.__setattr__(self, name, _number(self.rule, name, getattr(self, name), minimum=0.0))

    @classmethod
    def from_dict(cls, d: dict) -> "AlertRule":
        """A rule from a config mapping (``{"rule": "score_below", "threshold": 0.4, ...}``); ValueError
        naming the key for an unknown rule or key, a missing threshold, a negative or non-numeric time."""
        if isinstance(d, AlertRule):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"an alert rule must be a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            where = f"rule {d['rule']}: " if isinstance(d.get("rule"), str) else ""
            raise ValueError(f"{where}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                             f"(known: {', '.join(known)})")
        if "rule" not in d:
            raise ValueError(f"an alert rule needs the key 'rule' (one of {', '.join(RULES)})")
        return cls(**d)


def _number(rule: str, key: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"rule {rule}: {key} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"rule {rule}: {key} must be ≥ {minimum:g}, got {value!r}")
    return float(value)


def merge_rules(global_rules, source_rules) -> list[AlertRule]:
    """The rules of one source: the global ones, each replaced (in place) by the source's rule of the
    same name, then the source's other rules. Rules may be given as mappings (``from_dict``)."""
    merged = _rules(global_rules, "global")
    own = _rules(source_rules, "source")
    by_name = {rule.rule: rule for rule in own}
    result = [by_name.pop(rule.rule, rule) for rule in merged]
    return result + [rule for rule in own if rule.rule in by_name]


def _rules(rules, where: str) -> list[AlertRule]:
    out = [AlertRule.from_dict(r) for r in (rules or ())]
    names = [r.rule for r in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{where} alert rules: {', '.join(twice)} given more than once")
    return out


class _Timed:
    """A wall-clock condition (stalled, failed, frozen, black): bad and good spells and the alert."""

    def __init__(self, rule: AlertRule):
        self.rule = rule
        self.bad = False
        self.raised = False
        self.bad_since: float | None = None  # wall time the bad spell (raised: the alert's first) began; None: next tick
        self.good_since: float | None = None
        self.bad_s = 0.0  # from bad_since to the latest turn to good
        self.detail: dict = {}  # what the raise / clear says beyond the times

    def set_bad(self, now: float | None) -> bool:
        """The condition turned bad; True when it is raised at once (``for_s`` 0)."""
        if self.bad:
            return False
        self.bad, self.good_since = True, None
        if self.raised:  # a clearing in progress is called off; the alert's spell goes on
            return False
        self.bad_since = now
        return self.rule.for_s <= 0

    def set_good(self, now: float | None) -> bool:
        """The condition turned good; True when the alert clears at once (``clear_s`` 0)."""
        if not self.bad:
            return False
        self.bad, self.good_since = False, now
        if self.bad_since is not None and now is not None:
            self.bad_s = max(0.0, now - self.bad_since)
        if not self.raised:
            self.bad_since = None
            return False
        return self.rule.clear_s <= 0

    def due(self, now: float) -> str | None:
        """At ``now``: "raise" or "clear" when the spell has lasted long enough, else None."""
        if self.bad:
            if self.bad_since is None:
                self.bad_since = now
            if not self.raised and now - self.bad_since >= self.rule.for_s - _EPS:
                return "raise"
        elif self.raised:
            if self.good_since is None:
                self.good_since = now
            if now - self.good_since >= self.rule.clear_s - _EPS:
                return "clear"
        return None


class _Score:
    """score_below's runs of windows, on the media clock."""

    def __init__(self, rule: AlertRule):
        self.rule = rule
        self.raised = False
        self.bad_start: float | None = None  # first window below threshold (of the current run)
        self.bad_end: float | None = None  # end of the latest window below the threshold
        self.good_start: float | None = None  # first window of the current good run (raised)
        self.last_start: float | None = None  # the previous window's start (a new timeline resets the runs)


class SourceAlerts:
    """The alerts of one source. Each method returns the events it causes, in order:
    ``{"type": "alert", "rule", "status": "raised" | "cleared", "detail"}`` (the monitor adds the
    source and the times)."""

    def __init__(self, rules: list[AlertRule], history: int = 100):
        rules = _rules(rules, "source")
        if not (isinstance(history, int) and history >= 0):
            raise ValueError(f"history must be an integer ≥ 0, got {history!r}")
        self.rules = {rule.rule: rule for rule in rules}
        self._score = _Score(self.rules["score_below"]) if "score_below" in self.rules else None
        self._timed = {name: _Timed(rule) for name, rule in self.rules.items() if name != "score_below"}
        self._state: str | None = None
        self._stopped = False
        self._history: deque = deque(maxlen=history)

    @property
    def active(self) -> list[str]:
        """The rules whose alert is raised now, in ``RULES`` order."""
        raised = {name for name, cond in self._timed.items() if cond.raised}
        if self._score is not None and self._score.raised:
            raised.add("score_below")
        return [name for name in RULES if name in raised]

    @property
    def history(self) -> list[dict]:
        """The latest events (at most ``history``), newest last: the very dicts returned, so what the
        monitor adds to them shows here too."""
        return list(self._history)

    # -- inputs ---------------------------------------------------------------------------------
    def on_window(self, record: dict) -> list[dict]:
        """A window record: ``score``, ``start_s``, ``end_s`` (an error record has no score: skipped)."""
        s = self._score
        score = record.get("score")
        if s is None or self._stopped or isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not math.isfinite(score):
            return []
        start, end, rule = float(record["start_s"]), float(record["end_s"]), s.rule
        if s.last_start is not None and start < s.last_start - _EPS:  # a new timeline: runs start over
            s.good_start = None
            if not s.raised:
                s.bad_start = None
        s.last_start = start
        events = []
        if score < rule.threshold:
            s.good_start = None
            if s.bad_start is None:
                s.bad_start = start
            s.bad_end = end
            if not s.raised and end - s.bad_start >= rule.for_s - _EPS:
                s.raised = True
                events.append(self._event("score_below", "raised", threshold=rule.threshold, score=score,
                                          start_s=s.bad_start, end_s=end))
        elif score < rule.threshold + rule.margin:  # the hysteresis band
            s.good_start = None
            if not s.raised:
                s.bad_start = None
        else:
            if not s.raised:
                s.bad_start = None
            else:
                if s.good_start is None:
                    s.good_start = start
                if end - s.good_start >= rule.clear_s - _EPS:
                    s.raised = False
                    events.append(self._event("score_below", "cleared", threshold=rule.threshold, score=score,
                                              start_s=s.bad_start, end_s=s.bad_end))
                    s.bad_start = s.good_start = None
        return events

    def on_health(self, span: dict, now: float | None = None) -> list[dict]:
        """A health span event (``monitor/health.py``: frozen/black start/end); ``now`` (monotonic
        seconds) starts a ``for_s`` / ``clear_s`` wait, else the next ``tick`` does."""
        cond = self._timed.get(span.get("kind")) if span.get("kind") in _SPAN_RULES else None
        if cond is None or self._stopped:
            return []
        if span.get("status") == "start":
            cond.detail = {"start_s": span["start_s"]}
            return self._raise(cond) if cond.set_bad(now) else []
        if span.get("status") == "end":
            cond.detail = {k: span[k] for k in ("start_s", "end_s", "duration_s") if k in span}
            return self._clear(cond) if cond.set_good(now) else []
        return []

    def on_state(self, state: str, now: float) -> list[dict]:
        """The source's state changed to ``state`` at ``now`` (monotonic seconds)."""
        self._state = state
        if state == "stopped":
            self._stopped = True
            return self._stop(now)
        self._stopped = False
        events = []
        for name in _STATE_RULES:
            cond = self._timed.get(name)
            if cond is None:
                continue
            if state == name:
                cond.detail = {"state": state}
                if cond.set_bad(now):
                    events += self._raise(cond, seconds=0.0)
            elif cond.bad or cond.raised:
                cond.detail = {"state": state}
                if cond.set_good(now):
                    events += self._clear(cond, seconds=round(cond.bad_s, 3))
        return events

    def tick(self, now: float) -> list[dict]:
        """Raise or clear the wall-clock rules whose ``for_s`` / ``clear_s`` ran out by ``now``."""
        if self._stopped:
            return []
        events = []
        for name, cond in self._timed.items():
            due = cond.due(now)
            extra = {}
            if name in _STATE_RULES:
                since = cond.bad_since if due == "raise" else None
                extra["seconds"] = round(now - since, 3) if since is not None else round(cond.bad_s, 3)
            if due == "raise":
                events += self._raise(cond, **extra)
            elif due == "clear":
                events += self._clear(cond, **extra)
        return events

    # -- events ---------------------------------------------------------------------------------
    def _raise(self, cond: _Timed, **extra) -> list[dict]:
        cond.raised = True
        return [self._event(cond.rule.rule, "raised", **cond.detail, **extra)]

    def _clear(self, cond: _Timed, **extra) -> list[dict]:
        cond.raised = False
        cond.bad_since = cond.good_since = None
        return [self._event(cond.rule.rule, "cleared", **cond.detail, **extra)]

    def _stop(self, now: float) -> list[dict]:
        events = []
        s = self._score
        if s is not None:
            if s.raised:
                events.append(self._event("score_below", "cleared", threshold=s.rule.threshold, score=None,
                                          start_s=s.bad_start, end_s=s.bad_end, reason="stopped"))
            self._score = _Score(s.rule)
        for name in RULES:
            cond = self._timed.get(name)
            if cond is None:
                continue
            if cond.raised:
                detail = dict(cond.detail)
                if name in _STATE_RULES:
                    since = cond.bad_since if cond.bad else None
                    detail |= {"state": "stopped",
                               "seconds": round(now - since, 3) if since is not None else round(cond.bad_s, 3)}
                events.append(self._event(name, "cleared", **detail, reason="stopped"))
            self._timed[name] = _Timed(cond.rule)
        return events

    def _event(self, rule: str, status: str, **detail) -> dict:
        event = {"type": "alert", "rule": rule, "status": status, "detail": detail}
        self._history.append(event)
        return event
