"""The documentation says what the code does: its commands parse, its imports resolve, its
Python blocks import what they use, its make targets and file paths exist, its links and
anchors lead somewhere, the panel's words it quotes are the panel's, and the architecture
names every module.

Nothing is run: command lines go through the real argument parser only.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/README.md"]
PACKAGE = ROOT / "src/napari_mutualseg"

# A fence may be indented (a code block inside a list item).
FENCE = re.compile(r"^[ \t]*```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^[ \t]*```", re.M | re.S)
SHELL = ("bash", "sh", "shell", "console")
SPAN = re.compile(r"`([^`\n]+)`")
# Folders that benchmarks/gpu_check.sh writes, named before they exist.
WRITTEN = {"benchmarks/results/gpu/check/", "benchmarks/results/gpu_smoke/"}
# A path of this repository: not part of a longer path (../shared/..., /tmp/...) or a URL.
REPO_PATH = re.compile(r"(?<![\w./~-])((?:src|benchmarks|tests|docs)/[\w./*<>-]*[\w/*])")


def code_blocks(text: str, langs: tuple[str, ...]) -> list[tuple[int, str]]:
    """The code blocks of a Markdown text in these languages, each with its first line."""
    return [
        (text.count("\n", 0, m.start()) + 2, m["body"])
        for m in FENCE.finditer(text)
        if m["lang"] in langs
    ]


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, and
    ``a && b``, ``a; b``, ``a | b`` apart."""
    commands = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), ";"]:
            if word.rstrip(";") and word not in ("&&", "||", "|"):
                command.append(word.rstrip(";"))
            if word in ("&&", "||", "|") or word.endswith(";"):
                commands += [shlex.join(command)] if command else []
                command = []
    return commands


def doc_items(langs: tuple[str, ...], pick) -> list:
    """Every item ``pick`` finds in the docs' code blocks, named by its block's file and
    line."""
    items = []
    for doc in DOCS:
        for line, body in code_blocks(doc.read_text(encoding="utf-8"), langs):
            items += [pytest.param(item, id=f"{doc.name}:{line}") for item in pick(body)]
    return items


def cli_lines(body: str) -> list[list[str]]:
    """The arguments of each ``napari-mutualseg`` command of a shell block."""
    return [
        shlex.split(c)[1:] for c in shell_commands(body) if shlex.split(c)[0] == "napari-mutualseg"
    ]


def check_parses(argv: list[str]) -> None:
    """The argument parser takes these arguments, or the test fails with its message."""
    from napari_mutualseg.cli.parser import build_parser

    parser = build_parser()
    try:
        _, extra = parser.parse_known_args(argv)
    except SystemExit as err:
        if err.code == 0:  # --help, --version
            return
        pytest.fail(f"napari-mutualseg {shlex.join(argv)}: refused by the parser ({err})")
    if extra:
        pytest.fail(f"napari-mutualseg {shlex.join(argv)}: unknown arguments {extra}")


@pytest.mark.parametrize("argv", doc_items(SHELL, cli_lines))
def test_documented_command_lines_parse(argv: list[str]) -> None:
    check_parses(argv)


def test_a_renamed_option_fails_the_check() -> None:
    """The check above catches drift: an option the parser does not know, a missing argument."""
    doc = (
        "```bash\nnapari-mutualseg predict m.pt x.tif \\\n"
        "    --out o/ --tile-sise 256  # a typo\n```\n"
    )
    (argv,) = cli_lines(code_blocks(doc, ("bash",))[0][1])
    assert argv == ["predict", "m.pt", "x.tif", "--out", "o/", "--tile-sise", "256"]
    for wrong in (argv, ["supervise", "x.tif", "--out", "s.tif"]):
        with pytest.raises(pytest.fail.Exception):
            check_parses(wrong)


