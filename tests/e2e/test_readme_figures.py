"""The README's demo figures are what its first command gives: the command is run here on
both demo models (tools/check_demo.py, the script that regenerates them) and every
figure the README quotes about it is compared with the README's text, so an edited or
stale figure fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import check_demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, str]:
    return check_demo.readme_figures(tmp_path_factory.mktemp("demo"))


def test_readme_quotes_every_demo_figure():
    readme = check_demo.quoted((ROOT / "README.md").read_text())
    expected = {
        "tanh kept",
        "tanh params",
        "tanh held-out",
        "held-out rows",
        "test rows",
        "tanh test",
        "tanh test dRMSE",
        "relu kept",
        "relu held-out",
        "relu test",
        "test / held-out",
        "final line",
        "int8 input bytes",
        "int8 alone bytes",
        "int8 alone held-out",
        "int8 afterwards held-out",
        "int8 budget kept",
        "int8 budget lumped held-out",
        "int8 budget held-out",
        "int8 budget bytes",
        "int8 budget lumped bytes",
    }
    assert set(readme) == expected, sorted(expected - set(readme))


def test_readme_demo_figures_are_the_commands(measured):
    assert set(measured) == set(check_demo.quoted((ROOT / "README.md").read_text()))
    readme = check_demo.quoted((ROOT / "README.md").read_text())
    assert check_demo.compare(measured, readme) == []


@pytest.mark.parametrize(("key", "fake"), [("tanh kept", "35.0%"), ("int8 budget bytes", "9,000")])
def test_an_edited_figure_is_caught(measured, key, fake):
    text = (ROOT / "README.md").read_text()
    edited = text.replace(measured[key], fake, 1)
    assert edited != text
    differences = check_demo.compare(measured, check_demo.quoted(edited))
    assert any(line.startswith(key) for line in differences), differences
