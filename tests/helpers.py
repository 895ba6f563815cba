"""Test utilities: a static file server on 127.0.0.1, writers of odd media files, a heap scribbler."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np


TINY = "tiny-synthetic"  # the shipped tiny model (and its config)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


class StaticServer:
    """Serves ``root`` on http://127.0.0.1:<free port>/ in a background thread; counts GET requests."""

    def __init__(self, root: Path):
        self.requests = 0
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.requests += 1
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
CLICK_LEN_SEC = 0.0125  # 200 samples at 16 kHz
FLASH_SEC = 0.08  # two frames at 25 fps


def event_times(seconds: float) -> np.ndarray:
    """Times (s) of the paired events write_av draws: a flash in the picture and a click in the sound."""
    return np.arange(0.3, seconds, 0.7)


def video_frame_times(
    seconds: float, fps: float | Fraction, frame_times: Sequence[float] | None = None, video_start_sec: float = 0.0
) -> np.ndarray:
    """Times (s) of the frames write_av writes: ``frame_times`` or the ``fps`` grid, from ``video_start_sec``."""
    times = np.asarray(frame_times, dtype=np.float64) if frame_times is not None else np.arange(int(round(seconds * float(fps)))) / float(fps)
    return times[times >= video_start_sec - 1e-9]