def python_imports(body: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` for each import of this package in a Python block (name None for a
    plain ``import``); a block that is a fragment is read line by line."""
    found = []
    for line in body.splitlines():
        line = line.split("#")[0].strip()
        if m := re.fullmatch(r"from (napari_mutualseg[\w.]*) import (.+)", line):
            names = m[2].strip("()").split(",")
            found += [(m[1], n.split(" as ")[0].strip()) for n in names if n.strip()]
        elif m := re.fullmatch(r"import (napari_mutualseg[\w.]*)( as \w+)?", line):
            found.append((m[1], None))
    return found


def check_resolves(module: str, name: str | None) -> None:
    mod = importlib.import_module(module)
    if name is not None:
        assert hasattr(mod, name), f"{module} has no {name}"


@pytest.mark.parametrize("module_name", doc_items(("python", "py"), python_imports))
def test_documented_imports_resolve(module_name: tuple[str, str | None]) -> None:
    check_resolves(*module_name)


def resolve(dotted: str) -> object | None:
    """What ``napari_mutualseg.a.b`` names (the longest importable module, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def class_has(path: Path, cls: str, attr: str) -> bool:
    """Whether class ``cls`` of module ``path`` has ``attr``: imported for the core (so that
    inherited methods and dataclass fields count), read from its source for the napari face
    (whose import would start Qt)."""
    if path.parent == PACKAGE:
        klass = getattr(importlib.import_module(f"napari_mutualseg.{path.stem}"), cls)
        fields = {f for k in klass.__mro__ for f in getattr(k, "__annotations__", {})}
        return hasattr(klass, attr) or attr in fields
    (node,) = [n for n in ast.parse(path.read_text()).body if getattr(n, "name", "") == cls]
    names = {getattr(n, "name", None) for n in node.body}
    for n in node.body:
        targets = n.targets if isinstance(n, ast.Assign) else [getattr(n, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return attr in names


def test_names_in_the_text_resolve() -> None:
    """The names the text gives in code spans are there: ``napari_mutualseg.x.y``, a core
    module's ``x.y`` (``measure.with_frame_interval``) and a class's ``Class.attr``
    (``AxisImage.from_file``, ``MutualSegWidget._build``)."""
    classes = {
        n.name: p
        for folder in (PACKAGE, PACKAGE / "_napari")
        for p in folder.glob("*.py")
        for n in ast.parse(p.read_text(encoding="utf-8")).body
        if isinstance(n, ast.ClassDef)
    }
    core = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    missing = []
    for doc in DOCS:
        for span in re.findall(r"`([^`]+)`", FENCE.sub("", doc.read_text(encoding="utf-8"))):
            m = re.fullmatch(r"(\w+)((?:\.\w+)+)(?:\(.*\))?", " ".join(span.split()), re.S)
            if not m or m[2] == ".py":
                continue
            head, rest = m[1], m[2].lstrip(".")
            if head == "napari_mutualseg" or head in core:
                full = head if head == "napari_mutualseg" else f"napari_mutualseg.{head}"
                found = resolve(f"{full}.{rest}") is not None
            elif head in classes:
                found = class_has(classes[head], head, rest.split(".")[0])
            else:
                continue
            if not found:
                missing.append(f"{doc.name}: {span}")
    assert not missing, "\n".join(missing)


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    named = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for _, body in code_blocks(text, SHELL):
            named |= {c.split()[1] for c in shell_commands(body) if c.startswith("make ")}
        named |= {s.split()[1] for s in SPAN.findall(text) if re.match(r"make [\w-]+", s)}
    assert named, "no make target found in the docs"
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


def test_named_files_exist() -> None:
    """Paths of this repository (``src/…``, ``benchmarks/…``, ``tests/…``, ``docs/…``) named
    in the text point at something."""
    missing = []
    for doc in DOCS:
        for path in set(REPO_PATH.findall(doc.read_text(encoding="utf-8"))):
            if "<" in path or path in WRITTEN:  # a pattern, as `results/<name>.md`
                continue
            if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(missing)


# Where a Markdown text links to: inline links and images (``[t](x)``, ``[t](x "title")``),
# reference definitions (``[ref]: x``) and HTML ``href``/``src``.
LINKS = (
    re.compile(r"\]\(\s*([^)\s]+)(?:\s+[\"'(][^)]*)?\)"),
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.M),
    re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.I),
)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (a link's text, no HTML tags) in lower case,
    punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings; a repeated heading's get ``-1``,
    ``-2``, … as GitHub numbers them."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        base = slug(heading)
        slugs.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return slugs


def broken_links(doc: Path) -> list[str]:
    """The relative links and anchors of a Markdown file that lead nowhere: a file or image
    that is not there, or an anchor (``#part``, ``page.md#part``) no heading of its page has.
    Code blocks and code spans hold no links."""
    text = re.sub(r"`[^`]+`", "", FENCE.sub("", doc.read_text(encoding="utf-8")))
    broken = []
    for target in [t for pattern in LINKS for t in pattern.findall(text)]:
        if re.match(r"\w+:|//", target):  # https://, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading in {linked.name})")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_lead_somewhere(doc: Path) -> None:
    broken = broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: " + ", ".join(broken)


def test_a_broken_link_fails_the_check(tmp_path: Path) -> None:
    """Each way a link can lead nowhere is caught, and the ways that work pass."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "pic.png").write_bytes(b"")
    (tmp_path / "docs/guide.md").write_text(
        "# Guide\n\n## From a script: *Python*\n\n## From a script: *Python*\n\n"
        "```bash\n# not a heading\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "# Front\n\n## Whole experiments: folders, plates and clusters\n\n"
        "[ok](#whole-experiments-folders-plates-and-clusters) [ok](docs/guide.md#guide)\n"
        "[ok](docs/guide.md#from-a-script-python-1 'second') ![ok](pic.png) [ok](docs/)\n"
        "[ok](https://napari.org#x) `[not a link](nowhere.md)`\n"
        "[gone](#whole-experiments) [gone](docs/guide.md#from-a-script-python-2)\n"
        "[gone](docs/guide.md#not-a-heading) ![gone](docs/pic.png)\n"
        '[gone](guide.md) <img src="shot.png">\n\n'
        "[ref]: docs/missing.md\n",
        encoding="utf-8",
    )
    assert [b.split(" (")[0] for b in broken_links(tmp_path / "README.md")] == [
        "#whole-experiments",
        "docs/guide.md#from-a-script-python-2",
        "docs/guide.md#not-a-heading",
        "docs/pic.png",
        "guide.md",
        "docs/missing.md",
        "shot.png",
    ]


def test_architecture_names_every_module() -> None:
    """Every module of the package and of ``_napari/`` is named in docs/ARCHITECTURE.md, and
    every module it names exists."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(\w+\.py)\b", text))
    modules = {
        p.name
        for folder in (PACKAGE, PACKAGE / "_napari", PACKAGE / "cli")
        for p in folder.glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert not modules - named, f"modules without a word in ARCHITECTURE.md: {modules - named}"
    benchmark_scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    test_files = {p.name for p in (ROOT / "tests").glob("*.py")}
    unknown = named - modules - benchmark_scripts - test_files
    assert not unknown, f"ARCHITECTURE.md names modules that do not exist: {unknown}"


def test_benchmark_options_exist() -> None:
    """Each ``--option`` given to a benchmark script in the docs is one the script names."""
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        commands = [c for _, body in code_blocks(text, SHELL) for c in shell_commands(body)]
        # inline ones too, also where a line breaks them
        spans = (" ".join(s.split()) for s in re.findall(r"`([^`]+)`", FENCE.sub("", text)))
        commands += [s for s in spans if re.search(r"(python|bash) benchmarks/", s)]
        for command in commands:
            words = command.split()
            for script in (w for w in words if re.fullmatch(r"benchmarks/\w+\.(py|sh)", w)):
                source = (ROOT / script).read_text(encoding="utf-8")
                for option in {w.split("=")[0] for w in words if w.startswith("--")}:
                    if not re.search(rf"{option}\b", source):
                        missing.append(f"{doc.name}: {script} {option}")
    assert not missing, "\n".join(missing)


SETTINGS = ("TrainConfig", "ExchangeSettings")


def settings_calls(text: str) -> list[str]:
    """The ``TrainConfig(...)`` and ``ExchangeSettings(...)`` a text writes, in code spans and
    Python blocks, each as its source (those with only literal arguments)."""
    sources = [s for s in SPAN.findall(text) if re.match(r"(TrainConfig|ExchangeSettings)\(", s)]
    sources += [body for _, body in code_blocks(text, ("python", "py"))]
    calls = []
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in SETTINGS
                and all(n.id in SETTINGS for n in ast.walk(node) if isinstance(n, ast.Name))
            ):
                calls.append(ast.unparse(node))
    return calls


