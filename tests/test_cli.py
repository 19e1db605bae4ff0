"""``medseg`` argument errors of every subcommand: one line, exit 3 (a bad option), never
argparse's exit 2, which medseg's table of exit codes reserves for bad DICOM input."""

from __future__ import annotations

import pytest

from medseg.cli import main
from medseg.errors import ConfigError


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["segment"],
        ["segment", "in", "-o", "out.dcm", "--threads", "two"],
        ["eval", "pred"],
        ["model"],
        ["model", "export", "-o", "x.onnx"],
        ["model", "info"],
        ["phantom", "out", "--count", "many"],
        ["train", "--epochs", "1.5"],
        ["serve", "--port", "x"],
        ["worker", "--workers", "x"],
        ["status", "--nope"],
        ["demo", "--timeout", "soon"],
    ],
)
def test_usage_errors_exit_3_in_one_line(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == ConfigError.exit_code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg") and "error:" in err and "Traceback" not in err


def test_help_and_version_still_exit_0(capsys) -> None:
    for argv in (["--help"], ["--version"], ["segment", "--help"], ["model", "export", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    capsys.readouterr()
