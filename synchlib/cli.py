"""The ``synchlib`` command line: ``predict``, ``sweep``, ``timeline``, ``desync``, ``fetch``, ``synth``,
``train-tiny``, ``run``, ``report``.

Errors that synchlib raises on purpose (bad input, missing files, failed downloads) print one line on stderr and
exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from .errors import SynchlibError

EXIT_USAGE = 2
DEFAULT_CHECKPOINT = "24-01-04T16-39-21"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit 2), like synchlib's own errors."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"synchlib: error: {message} (see {self.prog} --help)\n")


def _known_data(checkpoint: str):
    """The :class:`~synchlib.config.DataConfig` of a shipped checkpoint name (released id, tiny-synthetic), read
    without loading the model; None for a checkpoint file, whose config is inside it (limits that depend on the
    config are then checked once the model is loaded)."""
    from .config import load_config, released_config_path

    return load_config(checkpoint).data if released_config_path(checkpoint) is not None else None


def _check_model_args(args: argparse.Namespace) -> None:
    """Device and precision, before a model is loaded (or downloaded)."""
    from .model.device import check_precision, resolve_device

    resolve_device(args.device)
    check_precision(args.precision)


def _video(args: argparse.Namespace) -> Path:
    """The video argument: a sample name (``synthetic-demo``, ...) or a path."""
    from .manifests import resolve_video

    return resolve_video(args.video)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", default=DEFAULT_CHECKPOINT,
                   help=f"released id, 'tiny-synthetic', or a .pt path (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    p.add_argument("--audio-priming", default="drop", choices=("drop", "keep"),
                   help="AAC encoder-delay samples: drop (default, as current FFmpeg) or keep (older decoders)")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .io import probe
    from .model import load_model
    from .predict import check_k, predict
    from .preprocess import check_window

    # fail fast on bad arguments and unusable input, before loading (or downloading) a model
    _check_model_args(args)
    check_window(args.offset_sec, args.start_sec, _known_data(args.checkpoint))
    check_k(args.k)
    video = _video(args)
    probe(video)
    model = load_model(args.checkpoint, device=args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every warning is also in pred.warnings, printed with the result
        pred = predict(model, video, offset_sec=args.offset_sec, start_sec=args.start_sec, k=args.k,
                       audio_priming=args.audio_priming, precision=args.precision, pad=args.pad)
    print(json.dumps(pred.to_dict()) if args.json else pred)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .io import probe
    from .model import load_model
    from .rounding import round_summary, round_table
    from .sweep import check_sweep, summarize, sweep

    _check_model_args(args)
    offsets = args.offsets if args.offsets else None
    check_sweep(offsets, args.starts, _known_data(args.checkpoint))
    video = _video(args)
    probe(video)
    model = load_model(args.checkpoint, device=args.device)
    table = sweep(model, video, offsets=offsets, starts=args.starts, precision=args.precision,
                  audio_priming=args.audio_priming)
    summary = round_summary(summarize(table))  # from the unrounded table
    table = round_table(table, model.cfg.data.grid)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False))
    print(json.dumps(summary))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .checkpoints import fetch

    print(fetch(args.id, with_config=True))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import run_synth

    return run_synth(args)


def _add_synth(p: argparse.ArgumentParser) -> None:
    from .synthetic import add_synth_arguments

    add_synth_arguments(p)


def _add_train(p: argparse.ArgumentParser) -> None:
    from .train import add_train_arguments

    add_train_arguments(p)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    return run_train(args)


def _add_run(p: argparse.ArgumentParser) -> None:
    from .reports import add_run_arguments

    add_run_arguments(p)


def _cmd_run(args: argparse.Namespace) -> int:
    from .reports import run_notebook_cli

    return run_notebook_cli(args)


def _add_report(p: argparse.ArgumentParser) -> None:
    from .reports import add_report_arguments

    add_report_arguments(p)


def _cmd_report(args: argparse.Namespace) -> int:
    from .reports import run_report_cli

    return run_report_cli(args)


def _add_desync(p: argparse.ArgumentParser) -> None:
    from .desync import add_desync_arguments

    add_desync_arguments(p)


def _cmd_desync(args: argparse.Namespace) -> int:
    from .desync import run_desync

    return run_desync(args)


def _cmd_timeline(args: argparse.Namespace) -> int:
    from .io import probe
    from .model import load_model
    from .rounding import round_summary, round_table
    from .timeline import check_timeline, offset_over_time, summarize_timeline

    _check_model_args(args)
    check_timeline(args.hop_sec, args.start_sec, args.end_sec, _known_data(args.checkpoint))
    video = _video(args)
    probe(video)
    model = load_model(args.checkpoint, device=args.device)
    table = offset_over_time(model, video, hop_sec=args.hop_sec, start_sec=args.start_sec,
                             end_sec=args.end_sec, precision=args.precision, audio_priming=args.audio_priming)
    summary = round_summary(summarize_timeline(table))  # from the unrounded table
    table = round_table(table, model.cfg.data.grid)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False))
    print(json.dumps(summary))
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("video",
                   help="video file (any container/codec FFmpeg reads) or a sample name (synthetic-demo, ...)")
    p.add_argument("--offset-sec", type=float, default=0.0,
                   help="shift the audio by this much on purpose, in seconds (+: audio early; default 0)")
    p.add_argument("--start-sec", type=float, default=0.0,
                   help="where the window starts in the video, in seconds (>= 0, default 0)")
    p.add_argument("-k", type=int, default=5, help="how many top offsets to list (>= 1, default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--pad", action="store_true",
                   help="pad a clip shorter than the window (last frame repeated, silence) instead of failing; "
                        "the result's warnings say so")
    _model_args(p)


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file or sample name")
    p.add_argument("--offsets", type=float, nargs="*",
                   help="offsets to inject, in seconds (default: every offset of the model's grid)")
    p.add_argument("--starts", type=float, nargs="*", default=[0.0],
                   help="window starts in seconds (>= 0, default 0)")
    p.add_argument("--csv", type=Path, help="also write the table here")
    _model_args(p)


def _add_timeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file or sample name")
    p.add_argument("--hop-sec", type=float, default=None,
                   help="window hop, at least one video frame (default 1.28 s: segments are shared)")
    p.add_argument("--start-sec", type=float, default=0.0,
                   help="where the first window starts, in seconds (>= 0, default 0)")
    p.add_argument("--end-sec", type=float, default=None,
                   help="the last window ends by this time, in seconds (default: the end of the video)")
    p.add_argument("--csv", type=Path, help="also write the table here")
    _model_args(p)


def _add_fetch(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="released checkpoint id, e.g. " + DEFAULT_CHECKPOINT)


# name -> (help in the command list, adds the command's arguments, runs it). The arguments of a command are only
# added when that command is on the command line: some come from modules that import torch, which `--help` and
# the command list do not need.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "predict": ("predict the audio-visual offset of a video", _add_predict, _cmd_predict),
    "sweep": ("predict many (start, offset) windows of one video", _add_sweep, _cmd_sweep),
    "timeline": ("offset over time on a long video (sliding windows, streaming decode)", _add_timeline,
                 _cmd_timeline),
    "fetch": ("download and verify a released checkpoint into the cache", _add_fetch, _cmd_fetch),
    "synth": ("write synthetic sparse-cue clips and a manifest", _add_synth, _cmd_synth),
    "train-tiny": ("train the tiny Synchformer on synthetic clips (CPU)", _add_train, _cmd_train),
    "run": ("execute a notebook headless with papermill and write an HTML report", _add_run, _cmd_run),
    "report": ("run a notebook for every video of a manifest (batch reports)", _add_report, _cmd_report),
    "desync": ("DeSync metric of (video, audio) pairs: mean |offset| of the first and last window", _add_desync,
               _cmd_desync),
}  # fmt: skip


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The command-line parser. Only the command named in ``argv`` (default ``sys.argv[1:]``) gets its arguments;
    the others are listed by name and help. ``full=True`` adds every command's arguments (tests, documentation)."""
    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="synchlib", description="Audio-visual synchronisation with Synchformer")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add, cmd) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=cmd)
        if not (full or name == chosen):
            continue
        try:
            add(p)
        except ImportError as e:  # optional extras (notebook stack) missing
            p.set_defaults(func=lambda a, e=e: _missing(e))
    return parser


def _missing(e: ImportError) -> int:
    raise SynchlibError(f"this command needs an optional dependency ({e}); pip install 'synchlib[notebooks]'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line): an exit code, as from every command
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except SynchlibError as e:
        print(f"synchlib: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synchlib: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected: still one line, but say how to get the traceback
        if os.environ.get("SYNCHLIB_DEBUG"):
            raise
        print(f"synchlib: unexpected error: {e.__class__.__name__}: {e} (set SYNCHLIB_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
