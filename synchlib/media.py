"""Playable views of what the model saw and heard."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from . import plot
from .predict import logits_to_prediction
from .preprocess import Clip, offset_class
from .sweep import Predictor

PREVIEW_MIN_SIDE = 224  # small model inputs (the tiny model's 64 px) are upscaled so they can be seen


def write_clip_video(clip: Clip, path: str | Path, *, fps: int | None = None, sample_rate: int | None = None) -> Path:
    """Write the model's input window as an MP4: the cropped frames the segments use, with the *shifted* audio
    that goes with them (the crop's samples aligned to the same frames). Returns ``path``."""
    path = Path(path)
    d = clip.decoded
    fps = fps or int(round(d.fps if d else 25))
    sr = sample_rate or (d.sample_rate if d else 16000)
    frames = clip.frames  # (Tw, h, w, 3)
    first = int(clip.frame_indices[0] - clip.window.v_start)  # frames skipped at the crop start (2)
    a0 = int(round(first / fps * sr))
    wave = clip.wave[a0 : a0 + int(round(len(frames) / fps * sr))].astype(np.float32)
    scale = max(1, int(np.ceil(PREVIEW_MIN_SIDE / min(frames.shape[1:3]))))
    h, w = frames.shape[1] * scale, frames.shape[2] * scale
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "fast", "threads": "1"})
        vs.width, vs.height, vs.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        aus = c.add_stream("aac", rate=sr, layout="mono")
        for i, img in enumerate(frames):
            big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            big = np.pad(big, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(big), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        for s in range(0, len(wave), 1024):
            chunk = wave[None, s : s + 1024]
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, s, Fraction(1, sr)
            for p in aus.encode(f):
                c.mux(p)
        for p in aus.encode(None):
            c.mux(p)
    return path


def show_clip(clip: Clip, path: str | Path = "model_input.mp4"):
    """An embedded HTML5 video of :func:`write_clip_video`'s output, for notebooks; its first frame is the poster,
    so the video is not blank in a static report or before it plays."""
    import base64
    import io

    import matplotlib.image
    from IPython.display import HTML

    video = base64.b64encode(write_clip_video(clip, path).read_bytes()).decode("ascii")
    first = clip.frames[0]
    scale = max(1, int(np.ceil(PREVIEW_MIN_SIDE / min(first.shape[:2]))))
    poster = io.BytesIO()
    matplotlib.image.imsave(poster, np.repeat(np.repeat(first, scale, axis=0), scale, axis=1), format="png")
    poster_uri = "data:image/png;base64," + base64.b64encode(poster.getvalue()).decode("ascii")
    return HTML(f'<video controls poster="{poster_uri}" src="data:video/mp4;base64,{video}"></video>')


def shift_predictions(predictor: Predictor, offsets: Sequence[float], start_sec: float = 0.0) -> list:
    """Predictions (:class:`synchlib.predict.Prediction`) for the window at ``start_sec`` with the audio shifted
    by each of ``offsets`` that fits the clip (the others are left out), from a
    :class:`synchlib.sweep.Predictor` with a video set: its cached visual features are computed at most once,
    each shift costs the audio branch and the synchronisation transformer only."""
    cfg = predictor.cfg
    fitting = [float(o) for o in offsets if predictor.fits(float(o), start_sec)]
    if not fitting:
        return []
    logits = predictor.logits(fitting, start_sec)
    return [
        logits_to_prediction(lg, cfg.grid, kind=cfg.sync.head, target_class=offset_class(round(o, 2), cfg.data),
                             injected_offset_sec=o, start_sec=start_sec)
        for o, lg in zip(fitting, logits)
    ]  # fmt: skip


def offset_explorer(predictor: Predictor, start_sec: float = 0.0):
    """An ipywidgets slider over the offset grid, for a live kernel: each move re-runs only the audio branch and
    the synchronisation head of a :class:`synchlib.sweep.Predictor` with a video set (its visual features are
    cached). A static report cannot run it: show :func:`shift_predictions` with
    :func:`synchlib.plot.shift_probabilities` there (the HTML export drops widget outputs)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    grid = predictor.cfg.grid
    step = float(grid[1] - grid[0]) if len(grid) > 1 else 0.2
    slider = widgets.FloatSlider(value=0.0, min=float(grid[0]), max=float(grid[-1]), step=step,
                                 description="offset (s)", continuous_update=False)
    out = widgets.Output()

    def show(change=None):
        off = round(float(slider.value), 2)
        with out:
            out.clear_output(wait=True)
            preds = shift_predictions(predictor, [off], start_sec)
            if not preds:
                print(f"a shift of {off:+.2f} s does not fit the clip at {start_sec:g} s")
                return
            plt.show(plot.probabilities(preds[0]))

    slider.observe(show, names="value")
    display(widgets.VBox([slider, out]))
    show()
    return slider


def write_thumbnail(video: str | Path, path: str | Path, at_sec: float = 1.0, height: int = 90) -> Path | None:
    """A small PNG of the frame shown ``at_sec`` into ``video`` (the first frame if shorter); None if the file
    cannot be decoded (callers such as batch reports treat thumbnails as optional)."""
    try:
        with av.open(str(video)) as c:
            stream = c.streams.video[0]
            chosen = None
            for frame in c.decode(stream):
                chosen = frame
                if frame.time is not None and frame.time >= at_sec:
                    break
            if chosen is None:
                return None
            w = max(2, int(round(chosen.width * height / chosen.height)))
            chosen.reformat(width=w, height=height, format="rgb24").to_image().save(str(path))
            return Path(path)
    except (av.error.FFmpegError, IndexError, OSError, ValueError):
        return None