def render_frames(times: np.ndarray, size: tuple[int, int], *, events: np.ndarray, still: bool, seed: int) -> np.ndarray:
    """(T, h, w, 3) uint8: blocky noise scrolling right 3 blocks per frame, a white box in the top-left corner
    from each event for :data:`FLASH_SEC` (from the frame on screen at the event), nothing moving when ``still``."""
    rng = np.random.default_rng(seed)
    w, h = size
    block = max(1, min(w, h) // 32)
    small = rng.integers(0, 200, (-(-h // block), -(-w // block), 3), dtype=np.uint8)
    base = np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:h, :w]
    flash = np.zeros(len(times), bool)
    if not still:
        shown = np.searchsorted(times, events, side="right") - 1  # the frame on screen at each event
        flash[shown[shown >= 0]] = True
        for t in events:  # and every frame starting within FLASH_SEC of it, so no frame rate drops the flash
            flash |= (times >= t) & (times < t + FLASH_SEC)
    frames = np.empty((len(times), h, w, 3), np.uint8)
    for i in range(len(times)):
        frames[i] = base if still else np.roll(base, 3 * block * i, axis=1)
        if flash[i]:
            frames[i, : max(2, h // 4), : max(2, w // 4)] = 255
    return frames


def render_audio(seconds: float, sample_rate: int, channels: int, *, events: np.ndarray, silent: bool, seed: int) -> np.ndarray:
    """(channels, N) float32: quiet noise with a 12.5 ms click at each event (all channels the same)."""
    rng = np.random.default_rng(seed + 1)
    total = int(round(seconds * sample_rate))
    wave = np.zeros(total, np.float32)
    if not silent:
        wave += rng.normal(0, 0.01, total).astype(np.float32)
        for t in events:
            s = int(round(t * sample_rate))
            wave[s : s + int(CLICK_LEN_SEC * sample_rate)] += 0.5
    return np.ascontiguousarray(np.repeat(wave[None], channels, axis=0))


def write_media(
    path: Path,
    *,
    frames: np.ndarray | None,
    frame_times: np.ndarray | None,
    audio: np.ndarray | None,
    sample_rate: int = 16000,
    fps: float | Fraction = 25,
    audio_start_sec: float = 0.0,
    container: str | None = None,
    vcodec: str = "libx264",
    acodec: str = "aac",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    faststart: bool = False,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 shown at ``frame_times`` (s) and ``audio`` (C, N) float32 whose
    first sample plays at ``audio_start_sec`` into ``path``. ``fps`` is the nominal rate; times off its grid
    (variable frame rate, a late start) are kept exactly. ``rotation``: display-matrix rotation in
    counter-clockwise degrees, as PyAV's ``VideoFrame.rotation`` reads it back."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=options) as c:
        vs = as_ = None
        if frames is not None:
            vs = c.add_stream(vcodec, rate=fps, options={"x265-params": "log-level=none"} if vcodec == "libx265" else {})
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
            on_grid = np.allclose(np.asarray(frame_times) * float(fps), np.round(np.asarray(frame_times) * float(fps)))
            vs.codec_context.time_base = 1 / Fraction(fps) if on_grid else Fraction(1, 90000)
            if rotation:
                vs.set_display_rotation(rotation)
        if audio is not None:
            as_ = c.add_stream(acodec, rate=sample_rate, layout=LAYOUTS[audio.shape[0]])
        if vs is not None:
            tb = vs.codec_context.time_base
            for img, t in zip(frames, frame_times):
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                f.pts, f.time_base = int(round(t / tb)), tb
                c.mux(vs.encode(f))
            c.mux(vs.encode(None))
        if as_ is not None:
            _encode_audio(c, as_, audio, sample_rate, audio_start_sec)
    return path


def _encode_audio(c, stream, audio: np.ndarray, sample_rate: int, start_sec: float) -> None:
    layout = LAYOUTS[audio.shape[0]]
    fmt = stream.codec_context.codec.audio_formats[0].name
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate) if fmt != "fltp" else None
    first = int(round(start_sec * sample_rate))
    block = 960 if stream.codec_context.name == "libopus" else 1024
    for start in range(0, audio.shape[1], block):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start : start + block]), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, first + start, Fraction(1, sample_rate)
        for f in resampler.resample(frame) if resampler else [frame]:
            c.mux(stream.encode(f))
    c.mux(stream.encode(None))


def write_av(
    path: Path,
    *,
    seconds: float = 6.0,
    fps: float | Fraction = 25,
    size: tuple[int, int] = (96, 64),
    sample_rate: int = 16000,
    channels: int = 1,
    video: bool = True,
    audio: bool = True,
    audio_seconds: float | None = None,
    frame_times: Sequence[float] | None = None,
    video_start_sec: float = 0.0,
    audio_start_sec: float = 0.0,
    silent: bool = False,
    still: bool = False,
    seed: int = 0,
    **encoding,
) -> Path:
    """Write a small test file: scrolling noise with a flash and a click at each of :func:`event_times` (in
    sync, on one clock), or silence / a still picture.

    ``frame_times`` (s) make the frame rate variable. ``video_start_sec`` / ``audio_start_sec`` drop what
    comes before them, so the stream starts late and stays in sync. ``encoding`` goes to :func:`write_media`
    (container, codecs, pixel format, rotation, faststart)."""
    audio_seconds = seconds if audio_seconds is None else audio_seconds
    events = event_times(max(seconds, audio_seconds))
    times = video_frame_times(seconds, fps, frame_times, video_start_sec)
    wave = render_audio(audio_seconds, sample_rate, channels, events=events, silent=silent, seed=seed)
    first = int(round(audio_start_sec * sample_rate))
    return write_media(
        path,
        frames=render_frames(times, size, events=events, still=still, seed=seed) if video else None,
        frame_times=times,
        audio=np.ascontiguousarray(wave[:, first:]) if audio else None,
        sample_rate=sample_rate,
        fps=fps,
        audio_start_sec=first / sample_rate,
        **encoding,
    )


def scribble_on_the_heap(seed: int) -> None:
    """Allocate and free 2000 blocks of 64 B - 20 KB (frame-buffer sizes of small clips) filled with a byte
    pattern: memory that code allocates next holds this garbage rather than what it held before. Code that
    reads memory it never wrote (x264's assembly did) then gives other results."""
    rng = np.random.default_rng(seed)
    blocks = [bytes([int(v)]) * int(n) for v, n in zip(rng.integers(1, 256, 2000), rng.integers(64, 20_000, 2000))]
    del blocks


class RouteServer:
    """HTTP server on 127.0.0.1 serving ``routes[path]``: a list of behaviours, one per request (the last one
    repeats); counts requests per path.

    Behaviours: ``("ok", body)``, ``("status", code)``, ``("redirect", location)`` (302), ``("trickle", body)``
    (announces the whole body, then sends a byte every TRICKLE_EVERY_S), ``("gated", body)`` (sends half of the body,
    then the rest once ``gate`` is set), ``("cut", body)`` (announces the whole body, sends half of it, then closes
    the connection).
    """

    TRICKLE_EVERY_S = 0.2  # a trickling route sends one byte this often, for ever (until the client hangs up)
    GATE_WAIT_S = 120.0  # a gated route sends its second half at the latest after this long

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[str, Any]]] = {}
        self.hits: Counter[str] = Counter()
        self.gate = threading.Event()
        self.closing = threading.Event()
        server, count_lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with count_lock:
                    server.hits[self.path] += 1
                    n = server.hits[self.path]
                plan = server.routes.get(self.path) or [("status", 404)]
                kind, arg = plan[min(n, len(plan)) - 1]
                try:
                    getattr(server, f"_{kind}")(self, arg)
                except OSError:  # the client hung up
                    pass
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}/models"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, ckpt_id: str, filename: str, *plan: tuple[str, Any]) -> str:
        path = f"/models/{ckpt_id}/{filename}"
        self.routes[path] = list(plan)
        return path

    def close(self) -> None:
        self.closing.set()
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _head(h: BaseHTTPRequestHandler, length: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(length))
        h.end_headers()

    def _ok(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self._head(h, len(body))
        h.wfile.write(body)

    def _status(self, h: BaseHTTPRequestHandler, code: int) -> None:
        h.send_error(code)

    def _redirect(self, h: BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _trickle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self._head(h, len(body))
        for i in range(len(body)):
            if self.closing.wait(self.TRICKLE_EVERY_S):
                return
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()

    def _gated(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self._head(h, len(body))
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        self.gate.wait(self.GATE_WAIT_S)
        h.wfile.write(body[len(body) // 2 :])

    def _cut(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self._head(h, len(body))
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()

