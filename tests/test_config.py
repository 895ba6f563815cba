"""Reading configs: ``${...}`` references are resolved by OmegaConf, resolver calls written in a file never run."""

from __future__ import annotations

import pytest
import yaml

from synchlib.config import config_from_dict, load_config, released_config_path
from synchlib.errors import ConfigError


def released_raw(name: str = "24-01-04T16-39-21") -> dict:
    return yaml.safe_load(released_config_path(name).read_text())


def test_references_follow_omegaconf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-value references keep their type, nested references resolve, escaped ones stay text, and resolver
    calls (a function named in the file: ``${oc.env:...}`` would read the environment) are kept as text."""
    monkeypatch.setenv("SYNCHLIB_TEST_SECRET", "s3cr3t")
    raw = released_raw()
    raw["data"]["which"] = "vfps"
    raw["extra"] = {
        "nested": "${data.${data.which}}",
        "text": "fps=${data.vfps}",
        "escaped": "\\${data.vfps}",
        "secret": "${oc.env:SYNCHLIB_TEST_SECRET}",
        "when": "run ${now:%Y} of ${data.vfps}",
    }
    cfg = config_from_dict(raw)
    assert cfg == load_config("24-01-04T16-39-21").replace(name="custom")
    assert cfg.raw["model"]["params"]["aproj"]["params"]["out_features"] == 768  # an int, not "768"
    assert cfg.raw["extra"] == {
        "nested": 25,
        "text": "fps=25",
        "escaped": "${data.vfps}",
        "secret": "${oc.env:SYNCHLIB_TEST_SECRET}",
        "when": "run ${now:%Y} of ${data.vfps}",
    }
    assert "s3cr3t" not in repr(cfg.raw)


@pytest.mark.parametrize(
    "extra, message",
    [({"x": "${data.nowhere}"}, "nowhere"), ({"x": "${extra.y}", "y": "${extra.x}"}, "Recursive")],
)
def test_broken_references_are_config_errors(extra: dict, message: str) -> None:
    raw = released_raw()
    raw["extra"] = extra
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, name="broken")
