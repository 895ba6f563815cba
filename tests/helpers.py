"""Test utilities: a static file server on 127.0.0.1 and writers of odd media files."""

from __future__ import annotations

import functools
import threading
from fractions import Fraction
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np


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
    container: str | None = None,
    vcodec: str = "libx264",
    acodec: str = "aac",
    silent: bool = False,
    still: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small test file with moving noise and clicks (or silence / a still picture)."""
    rng = np.random.default_rng(seed)
    w, h = size
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with av.open(str(path), "w", format=container) as c:
        vs = as_ = None
        if video:
            vs = c.add_stream(vcodec, rate=fps)
            vs.width, vs.height = w, h
            vs.pix_fmt = "yuv420p"
        if audio:
            as_ = c.add_stream(acodec, rate=sample_rate, layout=layout)
        if vs is not None:
            n = int(round(seconds * float(fps)))
            base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for i in range(n):
                img = base if still else np.roll(base, i * 3, axis=1)
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for p in vs.encode(f):
                    c.mux(p)
            for p in vs.encode(None):
                c.mux(p)
        if as_ is not None:
            total = int(seconds * sample_rate)
            wave = np.zeros(total, np.float32)
            if not silent:
                wave += rng.normal(0, 0.01, total).astype(np.float32)
                for t in np.arange(0.3, seconds, 0.7):
                    s = int(t * sample_rate)
                    wave[s : s + 200] += 0.5
            fmt = as_.codec_context.codec.audio_formats[0].name if as_.codec_context.codec.audio_formats else "fltp"
            block = 1024 if acodec in ("aac", "libopus", "libmp3lame", "mp3") else 1024
            for start in range(0, total, block):
                chunk = np.repeat(wave[None, start : start + block], channels, axis=0)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                if fmt != "fltp":
                    frame = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate).resample(frame)[0]
                for p in as_.encode(frame):
                    c.mux(p)
            for p in as_.encode(None):
                c.mux(p)
    return path
