"""Assemble ``tools/results/speed.md`` from its section files in ``tools/results/speed/``.

Every speed measurement is written by its own command into its own section file, so one
tool's run never overwrites another's:

* ``datafree.md``: ``python -m tools.time_wide`` (data-free pass against load + save);
* ``search.md``: ``python -m tools.time_wide_data`` (data-aware search);
* ``memory.md``: ``python -m tools.time_wide --skip-timing --memory ROWS...``;
* ``chain_memory.md``: ``python -m tools.time_wide --skip-timing --chain-memory``;
* ``latency.md``: ``python -m tools.bench`` (onnxruntime latency, refine + search).

A section file starts with ``<!-- command: ... -->`` (the command that wrote it), then its
markdown. The tools rebuild ``speed.md`` themselves after writing a section; to rebuild it
by hand (after editing a section file, say):

    python -m tools.speed_report [--results tools/results] [--strict]

A missing section file is not dropped: ``speed.md`` lists it as missing, with the command
that writes it, and a warning goes to stderr (``--strict``: exit status 1 as well).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RESULTS",
    "SECTIONS",
    "assemble",
    "command_line",
    "read_section",
    "write_report",
    "write_sections",
]

RESULTS = Path(__file__).resolve().parent / "results"
_COMMENT = "<!-- command: "


@dataclass(frozen=True)
class Section:
    name: str  # the file is ``speed/<name>.md``
    title: str
    command: str  # the command that writes it (its usual form)
    headed: bool = True  # the writer adds ``### title (`command`)``; else the text has its own


# The fixed order of speed.md.
SECTIONS = (
    Section("datafree", "Data-free compression time", "python -m tools.time_wide --repeats 3"),
    Section("search", "Data-aware search", "python -m tools.time_wide_data"),
    Section(
        "progress",
        "Data-aware search: progress and time limit",
        "python -m tools.time_wide_data --runs p20,p20limit --cli-repeats 1",
    ),
    Section(
        "memory",
        "Data path memory",
        "python -m tools.time_wide --skip-timing --memory 1024 2048",
    ),
    Section(
        "chain_memory",
        "Data-free chain memory",
        "python -m tools.time_wide --skip-timing --chain-memory",
    ),
    Section(
        "latency",
        "onnxruntime latency and refine + search",
        "python -m tools.bench",
        headed=False,
    ),
)
_BY_NAME = {s.name: s for s in SECTIONS}


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m tools.<module> ARGS`` as it was run (``argv`` defaults to
    ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", f"tools.{module}", *([shlex.join(args)] if args else [])])


def read_section(path: Path) -> tuple[str | None, str]:
    """(the command recorded in a section file or None, its markdown without that line)."""
    text = path.read_text()
    first, _, rest = text.partition("\n")
    if first.startswith(_COMMENT) and first.rstrip().endswith("-->"):
        return first[len(_COMMENT) :].rstrip()[:-3].strip(), rest.strip("\n")
    return None, text.strip("\n")


def assemble(folder: Path) -> tuple[str, list[str]]:
    """The text of speed.md from the section files in ``folder``, and the missing names."""
    parts, rows, missing = [], [], []
    for section in SECTIONS:
        path = folder / f"{section.name}.md"
        if path.is_file():
            command, body = read_section(path)
            rows.append(
                f"| {section.title} | `speed/{path.name}` | `{command or section.command}` |"
            )
            parts.append(body)
        else:
            missing.append(section.name)
            rows.append(
                f"| {section.title} | **missing** (`speed/{path.name}`) | "
                f"not measured yet: `{section.command}` |"
            )
            parts.append(
                f"### {section.title}: missing\n\n"
                f"No section file `speed/{path.name}`; `{section.command}` writes it."
            )
    header = (
        "## Speed\n\n"
        # the old command, still good (stdlib only): tools/results/speed.md is assembled with it
        "Assembled by `python -m tools.speed_report` from the section files in "
        "`tools/results/speed/`; each section comes from its own command, run on its own "
        "(on a shared machine), so timings and ratios are only comparable within one "
        "section (one run), not across sections.\n\n"
        "| section | file | command |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return header + "\n" + "\n\n".join(parts) + "\n", missing


def write_report(results: Path = RESULTS) -> tuple[Path, list[str]]:
    """Write ``results/speed.md`` from ``results/speed/``; warn on stderr about gaps."""
    text, missing = assemble(results / "speed")
    path = results / "speed.md"
    path.write_text(text)
    for name in missing:
        print(
            f"speed_report: section {name!r} missing ({results / 'speed' / (name + '.md')}); "
            f"run `{_BY_NAME[name].command}`",
            file=sys.stderr,
        )
    return path, missing


def write_sections(out: Path, sections: dict[str, str], command: str) -> None:
    """Write each of ``sections`` to ``out/speed/<name>.md`` and rebuild ``out/speed.md``.

    ``out`` is a results folder (the tools' default: ``tools/results``). A path ending in
    ``.md`` gets the sections' text as one file instead, and nothing else is touched."""
    if out.suffix == ".md":
        out.write_text("".join(sections.values()))
        return
    if not sections:
        return
    folder = out / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sections.items():
        section = _BY_NAME[name]
        body = text.strip("\n")
        if section.headed:
            body = f"### {section.title} (`{command}`)\n\n{body}"
        (folder / f"{name}.md").write_text(f"{_COMMENT}{command} -->\n{body}\n")
        print(f"wrote {folder / (name + '.md')}", file=sys.stderr)
    path, _ = write_report(out)
    print(f"rebuilt {path} (python -m tools.speed_report does the same)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="results folder: reads RESULTS/speed/*.md, writes RESULTS/speed.md",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a section is missing")
    args = parser.parse_args(argv)
    path, missing = write_report(args.results)
    print(f"wrote {path}" + (f" ({len(missing)} section(s) missing)" if missing else ""))
    return 1 if missing and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
