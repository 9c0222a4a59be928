"""Sliding-window scoring of a file, a live URL or a frame iterator.

``stream_windows(engine, source)`` decodes ``source`` once, front to back, and scores
overlapping windows of it as they close: window ``k`` covers media time
``[k·hop_s, k·hop_s + window_s)`` seconds from the first frame. Each window's frames go
through the engine's sampler (``engine.sample_frames``, the same motion + sampler as whole
files) and then its backend; several ready windows share one backend call.

Sources
    * a file path (or ``file://`` URL): opened and read as :mod:`qclip_engine.video.decode`
      reads files (:mod:`qclip_engine.video.container`: ``open_video``, ``FrameReader``),
      frames converted with the same call (``container.to_rgb``, with the engine's
      preprocessing), so a window sees exactly the pixels the file path decodes; display
      rotation applied.
    * a URL (``rtsp://``, ``http(s)://`` incl. HLS ``.m3u8``, ``rtmp://``, ``udp://``, ``srt://`` …):
      opened by PyAV with open/read timeouts (``timeout_s``) and protocol options
      (RTSP over TCP, HTTP reconnects); ``options=`` adds or overrides them.
    * an iterable of frames: uint8 RGB ``[H, W, 3]`` arrays (timed ``index / fps``), or
      ``(timestamp_s, frame)`` tuples (timestamps taken as given, relative to the first),
      or ``av.VideoFrame`` objects. Frames not at the model's size are resized as the
      engine's preprocessing resizes (``video/resize.py: resize_rgb``: swscale or PIL bilinear).

Time. For PyAV sources a frame's time is its own pts (``frame.time``) minus the first
frame's, so variable-frame-rate media are windowed by real time, not by frame count. A frame
at most two frame steps behind the latest one (``windowing.REORDER_STEPS``; the step is the
median of the latest 8 steps forward) is a late frame: kept only if it lies in the open window
on a grid step after the last one kept, else dropped. A frame further back is a clock jump — a
source looping a clip (an endless HTTP MPEG-TS repeating 1 s), restarting or wrapping its
clock: the timeline is re-based so that the frame comes one step after the latest, windows keep
moving forward, and the first window closed after the jump carries a ``clock_jump`` warning
(one per window, however many jumps it saw). A forward jump leaves the windows in between
empty, and empty windows are skipped (their index is not reused: ``start_s = index · hop_s``
always holds).

Memory. Only the frames of the current window are held, at model size, and at most
``max_window_frames`` of them: frames are kept on a time grid of ``window_s /
max_window_frames`` seconds (all of them unless the rate exceeds ``max_window_frames /
window_s`` fps), so memory does not grow with stream length or frame rate. Between the
decoder thread and the backend at most ``2 × batch`` sampled windows wait.

End of stream. The windows still open are emitted up to the first one that reaches the
end of the media (the last frame's time plus one frame); one that reaches past it is
marked ``partial``. So windows cover the whole stream.

Cut short. A file stream that ends before the frames or the duration it declares (the file
rules of ``video/scan.py`` as one pass sees them: an MP4/AVI's frame count, a Matroska/WebM
duration, a read error, an MP4 box running past the end; a URL: its declared frame count) is
scored up to the cut and its last window record carries a ``truncated`` warning. Under the
engine's ``strict`` (``qclip-score --strict``) the windows closed before the end are scored and
the stream ends with a ``truncated`` error record in place of the windows still open.

Errors never escape for bad media: a source that cannot be opened gives one error
record (index 0), a decode failure in the middle gives an error record for the window
being filled and ends the stream; the windows already closed are still scored and come
first. Codes are the decode codes (``not_found``, ``empty_file``, ``not_a_video``,
``audio_only``, ``unsupported_codec``, ``truncated``, ``decode_failed``) plus
``unreachable`` (a URL that refused, timed out or failed at the network level — an open that
ran out ``timeout_s`` is ``unreachable`` whatever FFmpeg calls it: its RTSP client reports a
server that never answers as invalid data; a server that answers something else than RTSP stays
``not_a_video``), ``invalid_frame`` (an iterator item that is not an RGB uint8 frame) and
``internal_error`` (anything else, e.g. the backend or the iterator itself raising). An error
the engine gives one window (its ``VideoResult.error``, e.g. ``non_finite_output``) is that
window's error record, and the stream goes on.

Batching. Ready windows are batched by the engine's batching primitive
(:func:`qclip_engine.batching.next_batch`): a batch closes when it holds ``engine.batch``
windows or when no window came for ``max_wait_s``. For files (and in-memory frame
sequences) ``max_wait_s`` is ``engine.batch_timeout_s``; for live sources (URLs, frame
iterators) it is 0 — a window is scored as soon as it closes, together with whichever other
windows are already waiting: latency first. The decoder's error record
travels in order with the windows (it does not count towards the batch) and the stream
ends after it; a backend failure gives an error record for each window of its batch.

Layout: :mod:`.sources` (opening a source as timed frames), :mod:`.windowing` (the pure
window rules), :mod:`.loop` (the decoder thread and the scoring loop), :mod:`.records`
(``WindowResult``). The PNG timeline is :mod:`qclip_engine.cli.timeline`.
"""

from .loop import stream_windows
from .records import WindowResult

__all__ = ["stream_windows", "WindowResult"]
