"""Every code block in the README and in docs/ is run by a test, checked, or says why not.

Each fenced block is preceded by a marker comment:

- ``<!-- docs-test: run -->``: a Python block this module executes (from a scratch folder);
- ``<!-- docs-test: run by PATH::TEST -->`` (or ``run by .ci/run``): run by that test, which must
  exist (or by CI's script, which must contain the block's command);
- ``<!-- docs-test: flags -->``: a shell block whose commands' flags are checked against the
  parsers (the recipe's, ``hf-multitask predict`` / ``tweeteval-test`` / ``export``'s) and whose config files exist;
- ``<!-- docs-test: not run (REASON) -->``: not run, and why.

Whatever the marker, every Python block must compile and every name it takes from
``hf_multitask`` must exist, and every recipe command in any shell block is flag-checked: a
renamed flag or function breaks a test, not a reader.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!-- docs-test: (run|flags|run by (\S+)|not run \((.+)\)) -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RECIPE_COMMANDS = ("hf-multitask train", "accelerate launch recipes/train_pcgrad.py", "python recipes/train_pcgrad.py")
HF_MULTITASK_COMMANDS = ("hf-multitask predict", "hf-multitask tweeteval-test", "hf-multitask export")


def blocks() -> list[tuple[str, int, str, str, str | None]]:
    """(page, line, language, code, marker) of every fenced block."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.fullmatch(before.strip())
            line = text[: match.start()].count("\n") + 1
            found.append((str(page.relative_to(REPO)), line, match.group(1), match.group(2), marker.group(1) if marker else None))
    return found


BLOCKS = blocks()
IDS = [f"{page}:{line}" for page, line, *_ in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_every_block_says_how_it_is_checked(block):
    page, line, _, code, marker = block
    assert marker is not None, f"{page}:{line}: a code block without a <!-- docs-test: ... --> marker"
    if marker.startswith("run by "):
        target = marker[len("run by ") :]
        if target == ".ci/run":
            ci = (REPO / ".ci" / "run").read_text()
            for command in (c.strip() for c in code.splitlines() if c.strip() and not c.startswith("#")):
                assert command.split(" -e ")[0] in ci, f"{page}:{line}: .ci/run does not run {command!r}"
            return
        path, _, test = target.partition("::")
        assert (REPO / path).is_file(), f"{page}:{line}: no test file {path}"
        assert f"def {test}(" in (REPO / path).read_text(), f"{page}:{line}: {path} has no test {test}"


def _hf_multitask_names(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, name) pairs a block takes from hf_multitask: imports and ``hm.<name>`` uses."""
    aliases, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hf_multitask":
                    aliases[alias.asname or alias.name] = alias.name
                    used.append((alias.name, ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_multitask":
            used.extend((node.module, alias.name) for alias in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.append((aliases[node.value.id], node.attr))
    return used


PYTHON = [b for b in BLOCKS if b[2] == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[f"{p}:{n}" for p, n, *_ in PYTHON])
def test_every_python_block_compiles_and_names_what_exists(block):
    page, line, _, code, _ = block
    tree = ast.parse(code, filename=f"{page}:{line}")
    for module, name in _hf_multitask_names(tree):
        mod = importlib.import_module(module)
        if name:
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
                f"{page}:{line}: {module} has no {name!r}"
            )


def _commands(code: str) -> list[list[str]]:
    """The shell block's commands as token lists (comments dropped, continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for raw in joined.splitlines():
        raw = raw.split(" #", 1)[0].strip()
        if raw and not raw.startswith("#"):
            out.append(shlex.split(raw))
    return out


def _check_command(tokens: list[str], where: str) -> None:
    from hf_multitask.cli import build_parser
    from hf_multitask.recipe import RecipeParser

    text = " ".join(tokens)
    recipe = next((c for c in RECIPE_COMMANDS if text.startswith(c)), None)
    if recipe is not None:
        args = [t for t in tokens[len(recipe.split()) :] if t not in ("--help", "-h")]
        _, unknown = RecipeParser().parse_known_args(args)
        flags = [u for u in unknown if u.startswith("--")]
        assert not flags, f"{where}: the recipe has no flag(s) {flags}: {text}"
        for i, token in enumerate(args[:-1]):
            if token == "--config":
                assert (REPO / args[i + 1]).is_file(), f"{where}: no config file {args[i + 1]}"
    elif text.startswith(HF_MULTITASK_COMMANDS):
        try:
            build_parser().parse_args(tokens[1:])
        except SystemExit:
            pytest.fail(f"{where}: hf-multitask does not take: {text}")


SHELL = [b for b in BLOCKS if b[2] in ("bash", "sh", "shell")]


@pytest.mark.parametrize("block", SHELL, ids=[f"{p}:{n}" for p, n, *_ in SHELL])
def test_every_shell_command_takes_the_flags_it_shows(block):
    page, line, _, code, marker = block
    commands = _commands(code)
    checked = [c for c in commands if " ".join(c).startswith((*RECIPE_COMMANDS, *HF_MULTITASK_COMMANDS))]
    if marker == "flags":
        assert checked, f"{page}:{line}: marked 'flags' but holds no hf-multitask or recipe command"
    for tokens in checked:
        _check_command(tokens, f"{page}:{line}")


def test_the_flag_check_catches_a_renamed_flag():
    with pytest.raises(AssertionError, match=r"the recipe has no flag\(s\) \['--aggregater'\]"):
        _check_command(shlex.split("hf-multitask train --aggregater pcgrad --max-steps 3"), "here")
    with pytest.raises(pytest.fail.Exception, match="hf-multitask does not take"):
        _check_command(shlex.split("hf-multitask predict --model m --input i --output o --batchsize 2"), "here")
    with pytest.raises(pytest.fail.Exception, match="hf-multitask does not take"):
        _check_command(shlex.split("hf-multitask export m o --quantise int8"), "here")
    tree = ast.parse("import hf_multitask as hm\nhm.MultitaskTrainr\n")
    assert ("hf_multitask", "MultitaskTrainr") in _hf_multitask_names(tree)
    assert not hasattr(importlib.import_module("hf_multitask"), "MultitaskTrainr")


RUN = [b for b in BLOCKS if b[4] == "run"]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[f"{p}:{n}" for p, n, *_ in RUN])
def test_the_runnable_python_blocks_run(block, tmp_path, monkeypatch):
    page, line, language, code, _ = block
    assert language == "python", f"{page}:{line}: only Python blocks are run here"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs__"})


