"""One process, one model: the monitor inside ``qclip-serve`` (``qclip-serve ARTIFACT --monitor CONFIG``).

The service loads its engine in the background and runs one model thread (``serve/batcher.py``)
for its uploads. ``attach_monitor`` gives a monitor that scores its windows through that same
thread (``ServiceBatcher``: windows and uploads share batches), adds the monitor's routes to the
service's app (``monitor/http.py``; the service keeps its own ``/healthz`` and ``/metrics``, which
then carry the monitor's series too), starts the sources once the model is ready, and stops
them when the service stops.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter

from ..engine import error_result
from ..serve.errors import ServiceStopping
from ..serve.errors import ApiError as ServiceApiError
from ..serve.errors import error_response as service_error_response
from .http import ApiError as RouteError
from .http import monitor_router
from .metrics import MonitorMetrics
from .monitor import Monitor
from .settings import MonitorError, MonitorSettings

log = logging.getLogger("qclip_engine.monitor")


class ServiceBatcher:
    """The monitor's batcher interface (``monitor/batcher.py``) over the service's model thread.
    The backend calls are the service's (``qclip_batch_size``, ``qclip_model_latency_seconds``):
    ``calls`` stays 0 and ``sizes`` counts windows by the size of the batch each one was in."""

    def __init__(self, service):
        self.service = service
        self.on_batch = None
        self.calls = 0
        self.windows = 0
        self.sizes: Counter = Counter()
        self.rejected = 0  # windows refused because the service's queue was full or it stopped

    def start(self) -> None:  # the service runs the thread
        pass

    def stop(self, timeout_s: float = 0.0) -> None:
        pass

    def queue_depth(self) -> int:
        batcher = self.service.batcher
        return batcher.queue.qsize() if batcher is not None else 0

    def submit(self, video, deliver) -> bool:
        """False when the service's queue is full or it is stopping: the source skips the window."""
        batcher = self.service.batcher
        if batcher is None:
            self.rejected += 1
            return False
        try:
            future = batcher.submit_from_thread(video)
        except (queue.Full, ServiceStopping, RuntimeError):
            self.rejected += 1
            return False

        def done(f) -> None:
            if f.cancelled():
                result = error_result(video.input, RuntimeError("the window's scoring was cancelled"))
            elif f.exception() is not None:
                result = error_result(video.input, f.exception())
            else:
                result = f.result()
            self.windows += 1
            size = int(result.timing_ms.get("batch_size", 1))
            self.sizes[size] += 1
            deliver(result, time.perf_counter())

        future.add_done_callback(done)
        return True


def attach_monitor(app, settings: MonitorSettings, rules, sources, *, batch: int) -> Monitor:
    """The monitor sharing ``app``'s service (``serve/app.py: create_app``) model and batcher, its
    routes on ``app``, ``sources`` watched once the model is ready."""
    service = app.state.service
    metrics = MonitorMetrics(batch)
    monitor = Monitor(None, settings, rules, metrics=metrics, batcher=ServiceBatcher(service))
    # every window the sources may have waiting fits beside the admitted uploads (serve/service.py)
    service.reserved_queue = settings.max_sources * settings.max_pending
    service.metrics.registry.register(metrics.registry)  # the service's /metrics shows the monitor's series
    for spec in sources:
        monitor.add(spec)
    app.include_router(monitor_router(monitor, health_and_metrics=False))  # the service's own serve both

    # The monitor's refusals answered and counted (qclip_errors_total) as the service's own.
    @app.exception_handler(MonitorError)
    async def monitor_error(request, exc: MonitorError):
        return service_error_response(ServiceApiError(exc.status, exc.code, exc.message), service.metrics)

    @app.exception_handler(RouteError)
    async def route_error(request, exc: RouteError):
        return service_error_response(ServiceApiError(exc.status, exc.code, exc.message), service.metrics)

    def follow_the_service() -> None:
        while not service.ready:
            if service.load_error or service.stopping:
                monitor.stop()
                return
            time.sleep(0.1)
        monitor.engine = service.engine
        monitor.start()
        while not service.stopping:
            time.sleep(0.2)
        monitor.stop()

    threading.Thread(target=follow_the_service, name="qclip-monitor-follow", daemon=True).start()
    stop_service = service.stop

    async def stop_the_monitor_first() -> None:  # its sources stop before the model thread does
        await asyncio.to_thread(monitor.stop)
        await stop_service()

    service.stop = stop_the_monitor_first  # what the app's lifespan calls at shutdown
    return monitor
