"""Every command the README and the docs/ pages show still runs as written, and CI runs the README's.

Each ``mtcolor-batch`` line in a shell block is parsed by the real CLI (the command exists, every
option exists, values parse, arguments are neither missing nor extra); ``python bench/...`` and
``bench/...`` lines name a script that exists and takes each option shown; ``pip install`` lines name
extras that pyproject.toml defines; Python blocks import names that exist. Nothing is executed.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml

from mtcolor_batch.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", "|", ";"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line, for the failure message
    argv: tuple[str, ...]


def fenced_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every fenced code block."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append((opening.group(2), start + 1, "\n".join(body)))
        i += 1
    return blocks


def shell_commands(path: Path) -> list[Command]:
    """Commands of the page's shell blocks."""
    where = str(path.relative_to(ROOT))
    blocks = [(first, body) for lang, first, body in fenced_blocks(path) if lang in SHELL]
    return [c for first, body in blocks for c in block_commands(where, first, body)]


def block_commands(where: str, first: int, body: str) -> list[Command]:
    """One block's commands: continuation lines joined, comments dropped, split at && | ;."""
    found = []
    logical: list[tuple[int, str]] = []
    pending = ""
    for offset, line in enumerate(body.splitlines()):
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append((first + offset, pending + line))
        pending = ""
    for number, text in logical:
        argv: list[str] = []
        for token in [*shlex.split(text, comments=True), ";"]:
            if token in SEPARATORS:
                if argv:
                    found.append(Command(f"{where}:{number}", tuple(argv)))
                argv = []
            else:
                argv.append(token)
    return found


ALL = [c for page in PAGES for c in shell_commands(page)]
CLI = [c for c in ALL if c.argv[0] == "mtcolor-batch"]
BENCH = [
    c
    for c in ALL
    if c.argv[0].startswith("bench/")
    or (c.argv[0] == "python" and c.argv[1:2] and c.argv[1].startswith("bench/"))
]
PIP = [c for c in ALL if c.argv[:2] == ("pip", "install")]


def test_the_pages_show_commands_at_all() -> None:
    # Guards the extraction itself: a parser that found nothing would pass every test below.
    assert len(CLI) > 40 and len(BENCH) > 10 and len(PIP) >= 4
    assert any(c.where.startswith("README.md") for c in CLI)
    assert any(c.argv[:3] == ("mtcolor-batch", "run", "examples/scans") for c in CLI)


@pytest.mark.parametrize("command", CLI, ids=[c.where for c in CLI])
def test_every_mtcolor_batch_command_parses(command: Command) -> None:
    root = typer.main.get_command(app)
    ctx = root.make_context("mtcolor-batch", list(command.argv[1:]), resilient_parsing=False)
    group, rest = root, [*ctx._protected_args, *ctx.args]
    # Walk down the command groups (`hints check`, `journal merge`, `eval protocol`), parsing each
    # level for real: an unknown command or option, a missing or extra argument fails here.
    while True:
        name = rest[0]
        sub = group.get_command(ctx, name)
        assert sub is not None, f"{command.where}: unknown command {name!r} in {' '.join(command.argv)}"
        ctx = sub.make_context(name, rest[1:], parent=ctx)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args] if hasattr(sub, "commands") else []
        if not rest:
            break
        group = sub