def test_documented_settings_are_taken() -> None:
    """Every ``TrainConfig(...)`` and ``ExchangeSettings(...)`` in the docs is accepted."""
    from napari_mutualseg.config import ExchangeSettings, TrainConfig

    names = {"TrainConfig": TrainConfig, "ExchangeSettings": ExchangeSettings}
    refused = []
    for doc in DOCS:
        for call in settings_calls(doc.read_text(encoding="utf-8")):
            try:
                eval(call, {"__builtins__": {}}, names)  # literal arguments only
            except (TypeError, ValueError) as err:
                refused.append(f"{doc.name}: {call}: {err}")
    assert not refused, "\n".join(refused)


def command_options() -> dict[str, set[str]]:
    """The option strings of each ``napari-mutualseg`` subcommand."""
    from napari_mutualseg.cli.parser import build_parser

    # every command's parser knows the others (what an unknown option is told of)
    commands = build_parser().parse_known_args(["info", "x"])[0].parser.commands
    return {name: set(command.options()) for name, command in commands.items()}


def cli_options() -> set[str]:
    """Every option string of the ``napari-mutualseg`` command and its subcommands."""
    from napari_mutualseg.cli.parser import build_parser

    return set(build_parser().options()).union(*command_options().values())


def misplaced_options(span: str, commands: dict[str, set[str]]) -> list[str]:
    """The options a code span gives a command (``train --labels-out``, ``napari-mutualseg
    info --json``) that are not that command's."""
    m = re.match(rf"(?:napari-mutualseg )?({'|'.join(commands)})\b(.*)", span)
    if not m:
        return []
    return [o for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", m[2]) if o not in commands[m[1]]]


def test_options_in_the_text_are_their_commands() -> None:
    """``predict --option`` in the text names an option of ``predict``, not of another
    command."""
    commands = command_options()
    assert misplaced_options("info --labels-out x | head", commands) == ["--labels-out"]
    wrong = []
    for doc in DOCS:
        for span in re.findall(r"`([^`]+)`", FENCE.sub("", doc.read_text(encoding="utf-8"))):
            span = " ".join(span.split())
            wrong += [f"{doc.name}: {o} in `{span}`" for o in misplaced_options(span, commands)]
    assert not wrong, "\n".join(wrong)


def test_options_in_the_text_exist() -> None:
    """An ``--option`` the text names in a code span is one of the command's (in the
    benchmark notes, also one of a benchmark script's)."""
    options = cli_options()
    scripts = "\n".join(
        p.read_text(encoding="utf-8")
        for p in sorted((ROOT / "benchmarks").glob("*"))
        if p.suffix in (".py", ".sh")
    )
    unknown = []
    for doc in DOCS:
        for span in re.findall(r"`([^`]+)`", FENCE.sub("", doc.read_text(encoding="utf-8"))):
            span = " ".join(span.split())
            if re.match(r"(make|pip) ", span):  # their own options
                continue
            benchmark = doc.parent.name == "benchmarks" or "benchmarks/" in span
            for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
                if option in options or (benchmark and re.search(rf"{option}\b", scripts)):
                    continue
                unknown.append(f"{doc.relative_to(ROOT)}: {option} in `{span}`")
    assert not unknown, "\n".join(unknown)


def test_architecture_classes_are_where_it_says() -> None:
    """``Name, Other (module.py)`` in docs/ARCHITECTURE.md: each name is defined in that
    module (read from its source: the napari face is not imported)."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    wrong = []
    for names, module in re.findall(r"((?:[A-Z]\w+(?:, | \+ ))*[A-Z]\w+) \((\w+)\.py\)", text):
        (path,) = [
            p
            for p in (PACKAGE / f"{module}.py", PACKAGE / "_napari" / f"{module}.py")
            if p.exists()
        ]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {getattr(n, "name", None) for n in tree.body}
        wrong += [f"{n} ({module}.py)" for n in re.split(r", | \+ ", names) if n not in defined]
    assert not wrong, "\n".join(wrong)


# What other programs' menus say (Fiji's ROI Manager), quoted beside the panel's own words.
OTHER_PROGRAMS = {"Properties…"}


def test_quoted_panel_words_are_the_panels() -> None:
    """A button or menu item the text quotes with its ellipsis (*Segment a folder…*,
    *Finding cells…*) is a text the plugin shows; a menu path (*More › Save…*) is
    another program's."""
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (PACKAGE / "_napari").glob("*.py")
    ) + (PACKAGE / "napari.yaml").read_text(encoding="utf-8")
    missing = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text(encoding="utf-8"))
        for quoted in re.findall(r"(?<!\*)\*{1,2}([^*\n]+…)\*", text):
            if quoted not in OTHER_PROGRAMS and "›" not in quoted and quoted not in source:
                missing.append(f"{doc.relative_to(ROOT)}: {quoted}")
    assert not missing, "\n".join(missing)


def package_names() -> set[str]:
    """The public names of the core's modules (their ``__all__``)."""
    names: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            names |= set(
                getattr(importlib.import_module(f"napari_mutualseg.{path.stem}"), "__all__", ())
            )
    return names


def unimported(body: str, names: set[str]) -> set[str]:
    """Which of ``names`` a Python block uses without importing them itself."""
    tree = ast.parse(textwrap.dedent(body))
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    used = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    return (used & names) - imported


def test_python_blocks_import_what_they_use() -> None:
    """A Python block copied alone runs as far as this package goes: it imports every name of
    the package it uses (its data, ``image`` or ``boxes``, may come from an earlier block)."""
    names = package_names()
    missing = []
    for doc in DOCS:
        for line, body in code_blocks(doc.read_text(encoding="utf-8"), ("python", "py")):
            missing += [f"{doc.name}:{line}: {n}" for n in sorted(unimported(body, names))]
    assert not missing, "\n".join(missing)
