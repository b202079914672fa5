"""The documentation and the distribution: every `transfer ...` example in README.md
and docs/ parses against the command line, every install hint names the distribution
with an extra it has, the version has one owner, and the built site renders in
headless Chromium with a search that finds "quantize"."""

import configparser
import functools
import http.server
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import transfer
from tests.conftest import chrome
from transfer.cli import cli
from transfer.export import optional
from transfer.version import DISTRIBUTION, __version__

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
INSTALL_HINT = re.compile(r"pip install\s+'?(\{DISTRIBUTION\}|[\w.-]+)(\[[^\]]*\])?")
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "<"}
OPERATOR_CHARS = "|&;<>"
QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")
HIDE = {ord(c): 0xE000 + i for i, c in enumerate(OPERATOR_CHARS)}  # private-use characters
SHOW = {v: k for k, v in HIDE.items()}


def setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def requirement_name(line):
    return re.split(r"[\[<>=!~; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def extras():
    """{extra: {requirement names}} of setup.cfg."""
    section = setup_cfg()["options.extras_require"]
    return {
        name: {requirement_name(line) for line in section[name].splitlines() if line.strip()}
        for name in section
    }


# ---------------------------------------------------------------- examples


def code_lines(path):
    """(line number, line) of each line inside a code block of a Markdown file: fenced,
    or indented by four spaces after a blank line."""
    in_fence = in_indented = False
    previous_blank = True
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        blank = not line.strip()
        if in_fence:
            yield number, line
        elif not blank and line.startswith("    ") and (previous_blank or in_indented):
            in_indented = True
            yield number, line
        elif not blank:
            in_indented = False
        previous_blank = blank


def examples(path):
    """(line number, arguments after `transfer`) of every `transfer` command in the code
    blocks of `path`: continuation lines joined; a `$ ` prompt, environment variables,
    comments and what follows a pipe, a redirection or `&&` left out."""
    pending = None
    for number, line in code_lines(path):
        text = line.strip()
        if pending:
            number, text = pending[0], f"{pending[1]} {text}"
            pending = None
        if text.endswith("\\"):
            pending = (number, text[:-1])
            continue
        # Operator characters inside quotes (--label-sep "|") are words: hidden from the
        # lexer, which cannot tell a quoted "|" from a pipe, and given back after.
        hidden = QUOTED.sub(lambda m: m.group().translate(HIDE), text.removeprefix("$ "))
        lexer = shlex.shlex(hidden, posix=True, punctuation_chars=OPERATOR_CHARS)
        lexer.whitespace_split = True
        commands, words = [], []
        for token in lexer:
            if token in SHELL_OPERATORS:
                commands.append(words)
                words = []
            else:
                words.append(token.translate(SHOW))
        for command in [*commands, words]:
            while command and ENV_ASSIGNMENT.match(command[0]):
                command = command[1:]
            if command and re.fullmatch(r"(?:\S*/)?transfer", command[0]):
                yield number, command[1:]


ALL_EXAMPLES = [
    (path.relative_to(ROOT), number, args) for path in DOCS for number, args in examples(path)
]


def parse(args):
    """Parse `transfer ARGS` as the command line would, without running anything:
    the command (and a group's subcommand) must exist, and every option, value and
    choice be accepted. Returns the command's names (("runs", "compare"))."""
    args = list(args)
    while args[:1] == ["--debug"]:
        args = args[1:]
    if args in (["--version"], ["-h"], ["--help"]):
        return ()
    assert args, "no command"
    parent = click.Context(cli, info_name="transfer")
    command = cli.get_command(parent, args[0])
    assert command is not None, f"no command {args[0]!r}"
    try:
        context = command.make_context(args[0], args[1:], parent=parent, resilient_parsing=False)
        if isinstance(command, click.Group):  # click keeps the subcommand's words apart
            name, sub, rest = command.resolve_command(
                context, [*context._protected_args, *context.args]
            )
            sub.make_context(name, rest, parent=context, resilient_parsing=False)
            return (args[0], name)
    except click.exceptions.Exit as exc:  # -h: help printed, nothing run
        assert exc.exit_code == 0
    return (args[0],)


def every_command():
    """Each command's names: ("predict",), and a group's subcommands ("runs", "list")."""
    for name, command in cli.commands.items():
        yield (name,)
        for sub in getattr(command, "commands", {}):
            yield (name, sub)


@pytest.fixture
def paths_need_not_exist(monkeypatch):
    """Examples name folders and files of the reader's: parse them as if they existed."""
    for names in every_command():
        command = cli
        for name in names:
            command = command.commands[name]
        for param in command.params:
            if isinstance(param.type, click.Path):
                monkeypatch.setattr(param.type, "exists", False)


def test_every_example_in_the_readme_and_docs_parses(paths_need_not_exist, capsys):
    assert len(ALL_EXAMPLES) > 50
    failures, used = [], set()
    for path, number, args in ALL_EXAMPLES:
        try:
            names = parse(args)
            used |= {names[: i + 1] for i in range(len(names))}
        except (click.ClickException, AssertionError) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else exc
            failures.append(f"{path}:{number}: transfer {shlex.join(args)}\n    {message}")
    assert failures == [], "\n".join(failures)
    # every command (and subcommand) has an example somewhere, in the README or the guides
    assert set(every_command()) <= used, set(every_command()) - used


@pytest.mark.parametrize(
    "args, error",
    [
        (["finetune", "--data", "x", "--no-such-option"], "No such option"),
        (["export", "runs/a", "--out", "m.tflite", "--quantize", "int4"], "int4"),
        (["finetune", "--out", "runs/a"], "data"),
        (["fine-tune", "--data", "x"], "no command"),
    ],
)
def test_a_wrong_example_would_fail(paths_need_not_exist, args, error):
    with pytest.raises((click.ClickException, AssertionError), match=error):
        parse(args)


def test_continuations_prompts_and_pipes_are_read_as_a_shell_would(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text mentioning transfer finetune --bogus outside code.\n\n"
        "    # a comment\n"
        "    TF_CONFIG='{\"a\": 1}' \\\n"
        '        transfer finetune --data ./flowers --label-sep "|" --out runs/a\n'
        "    $ transfer predict runs/a x.png --format csv > out.csv\n"
        "    transfer report runs/a && xdg-open runs/a/report.html\n"
        "    transfer, version 1.0\n\n"
        "```python\nimport transfer\n```\n"
    )
    assert list(examples(page)) == [
        (4, ["finetune", "--data", "./flowers", "--label-sep", "|", "--out", "runs/a"]),
        (6, ["predict", "runs/a", "x.png", "--format", "csv"]),
        (7, ["report", "runs/a"]),
    ]


def slug(heading):
    """A heading's anchor as GitHub and MkDocs' toc make it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_readme_links_into_the_docs_and_every_link_resolves():
    """README.md is read on GitHub and PyPI, outside the site that mkdocs checks."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    targets = {link.split("#")[0] for link in links}
    # how to predict, export int8 and read the report: a link away
    assert {
        "docs/guides/using.md",
        "docs/guides/deploying.md",
        "docs/guides/report.md",
        "docs/reference/cli.md",
        "docs/reference/api.md",
        "docs/benchmarks.md",
    } <= targets
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, link


# ---------------------------------------------------------------- the distribution


def test_the_distribution_and_its_version_have_one_owner_each():
    metadata = setup_cfg()["metadata"]
    assert metadata["name"] == DISTRIBUTION
    assert importlib.metadata.version(DISTRIBUTION) == metadata["version"] == __version__
    assert transfer.__version__ == __version__
    result = CliRunner().invoke(cli, ["--version"], prog_name="transfer")
    assert result.exit_code == 0
    assert result.output == f"transfer, version {__version__}\n"
    source = (ROOT / "transfer" / "cli.py").read_text(encoding="utf-8")
    assert re.findall(r"version_option\(package_name=\"([^\"]+)\"", source) == [DISTRIBUTION]


def test_every_install_hint_names_the_distribution_and_an_extra_it_has(monkeypatch):
    known = extras()
    hints = []
    for path in sorted((ROOT / "transfer").rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for name, extra in INSTALL_HINT.findall(line):
                hints.append((path.name, name, extra))
                if name in ("{DISTRIBUTION}", "DISTRIBUTION", DISTRIBUTION):
                    assert extra in ("[{extra}]", "[extra]") or extra.strip("[]") in known, line
                else:  # a package itself, such as torch: one that an extra installs
                    assert any(requirement_name(name) in names for names in known.values()), line
    assert any(name == "{DISTRIBUTION}" for _, name, _ in hints)
    # The optional modules' extras exist and install those modules.
    for module, extra in optional.EXTRAS.items():
        assert requirement_name(module) in known[extra], (module, extra)

    def missing(name, *args):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(optional.importlib, "import_module", missing)
    for module, extra in optional.EXTRAS.items():
        with pytest.raises(transfer.errors.MissingExtraError) as caught:
            optional.optional_module(module)
        assert f"`pip install '{DISTRIBUTION}[{extra}]'` installs it." in str(caught.value)


# ---------------------------------------------------------------- the site


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    """The site built with `mkdocs build --strict` into a temporary folder, served over
    HTTP on localhost (Material's search runs in a web worker, which file:// forbids)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", site
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.heavy
def test_the_site_renders_in_a_browser_and_its_search_finds_quantize(site_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, site = site_url
    pages = sorted(
        path.parent.relative_to(site).as_posix() + "/" for path in site.rglob("index.html")
    )
    pages = ["" if page == "./" else page for page in pages]
    assert len(pages) >= 15
    driver = chrome(tmp_path)
    console = []
    try:
        for page in pages:
            driver.get(url + page)
            assert driver.find_element(By.CSS_SELECTOR, "article h1").text, page
            images = driver.execute_script(
                "return Array.from(document.querySelectorAll('article img'), "
                "i => [i.src, i.complete && i.naturalWidth > 0])"
            )
            assert all(ok for _, ok in images), (page, images)
            console += [(page, entry) for entry in driver.get_log("browser")]
        driver.get(url + "?q=quantize")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item")
        )
        results = driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
        found = {
            re.split(r"[#?]", link.get_attribute("href"))[0].removeprefix(url) for link in results
        }
        console += [("?q=quantize", entry) for entry in driver.get_log("browser")]
    finally:
        driver.quit()
    assert "guides/deploying/" in found, found
    assert [(page, entry) for page, entry in console if entry["level"] == "SEVERE"] == []
