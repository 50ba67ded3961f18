"""Fixtures shared by the end-to-end CLI tests."""

from __future__ import annotations

import pytest

from koinon.cli.main import main


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """``cli(*argv) -> (exit status, stdout, stderr)``, in this process."""

    def run(*argv: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
