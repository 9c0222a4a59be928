"""What a monitor is told: its settings, its sources and its alert rules — from Python, from a
YAML/JSON config file (``qclip-monitor CONFIG``) or from the HTTP API — checked in one place.

A config file::

    settings:            # optional; every key of MonitorSettings (the CLI's flags override them)
      window_s: 2
      hop_s: 1
      stall_s: 3
    alerts:              # global rules (monitor/alerts.py: AlertRule)
      - {rule: score_below, threshold: 0.35, for_s: 5}
      - {rule: frozen}
      - {rule: stalled}
    sources:
      - {name: channel-1, url: "udp://239.0.0.1:5000"}
      - name: channel-2
        url: https://example.com/live/index.m3u8
        alerts: [{rule: score_below, threshold: 0.5}]   # replaces the global rule of that name

Errors are ``MonitorError``s with a code and an HTTP status, the same for a config file (the CLI
prints them and exits 2) and an API request (the answer's body).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .. import defaults
from .alerts import AlertRule, merge_rules
from .health import HealthSettings
from .webhook import validate_url

# The schemes a source may use (what stream/sources.py opens); anything else is refused up front.
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp", "file")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a label in metrics and a URL path part
ON_END = ("reconnect", "stop")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# FFmpeg options a client of the HTTP API may set on a URL source (a config file may set any): how
# to reach and buffer a stream, never which protocols, files or listening sockets FFmpeg may use.
API_OPTIONS = frozenset({
    "rtsp_transport", "user_agent", "referer", "headers", "probesize", "analyzeduration", "fflags",
    "buffer_size", "fifo_size", "overrun_nonfatal", "pkt_size", "latency", "passphrase", "pbkeylen",
    "streamid", "reconnect", "reconnect_streamed", "reconnect_delay_max", "timeout", "rw_timeout",
})


class MonitorError(Exception):
    """A request or a config the monitor refuses: ``code`` (documented in the README), ``status``
    (the HTTP API's answer)."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def to_record(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class MonitorSettings:
    """How every source is windowed, watched and reconnected (defaults stated once, here)."""

    window_s: float = defaults.WINDOW_S
    hop_s: float = defaults.HOP_S
    stall_s: float = 3.0  # no frame for this long: stalled (the source keeps its connection)
    timeout_s: float = defaults.STREAM_TIMEOUT_S  # open/read timeout: a read silent this long drops the connection
    backoff_s: float = 0.5  # first reconnect delay, doubled per failed attempt ...
    backoff_max_s: float = 30.0  # ... up to this
    fail_after: int = 3  # consecutive failed attempts before the state is failed (retries go on at the cap)
    max_pending: int = 4  # windows of one source waiting for the model; a live source past it skips windows
    max_sources: int = 256
    history: int = 600  # window records kept per source for snapshots (10 minutes at a 1 s hop)
    threshold: float | None = None  # the records' own "alert" flag (stream_windows' threshold)
    freeze_s: float = HealthSettings.freeze_s
    freeze_mse: float = HealthSettings.freeze_mse
    black_s: float = HealthSettings.black_s
    black_luma: float = HealthSettings.black_luma
    webhook: str | None = None  # alert events are also POSTed here (monitor/webhook.py)
    allow_dirs: tuple[str, ...] = ()  # folders whose files the HTTP API may add as sources

    def __post_init__(self):
        for name in ("window_s", "hop_s", "stall_s", "timeout_s", "backoff_s", "backoff_max_s", "freeze_s", "black_s"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise MonitorError("invalid_settings", f"settings.{name} must be a number > 0, got {value!r}")
        for name in ("fail_after", "max_pending", "max_sources", "history"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise MonitorError("invalid_settings", f"settings.{name} must be an integer ≥ 1, got {value!r}")
        for name, low, high in (("black_luma", 0, 1), ("freeze_mse", 0, math.inf)):
            value = getattr(self, name)
            if not (_is_number(value) and low <= value <= high):
                raise MonitorError("invalid_settings", f"settings.{name} must be a number in [{low}, {high}], got {value!r}")
        if self.threshold is not None and not (_is_number(self.threshold) and math.isfinite(self.threshold)):
            raise MonitorError("invalid_settings", f"settings.threshold must be a number or null, got {self.threshold!r}")
        if self.backoff_max_s < self.backoff_s:
            raise MonitorError("invalid_settings", "settings.backoff_max_s must be ≥ backoff_s")
        if self.webhook is not None:
            try:
                validate_url(self.webhook)
            except ValueError as exc:
                raise MonitorError("invalid_settings", f"settings.webhook: {exc}") from None

    @property
    def health(self) -> HealthSettings:
        return HealthSettings(freeze_s=self.freeze_s, freeze_mse=self.freeze_mse, black_s=self.black_s,
                              black_luma=self.black_luma, horizon_s=self.window_s + 2 * self.hop_s)

    @classmethod
    def from_dict(cls, data: dict) -> "MonitorSettings":
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise MonitorError("invalid_settings", "settings must be a mapping")
        unknown = sorted(set(data) - known)
        if unknown:
            raise MonitorError("invalid_settings", f"unknown settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        data = dict(data)
        if "allow_dirs" in data:
            dirs = data["allow_dirs"] or ()
            if not isinstance(dirs, (list, tuple)) or not all(isinstance(d, str) for d in dirs):
                raise MonitorError("invalid_settings", "settings.allow_dirs must be a list of folders")
            data["allow_dirs"] = tuple(dirs)
        try:
            return cls(**data)
        except TypeError as exc:  # a value of the wrong type met a comparison
            raise MonitorError("invalid_settings", f"settings: {exc}") from None

    def public(self) -> dict:
        """The settings a client may see (no server folders)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("allow_dirs", "webhook")}


@dataclass(frozen=True)
class SourceSpec:
    """One source: ``name`` (unique; letters, digits, ``._-``), ``url`` (a URL of ``URL_SCHEMES`` or a
    file path), and how it is read."""

    name: str
    url: str
    realtime: bool | None = None  # pace a file at its frame rate (None: files yes, URLs are live anyway)
    on_end: str | None = None  # at the end of the media: reconnect | stop (None: files stop, URLs reconnect)
    options: dict = field(default_factory=dict)  # extra FFmpeg options for opening a URL
    alerts: tuple[AlertRule, ...] = ()  # rules of this source (replacing global rules of the same name)
    # Python only (never a config or the API): a callable giving a fresh iterable of frames per
    # connection — uint8 RGB arrays or (timestamp_s, frame) tuples, as stream_windows takes them.
    frames: Callable[[], Iterable] | None = field(default=None, compare=False)

    @property
    def is_file(self) -> bool:
        return self.frames is None and ("://" not in self.url or self.url.lower().startswith("file://"))

    @property
    def file_path(self) -> str:
        return self.url[len("file://"):] if self.url.lower().startswith("file://") else self.url

    @property
    def public_url(self) -> str:
        """The url as clients see it: a password in it replaced by ``***``."""
        try:
            parts = urlsplit(self.url)
        except ValueError:
            return self.url
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    @property
    def paced(self) -> bool:
        return self.is_file if self.realtime is None else bool(self.realtime)

    @property
    def reconnects(self) -> bool:
        return (self.on_end or ("stop" if self.is_file else "reconnect")) == "reconnect"

    def public(self) -> dict:
        return {"url": self.public_url, "realtime": self.paced, "on_end": "reconnect" if self.reconnects else "stop",
                "options": {k: ("***" if k in ("headers", "passphrase") else v) for k, v in self.options.items()},
                "alerts": [asdict(rule) for rule in self.alerts]}

    @classmethod
    def from_dict(cls, data) -> "SourceSpec":
        if isinstance(data, SourceSpec):
            return check_source(data)
        if not isinstance(data, dict):
            raise MonitorError("invalid_source", "a source must be an object with a name and a url")
        known = {f.name for f in fields(cls)} - {"frames"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MonitorError("invalid_source", f"unknown source fields: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for key in ("name", "url"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise MonitorError("invalid_source", f"a source needs a non-empty string {key!r}")
        if data.get("realtime") is not None and not isinstance(data["realtime"], bool):
            raise MonitorError("invalid_source", "realtime must be true or false")
        options = data.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in options.items()):
            raise MonitorError("invalid_source", "options must map FFmpeg option names to values")
        rules = data.get("alerts") or []
        if not isinstance(rules, list):
            raise MonitorError("invalid_source", "alerts must be a list of rules")
        try:
            alerts = tuple(merge_rules((), rules))  # each rule checked, and none twice
        except ValueError as exc:
            raise MonitorError("invalid_source", f"source {data['name']!r}: {exc}") from None
        spec = cls(name=data["name"], url=data["url"].strip(), realtime=data.get("realtime"), on_end=data.get("on_end"),
                   options={k: str(v) for k, v in options.items()}, alerts=alerts)
        return check_source(spec)


def check_source(spec: SourceSpec) -> SourceSpec:
    """``spec`` if it can be opened at all (name, scheme, host), else ``MonitorError`` ``invalid_source``."""
    if not NAME_PATTERN.match(spec.name):
        raise MonitorError("invalid_source", f"source name {spec.name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                                             "starting with a letter or digit")
    if spec.on_end is not None and spec.on_end not in ON_END:
        raise MonitorError("invalid_source", f"on_end must be one of {', '.join(ON_END)}, got {spec.on_end!r}")
    if spec.frames is not None:
        if not callable(spec.frames):
            raise MonitorError("invalid_source", "frames must be a callable giving an iterable of frames")
        return spec
    url = spec.url
    try:  # a lone surrogate (from a JSON escape) names nothing that can be opened, or printed
        url.encode("utf-8"), spec.name.encode("utf-8")
    except UnicodeEncodeError:
        raise MonitorError("invalid_source", "the name or url is not valid Unicode text") from None
    if any(c in url for c in "\r\n\0") or len(url) > 4096:
        raise MonitorError("invalid_source", "the url holds control characters or is too long")
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise MonitorError("invalid_source", f"malformed url: {exc}") from None
        if parts.scheme.lower() not in URL_SCHEMES:
            raise MonitorError("invalid_source", f"url scheme {parts.scheme!r} is not one of {', '.join(URL_SCHEMES)}")
        if parts.scheme.lower() != "file" and not parts.hostname:
            raise MonitorError("invalid_source", "the url has no host")
    return spec


def check_api_source(spec: SourceSpec, allow_dirs: tuple[str, ...]) -> None:
    """What a client of the HTTP API may add beyond a config file: FFmpeg options of ``API_OPTIONS``
    only (``invalid_source``), files inside the allowed folders (``check_file_allowed``)."""
    refused = sorted(set(spec.options) - API_OPTIONS)
    if refused:
        raise MonitorError("invalid_source", f"options not allowed through the API: {', '.join(refused)} "
                                             f"(allowed: {', '.join(sorted(API_OPTIONS))})")
    check_file_allowed(spec, allow_dirs)


def check_file_allowed(spec: SourceSpec, allow_dirs: tuple[str, ...]) -> None:
    """A file source added through the API must lie inside an allowed folder (its real path), else
    ``file_not_allowed`` (403) — said without the server's paths."""
    if not spec.is_file:
        return
    real = Path(os.path.realpath(spec.file_path))
    for root in allow_dirs:
        if real.is_relative_to(Path(os.path.realpath(root))):
            return
    raise MonitorError("file_not_allowed", "file sources may only be added from the monitor's allowed folders "
                                           "(--allow-dir); this one is not inside any", 403)


def load_config(path: str | Path) -> tuple[MonitorSettings, list[AlertRule], list[SourceSpec]]:
    """A YAML or JSON config file → settings, global rules and sources (``MonitorError`` if bad)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MonitorError("invalid_config", f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise MonitorError("invalid_config", f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: "
                                             f"{exc.msg}") from None
    except yaml.YAMLError as exc:  # said in one line: where, and what
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MonitorError("invalid_config", f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise MonitorError("invalid_config", f"{path}: the config must be a mapping with settings, alerts and sources")
    unknown = sorted(set(data) - {"settings", "alerts", "sources"})
    if unknown:
        raise MonitorError("invalid_config", f"{path}: unknown sections {', '.join(unknown)} (known: settings, alerts, sources)")
    settings = MonitorSettings.from_dict(data.get("settings") or {})
    try:
        rules = merge_rules(data.get("alerts") or [], ())  # each rule checked, and none twice
    except ValueError as exc:
        raise MonitorError("invalid_config", f"{path}: alerts: {exc}") from None
    sources = [SourceSpec.from_dict(s) for s in data.get("sources") or []]
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MonitorError("invalid_config", f"{path}: duplicate source names: {', '.join(duplicates)}")
    return settings, rules, sources
