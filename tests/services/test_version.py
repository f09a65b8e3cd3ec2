"""`reciprocity --version` prints the installed package's version (the image test checks it in the image)."""

from __future__ import annotations

from importlib import metadata

import pytest

from services.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"reciprocity {metadata.version('reciprocity-ledger')}\n"
