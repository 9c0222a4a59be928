"""Live QC of many sources at once: one engine, every source's windows in shared backend calls.

``Monitor(engine, settings, rules)`` watches sources added from a config file, from Python or
from its HTTP API (``monitor/http.py``). Each source is read and windowed as ``stream_windows``
reads one (``qclip_engine.stream``: same windows, same picks, same scores), on a thread of its
own (``monitor/source.py``); the ready windows of all sources go to one model thread
(``monitor/batcher.py``), which takes whatever is waiting, up to ``engine.batch``, and never
waits for a batch to fill. Beside the score each window carries health signals computed from
its frames (``monitor/health.py``: frozen, black, motion, frames received vs expected); alert
rules with hysteresis (``monitor/alerts.py``) turn scores, health spans and source states into
events raised once and cleared once. Records and events go to the feed (``monitor/feed.py``: the
CLI's JSONL, Server-Sent Events), Prometheus metrics (``monitor/metrics.py``) and optionally a
webhook (``monitor/webhook.py``).

Layout: ``settings.py`` (settings, sources, config files, ``MonitorError``), ``monitor.py``
(``Monitor``), ``source.py``, ``batcher.py``, ``health.py``, ``alerts.py``, ``feed.py``,
``metrics.py``, ``webhook.py``, ``http.py``. The CLI is ``qclip_engine/cli/monitor.py``.
"""

import importlib

# Names resolved on first use (PEP 562): the settings and config checks load no torch, so the
# CLIs check a config before the model is touched.
_HOMES = {"AlertRule": "alerts", "Monitor": "monitor", "MonitorError": "settings", "MonitorSettings": "settings",
          "SourceSpec": "settings", "load_config": "settings"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