def _options(argv: tuple[str, ...]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize("command", BENCH, ids=[c.where for c in BENCH])
def test_every_bench_command_names_a_script_and_its_options(command: Command) -> None:
    script = command.argv[1] if command.argv[0] == "python" else command.argv[0]
    path = ROOT / script
    assert path.is_file(), f"{command.where}: {script} does not exist"
    text = path.read_text(encoding="utf-8")
    for option in _options(command.argv):
        spelled = (f'"{option}"', f"{option})", f"{option}=", f" {option}")
        assert any(s in text for s in spelled), f"{command.where}: {script} has no option {option}"


def _extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib: Python 3.10 is supported
    section = text[text.index("[project.optional-dependencies]") :].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


@pytest.mark.parametrize("command", PIP, ids=[c.where for c in PIP])
def test_every_pip_install_names_extras_that_exist(command: Command) -> None:
    for arg in command.argv[2:]:
        match = re.fullmatch(r"(?:\.|mtcolor-batch)\[([\w,-]+)\]", arg)
        if match:
            assert set(match.group(1).split(",")) <= _extras(), f"{command.where}: {arg}"
        elif arg != "." and not arg.startswith(("-", "http", "git+")) and "==" not in arg:
            assert arg in {"torch"}, f"{command.where}: unexpected pip argument {arg}"


def test_every_python_block_imports_names_that_exist() -> None:
    seen = 0
    for page in PAGES:
        for lang, first, body in fenced_blocks(page):
            if lang != "python":
                continue
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{page.name}:{first}: {node.module}.{alias.name}"
                        seen += 1
    assert seen >= 1


def test_every_yaml_block_parses() -> None:
    # The sidecar and profile examples: a reader copies them as they are.
    for page in PAGES:
        for lang, first, body in fenced_blocks(page):
            if lang in ("yaml", "yml"):
                assert isinstance(yaml.safe_load(body), dict), f"{page.name}:{first}"


def test_paths_the_commands_name_in_the_repository_exist() -> None:
    for command in ALL:
        for arg in command.argv:
            if re.match(r"^(examples|bench|tests|profiles|docs|mtcolor_batch)/", arg) and "*" not in arg:
                produced = arg.startswith("examples/scans-colorized")
                assert produced or (ROOT / arg).exists(), f"{command.where}: {arg} does not exist"


# -- CI runs the README's set-up commands, verbatim ----------------------------------------------


def _readme_setup() -> list[str]:
    """The lines of the first code block under "## Set up"."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"```\w*\n(.*?)\n```", text[text.index("## Set up") :], re.S)
    assert match is not None
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_readme_sets_up_with_exactly_two_commands_in_a_virtual_environment() -> None:
    setup = _readme_setup()
    assert len(setup) == 2, setup
    install, test = setup
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert '"torch==2.13.0"' in install and ".[dev]" in install
    assert "ray" not in install and "iqa" not in install  # heavy extras stay out of a first try
    assert test == "pytest"
    landing = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")  # the site's copy says the same
    assert all(line in landing.splitlines() for line in setup)


def test_ci_runs_the_readme_setup_verbatim_then_the_slow_suite_and_the_docs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    begin = ci.index("# --- the README's two set-up commands, verbatim ---")
    end = ci.index("# --- end of the README's commands ---")
    assert ci[begin + 1 : end] == _readme_setup()
    after = [line for line in ci[end:] if line and not line.startswith("#")]
    for step in (
        "pytest -m slow",
        "ruff check mtcolor_batch tests bench examples",
        "mypy mtcolor_batch",
        "mkdocs build --strict",
    ):
        assert step in after, step
    assert any(line.startswith("pip install") and "ray" in line and "docs" in line for line in after)


def test_the_docs_site_lists_every_page() -> None:
    # mkdocs --strict refuses a page missing from the nav; this says which line to add, without mkdocs.
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.M))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= listed, f"add to mkdocs.yml's nav: {sorted(pages - listed)}"
    assert listed <= pages, f"mkdocs.yml's nav names missing pages: {sorted(listed - pages)}"


def test_readme_links_into_docs_are_relative_and_resolve() -> None:
    # Relative links work on GitHub and in a checkout; the site itself is checked by mkdocs --strict.
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), link
    assert len(text.splitlines()) <= 300


@pytest.mark.slow
def test_the_readme_main_job_runs_as_written(tmp_path: Path) -> None:
    # The newcomer's first run, command for command (the tiny bundle: no download), in a scratch
    # folder holding a copy of examples/scans.
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The main job") :]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert block is not None
    commands = block_commands("README.md", 0, block.group(1))
    assert [c.argv[:2] for c in commands] == [
        ("mtcolor-batch", "models"),
        ("mtcolor-batch", "run"),
        ("mtcolor-batch", "report"),
        ("mtcolor-batch", "verify"),
    ]
    shutil.copytree(ROOT / "examples" / "scans", tmp_path / "examples" / "scans")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MTCOLOR_HOME": str(tmp_path / "home")}
    for command in commands:
        argv = [sys.executable, "-m", "mtcolor_batch", *command.argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(command.argv)}\n{done.stdout}\n{done.stderr}"
    out = tmp_path / "examples-out"
    assert len(list(out.rglob("*.color.json"))) == 3
    assert (out / "report.html").is_file()
