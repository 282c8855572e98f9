"""The README's and docs/'s code blocks still work as written: the cheap ones are run, nothing else.

Selected by the shape of a line, in fenced blocks of README.md and docs/*.md:
- `glp ... --help` (or `-h`) in a bash block: run through `glp.cli.main`, must exit 0;
- any other `glp ...` command line in a bash block: parsed by the `glp` parser only (options and subcommands exist);
- `export GLP_X=...` lines, and `GLP_X=... <command>` prefixes, in a bash block: the settings they build must load
  (`glp.config.load_settings`, with no other `GLP_*` variable and no glp.toml around);
- `import glp...` / `from glp... import ...` lines in a python block: executed alone;
- `python -m <module>` in a bash block: the module must exist (found, not run).
A block preceded by the line `<!-- readme-test: skip -->` is left out.

"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = "<!-- readme-test: skip -->"

@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line} ({self.lang or 'no language'} block)"


@dataclass(frozen=True)
class Case:
    kind: str  # help | parse | settings | import | module
    block: Block
    snippet: str  # the line(s) taken from the block
    payload: tuple  # what the check needs: argv, assignments, a statement or a module name


_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of a markdown page (indented ones too, dedented), minus those marked to skip."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        skipped = i > 0 and lines[i - 1].strip() == SKIP_MARKER
        if not skipped:
            blocks.append(Block(str(page.relative_to(ROOT)), i + 1, m["lang"].lower(), "\n".join(body)))
        i = j + 1
    return blocks


def _shell_lines(text: str) -> list[str]:
    """Logical shell lines: continuations joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (a quote left open): nothing to take
            continue
        if words:
            out.append(words)
    return out


_ASSIGN = re.compile(r"^(GLP_[A-Z0-9_]+)=(.*)$", re.DOTALL)


def cases_of(block: Block) -> list[Case]:
    cases = []
    if block.lang in ("bash", "sh", "shell", "console"):
        for words in _shell_lines(block.text):
            snippet = shlex.join(words)
            if words[0] == "export":
                env = tuple((m[1], m[2]) for w in words[1:] if (m := _ASSIGN.match(w)))
                if env:
                    cases.append(Case("settings", block, snippet, env))
                continue
            env = []
            while words and (m := _ASSIGN.match(words[0])):
                env.append((m[1], m[2]))
                words = words[1:]
            if env:
                cases.append(Case("settings", block, snippet, tuple(env)))
            if not words:
                continue
            if words[0] == "glp":
                kind = "help" if words[-1] in ("--help", "-h") else "parse"
                cases.append(Case(kind, block, snippet, tuple(words[1:])))
            for k, w in enumerate(words[:-1]):
                if w == "-m" and k > 0 and re.match(r"^(\S*/)?python3?$", words[k - 1]):
                    cases.append(Case("module", block, snippet, (words[k + 1],)))
    elif block.lang in ("python", "py"):
        for line in block.text.splitlines():
            stmt = line.split("#", 1)[0].strip()
            if re.match(r"^(import glp[\w.]*(\s+as\s+\w+)?(\s*,\s*glp[\w.]*)*|from glp[\w.]* import .+)$", stmt):
                assert not stmt.endswith(("(", "\\")), f"{block.where}: a multi-line import this test cannot run: {stmt}"
                cases.append(Case("import", block, stmt, (stmt,)))
    return cases


BLOCKS = [b for page in PAGES for b in fenced_blocks(page)]
CASES = [c for b in BLOCKS for c in cases_of(b)]


def _id(case: Case) -> str:
    return f"{case.block.page}:{case.block.line}:{case.kind}:{case.snippet[:60]}"


def _check_help(case: Case) -> None:
    from glp.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(case.payload))
    assert e.value.code == 0, f"{case.block.where}: `{case.snippet}` exited {e.value.code}"


def _check_parse(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    from glp.cli import build_parser

    try:
        build_parser().parse_args(list(case.payload))
    except SystemExit as e:
        pytest.fail(f"{case.block.where}: `{case.snippet}` is not a valid glp command line: "
                    f"{capsys.readouterr().err.strip()} (exit {e.code})")


def _check_settings(case: Case, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from glp.config import load_settings

    for name in list(os.environ):
        if name.upper().startswith("GLP_"):
            monkeypatch.delenv(name)
    for name, value in case.payload:
        monkeypatch.setenv(name, value)
    if dict(case.payload).get("GLP_PROFILE") == "gpu" and "GLP_DEVICE" not in dict(case.payload):
        import torch

        if not torch.cuda.is_available():  # the gpu profile is refused without a GPU unless the CPU is chosen: the
            monkeypatch.setenv("GLP_DEVICE", "cpu")  # block is for GPU machines; check the rest of its settings
    monkeypatch.chdir(tmp_path)  # no glp.toml of the checkout
    try:
        load_settings()
    except Exception as e:  # noqa: BLE001 (any failure is the block's, reported with its place)
        pytest.fail(f"{case.block.where}: the settings of `{case.snippet}` do not load: {type(e).__name__}: {e}")


def _check_import(case: Case) -> None:
    try:
        exec(compile(case.payload[0], case.block.where, "exec"), {})  # noqa: S102 (the docs' own import line)
    except ImportError as e:
        pytest.fail(f"{case.block.where}: `{case.snippet}` fails: {e}")


def _check_module(case: Case) -> None:
    name = case.payload[0]
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as e:
        pytest.fail(f"{case.block.where}: `python -m {name}`: {e}")
    if spec is None:
        pytest.fail(f"{case.block.where}: `python -m {name}`: no module named {name!r}")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_a_cheap_docs_block_runs_as_written(case: Case, monkeypatch, tmp_path, capsys):
    if case.kind == "help":
        _check_help(case)
    elif case.kind == "parse":
        _check_parse(case, capsys)
    elif case.kind == "settings":
        _check_settings(case, monkeypatch, tmp_path)
    elif case.kind == "import":
        _check_import(case)
    else:
        _check_module(case)


def test_the_readme_has_a_case_of_each_kind_so_the_selection_is_not_silently_empty():
    kinds = {c.kind for c in CASES if c.block.page == "README.md"}
    assert {"help", "import"} <= kinds, kinds
    assert {"settings", "module", "parse"} <= {c.kind for c in CASES}


def test_the_readme_stays_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 150, f"README.md has {n} lines: move detail into a page under docs/ (the map is in the README)"


def test_every_relative_link_of_the_readme_and_docs_points_at_a_file():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # links inside code are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)
