"""tools/speed_report.py builds speed.md from the section files in a fixed order, with a
header naming each section's command, and reports a missing section instead of dropping it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools import speed_report

ROOT = Path(__file__).resolve().parents[2]


def _write(folder: Path, name: str, command: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(f"<!-- command: {command} -->\n{body}\n")


def test_sections_in_fixed_order_with_commands(tmp_path):
    names = [s.name for s in speed_report.SECTIONS]
    assert names == ["datafree", "search", "progress", "memory", "chain_memory", "latency"]
    for name in reversed(names):  # written out of order: the order is the assembler's
        _write(tmp_path / "speed", name, f"python tools/x.py --{name}", f"### {name} body")
    path, missing = speed_report.write_report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "speed.md" and missing == []
    assert text.startswith("## Speed\n")
    assert "only comparable within one section" in text
    positions = [text.index(f"### {name} body") for name in names]
    assert positions == sorted(positions)
    for name in names:  # the header names the command that wrote each section
        assert f"`python tools/x.py --{name}`" in text.split("### ")[0]
    assert "<!-- command" not in text and "missing" not in text


def test_missing_section_is_reported(tmp_path, capsys):
    for name in ("datafree", "latency"):
        _write(tmp_path / "speed", name, "python tools/x.py", f"### {name} body")
    path, missing = speed_report.write_report(tmp_path)
    assert missing == ["search", "progress", "memory", "chain_memory"]
    text = path.read_text()
    err = capsys.readouterr().err
    for name in missing:
        command = next(s.command for s in speed_report.SECTIONS if s.name == name)
        assert f"`speed/{name}.md`" in text and command in text  # in the header and body
        assert f"section {name!r} missing" in err and command in err
    assert "### datafree body" in text and "### latency body" in text
    assert text.index("Data path memory: missing") < text.index("### latency body")


def test_cli_strict_exit_status(tmp_path):
    _write(tmp_path / "speed", "datafree", "python tools/time_wide.py", "### a")
    run = [sys.executable, "-m", "tools.speed_report", "--results", str(tmp_path)]
    loose = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=False)
    assert loose.returncode == 0 and "missing" in loose.stderr
    strict = subprocess.run(
        [*run, "--strict"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert strict.returncode == 1 and (tmp_path / "speed.md").is_file()


def test_write_sections_heads_and_rebuilds(tmp_path, capsys):
    speed_report.write_sections(
        tmp_path, {"datafree": "table\n", "latency": "### own heading\n"}, "python tools/t.py"
    )
    command, body = speed_report.read_section(tmp_path / "speed" / "datafree.md")
    assert command == "python tools/t.py"
    assert body == "### Data-free compression time (`python tools/t.py`)\n\ntable"
    assert speed_report.read_section(tmp_path / "speed" / "latency.md")[1] == "### own heading"
    assert "### own heading" in (tmp_path / "speed.md").read_text()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    single = legacy / "one.md"  # a FILE.md: the text alone, no sections, no speed.md
    speed_report.write_sections(single, {"search": "x\n"}, "python tools/t.py")
    assert single.read_text() == "x\n"
    assert sorted(p.name for p in legacy.iterdir()) == ["one.md"]
    capsys.readouterr()


def test_checked_in_sections_assemble_to_speed_md():
    """tools/results/speed.md is what the assembler makes of tools/results/speed/."""
    text, _ = speed_report.assemble(speed_report.RESULTS / "speed")
    assert (speed_report.RESULTS / "speed.md").read_text() == text