PUBLIC_MODULES = sorted(
    line.split("::: ", 1)[1].strip() for page in (REPO / "docs" / "reference").glob("*.md") for line in page.read_text().splitlines()
    if line.startswith("::: ")
)  # fmt: skip


def _undocumented(module_name: str) -> list[str]:
    """Public classes, functions and methods of a module's ``__all__`` without a docstring (a
    method that overrides a documented base method inherits its meaning and counts as documented)."""
    import inspect

    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name, None)
        if name.startswith("_"):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(value) or (value.__doc__ or "").strip():
                    continue
                inherited = any((getattr(getattr(base, attr, None), "__doc__", None) or "").strip() for base in obj.__mro__[1:])
                if not inherited:
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_of_the_reference_has_a_docstring(module):
    assert PUBLIC_MODULES, "the reference pages name modules"
    assert not _undocumented(module), f"{module}: no docstring (the reference would show nothing): {_undocumented(module)}"


# reStructuredText roles render as plain text through mkdocstrings (Markdown docstrings): ":class:`~x.Y`" on the page
_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|obj|exc|py:\w+):`")
# a mkdocstrings cross-reference: [`shown`][hf_multitask.dotted.path]
_CROSS_REFERENCE = re.compile(r"\]\[(hf_multitask(?:\.\w+)+)\]")


def _package_sources() -> list[Path]:
    return sorted((REPO / "hf_multitask").rglob("*.py"))


def test_no_docstring_uses_a_sphinx_role():
    found = [f"{p.relative_to(REPO)}:{i}" for p in _package_sources() for i, line in enumerate(p.read_text().splitlines(), 1)
             if _ROLE.search(line)]  # fmt: skip
    assert not found, f"reST roles (write [`Name`][hf_multitask.module.Name] or plain `code`): {found}"


def test_the_role_check_catches_a_role():
    assert _ROLE.search("A `Trainer` for :class:`~hf_multitask.MultitaskModel`")
    assert not _ROLE.search("A `Trainer` for [`MultitaskModel`][hf_multitask.modeling.MultitaskModel]")


def _resolves(path: str) -> bool:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_cross_reference_in_a_docstring_names_an_object_that_exists():
    # `mkdocs build --strict` (run by .ci/run) fails on a target the site does not render; this catches a renamed
    # or moved object without building the site
    targets = {m.group(1): p.relative_to(REPO) for p in _package_sources() for m in _CROSS_REFERENCE.finditer(p.read_text())}
    assert len(targets) > 50, "the docstrings cross-reference the API"
    broken = {t: str(p) for t, p in targets.items() if not _resolves(t)}
    assert not broken, f"cross-references to nothing: {broken}"
    assert not _resolves("hf_multitask.modeling.NoSuchModel")
