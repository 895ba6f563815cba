"""The command line: help without torch, every option documented, numbers without float32 noise, progress bars
in whole units, no third-party noise from the notebook stack."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from synchlib import cli
from synchlib.reports import run_notebook
from synchlib.rounding import grid_decimals

REPO = Path(__file__).resolve().parents[1]
RECORD_PARAMS = REPO / "tests" / "data" / "record_params.ipynb"
# a float written with 7 or more decimals: float32 noise (0.20000000298023224) or unrounded arithmetic
NOISE = re.compile(r"\d\.\d{7,}")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": "", "PYTHONPATH": str(REPO)})  # fmt: skip


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["timeline", "--help"], ["fetch", "--help"]])
def test_help_does_not_import_torch(argv):
    r = _python(
        "import sys, synchlib.cli\n"
        f"code = synchlib.cli.main({argv!r})\n"
        "print(code, 'torch' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 False", r.stdout


def test_package_names_are_lazy_and_predict_sweep_stay_functions():
    """``import synchlib`` loads no torch; once other modules import the ``synchlib.predict`` / ``synchlib.sweep``
    submodules, ``synchlib.predict`` and ``synchlib.sweep`` are still the functions."""
    r = _python(
        "import sys, types, synchlib\n"
        "assert 'torch' not in sys.modules, 'import synchlib loaded torch'\n"
        "import synchlib.timeline  # imports the predict submodule\n"
        "import synchlib.sweep\n"
        "from synchlib import predict, sweep\n"
        "assert isinstance(sys.modules['synchlib.predict'], types.ModuleType)\n"
        "assert predict is synchlib.predict is sys.modules['synchlib.predict'].predict\n"
        "assert sweep is synchlib.sweep is sys.modules['synchlib.sweep'].sweep\n"
        "model = synchlib.load_model('tiny-synthetic', device='cpu')\n"
        "pred = synchlib.predict(model, synchlib.resolve_video('synthetic-demo'))\n"
        "print(type(pred).__name__, sorted(set(synchlib.__all__) - set(dir(synchlib))))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "Prediction []"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_and_argument_has_help():
    commands = _subparsers(cli.build_parser([], full=True))
    assert set(commands) == set(cli.COMMANDS)
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in commands.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]  # fmt: skip
    assert not missing


def test_a_command_gets_its_arguments_without_the_full_parser():
    args = cli.build_parser(["timeline", "x.mp4"]).parse_args(["timeline", "x.mp4", "--end-sec", "9"])
    assert args.end_sec == 9.0 and args.func is cli._cmd_timeline


def test_grid_decimals():
    assert grid_decimals(np.linspace(-2.0, 2.0, 21).astype(np.float32)) == 1  # the released grid, 0.2 s steps
    assert grid_decimals(np.linspace(-0.15, 0.15, 7).astype(np.float32)) == 2  # 0.05 s steps
    assert grid_decimals(np.arange(2, dtype=np.float32)) == 0  # class indices (synchronisability head)


def test_predict_json_has_no_float32_noise(capsys):
    assert cli.main(["predict", "synthetic-demo", "-c", "tiny-synthetic", "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    assert not NOISE.search(out), NOISE.search(out)
    d = json.loads(out)
    assert d["grid"][1] == -1.8 and d["offset_sec"] in d["grid"]
    assert all(t["offset_sec"] in d["grid"] for t in d["topk"])
    assert abs(sum(d["probs"]) - 1.0) < 1e-4  # 21 probabilities, each rounded by at most 5e-7


def test_sweep_and_timeline_tables_have_no_float_noise(tmp_path, capsys):
    sweep_csv, timeline_csv = tmp_path / "sweep.csv", tmp_path / "timeline.csv"
    assert cli.main(["sweep", "synthetic-demo", "-c", "tiny-synthetic", "--device", "cpu", "--offsets", "-1.8", "0.2",
                     "--starts", "4", "--csv", str(sweep_csv)]) == 0  # fmt: skip
    assert cli.main(["timeline", "synthetic-demo", "-c", "tiny-synthetic", "--device", "cpu",
                     "--csv", str(timeline_csv)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    for text in (captured.out, sweep_csv.read_text(), timeline_csv.read_text()):
        assert not NOISE.search(text), NOISE.search(text)
    # the timeline's progress bar counts whole seconds of video: "7/10", never "3.0000000000000013/10.0"
    counts = re.findall(r"\| *([\d.]+)/([\d.]+) \[", captured.err.replace("\r", "\n"))
    assert counts and all(n.isdigit() and total.isdigit() for n, total in counts), counts
    assert counts[-1][0] == counts[-1][1]  # finished: the bar is full


def test_run_has_no_kernel_noise(tmp_path, capfd):
    run_notebook(RECORD_PARAMS, tmp_path / "out", {"video": "x.mp4"}, progress=False)
    err = capfd.readouterr().err
    assert "IPKernelApp" not in err and "without encryption" not in err, err


def test_run_drops_papermill_and_nbconvert_warnings_only(tmp_path, caplog):
    """A parameters cell papermill cannot parse (two '=' on a line) and an image without alt text; a failing cell
    still fails with its own error."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})  # fmt: skip
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    nb.cells = [
        nbformat.v4.new_code_cell("a = 1  # the default = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"import base64\nfrom IPython.display import Image\nImage(data=base64.b64decode({png!r}))"),
        nbformat.v4.new_code_cell("assert a == 2, 'asked to fail'"),
    ]
    src = tmp_path / "noisy.ipynb"
    nbformat.write(nb, src)
    with caplog.at_level(logging.INFO):
        run_notebook(src, tmp_path / "out", {"a": 2}, progress=False)
        assert (tmp_path / "out" / "noisy.html").exists()
        with pytest.raises(Exception, match="asked to fail"):
            run_notebook(src, tmp_path / "out2", {"a": 3}, progress=False)
    text = caplog.text
    for message in ("Unable to parse line", "Passed unknown parameter", "Alternative text is missing"):
        assert message not in text, text
    assert not any(f.__class__.__name__ == "_Drop" for f in logging.getLogger("papermill").filters)
