"""Every command the docs show exists.

Commands are taken from fenced code blocks tagged ``sh``, ``bash`` or
``console`` (there only lines starting with ``$ ``) in README.md and
docs/*.md, and checked without running anything:

- ``garage …`` and ``garage-peer …``: the subcommand path and every
  ``--option`` exist, by walking the typer/click command tree;
- ``make X``: X is a target in the Makefile;
- ``bash bootstrap/x.sh``, ``python benchmarks/x.py``, ``./bootstrap/x.sh``:
  the file exists; ``python -m mod``: the module can be found;
- any argument that names a file of the repository (``simulations/…``,
  ``bootstrap/…``, …) names one that exists;
- every other program must be in ``ALLOWED``.

Shell syntax handled: ``\\`` continuations, comments, ``&&``/``||``/``;``/``|``,
``sudo`` (with ``-u USER``), ``VAR=value`` prefixes, redirections, heredocs,
and synopsis brackets (``[--json]``).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = {"sh", "bash", "console", "shell"}

ALLOWED = {
    # shell built-ins and coreutils
    "cd",
    "export",
    "source",
    ".",
    "echo",
    "cat",
    "ls",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "chmod",
    "chown",
    "install",
    "tee",
    "test",
    "true",
    "sleep",
    "kill",
    "date",
    "head",
    "tail",
    "grep",
    "sha256sum",
    "tar",
    "id",
    "env",
    "ln",
    "du",
    "df",
    "wc",
    "sort",
    "less",
    # system administration
    "systemctl",
    "journalctl",
    "useradd",
    "usermod",
    "apt-get",
    "ufw",
    "nft",
    "iptables",
    "ss",
    "nvidia-smi",
    "podman",
    "git",
    "ssh",
    "scp",
    "rsync",
    "openssl",
    # clients and tools named in the docs
    "curl",
    "jq",
    "pip",
    "pip3",
    "litellm",
    "prometheus",
    "promtool",
    "sqlite3",
    "watch",
    "xargs",
}
PYTHONS = {"python", "python3"}
SHELLS = {"bash", "sh"}
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
REDIRECTS = {">", ">>", "<", "<<", "<<<", ">&", "<&", "&>", "&>>", ">|"}
REPO_DIRS = ("bootstrap", "benchmarks", "simulations", "images", "docs", "tests", "tools", "garage_p2p")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


@dataclass(frozen=True)
class Command:
    where: str
    """``file:line`` of the command's first line."""
    words: tuple[str, ...]
    """One simple command: program and arguments."""


# -- extracting ---------------------------------------------------------------------


def shell_lines(text: str, where: str) -> list[tuple[str, str]]:
    """(location, logical line) of every command line in the shell blocks of a Markdown text."""
    out: list[tuple[str, str]] = []
    lang: str | None = None
    fence = ""
    pending = ""
    pending_at = ""
    heredoc_end: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if lang is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)", stripped)
            if match:
                fence, lang = match.group(1), match.group(2).lower()
            continue
        if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            lang = None
            pending = ""
            heredoc_end = None
            continue
        if lang not in SHELL_TAGS:
            continue
        if heredoc_end is not None:
            if stripped == heredoc_end:
                heredoc_end = None
            continue
        if lang == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not pending:
            pending_at = f"{where}:{number}"
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical = pending + line
        pending = ""
        match = HEREDOC.search(logical)
        if match:
            heredoc_end = match.group(2)
            logical = logical[: match.start()]  # the heredoc's body is data, not commands
        out.append((pending_at, logical))
    return out


INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
INLINE_PROGRAMS = ("garage ", "garage-peer ", "make ", "bash bootstrap/", "sudo bash bootstrap/")


def inline_lines(text: str, where: str) -> list[tuple[str, str]]:
    """Inline code outside fences that is a project command (``garage status``, ``make demo``)."""
    out: list[tuple[str, str]] = []
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})", stripped)
        if match and (not fence or stripped.strip(fence[0]) == ""):
            fence = "" if fence else match.group(1)
            continue
        if fence:
            continue
        for span in INLINE.findall(line):
            span = span.strip()
            if span in ("garage", "garage-peer") or span.startswith(INLINE_PROGRAMS):
                out.append((f"{where}:{number}", span))
    return out


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of one logical line, comments and redirections removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands: list[list[str]] = [[]]
    skip_next = False
    for i, token in enumerate(tokens):
        if skip_next:
            skip_next = False
            continue
        if token in OPERATORS:
            commands.append([])
        elif token in REDIRECTS:
            skip_next = True
        elif token.isdigit() and i + 1 < len(tokens) and tokens[i + 1] in REDIRECTS:
            continue  # 2>/dev/null
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def unwrap(words: list[str]) -> list[str]:
    """Drop what precedes the real program: ``sudo [-u USER] [-E]``, ``env``, ``VAR=value``."""
    words = list(words)
    while words:
        if words[0] == "sudo":
            words.pop(0)
            while words and words[0].startswith("-"):
                flag = words.pop(0)
                if flag in ("-u", "-g", "-C", "-D") and words:
                    words.pop(0)
        elif words[0] == "env" and len(words) > 1 and ENV_ASSIGNMENT.match(words[1]):
            words.pop(0)
        elif ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        else:
            break
    return words


def synopsis_word(word: str) -> str:
    """``[--json]`` → ``--json``; ``ID]`` → ``ID`` (usage notation in the docs)."""
    return word.strip("[]").rstrip("…").removesuffix("...")


def commands_in(text: str, where: str) -> list[Command]:
    out = []
    for at, line in shell_lines(text, where) + inline_lines(text, where):
        for words in split_commands(line):
            words = [w for w in (synopsis_word(w) for w in unwrap(words)) if w not in ("", "|")]
            if words:
                out.append(Command(at, tuple(words)))
    return out


# -- checking -----------------------------------------------------------------------


def _garage_tree():
    from garage_p2p.cli.garage import app as garage_app
    from garage_p2p.cli.peer import app as peer_app

    return {"garage": typer.main.get_command(garage_app), "garage-peer": typer.main.get_command(peer_app)}


def _options(command) -> dict[str, object]:
    """Every spelling of every option of a click command → the parameter."""
    opts: dict[str, object] = {"--help": None}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for name in [*param.opts, *param.secondary_opts]:
                opts[name] = param
    return opts


def _takes_value(param) -> bool:
    return param is not None and not getattr(param, "is_flag", False) and not getattr(param, "count", False)


def check_cli(words: tuple[str, ...], tree) -> list[str]:
    """Problems with a ``garage``/``garage-peer`` command line, against the command tree."""
    command = tree[words[0]]
    path = [words[0]]
    args = list(words[1:])
    positionals = 0
    problems: list[str] = []
    while args:
        word = args.pop(0)
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            options = _options(command)
            if name not in options:
                problems.append(f"`{' '.join(path)}` has no option {name}")
                continue
            if _takes_value(options[name]) and "=" not in word and args:
                args.pop(0)
            continue
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            if word not in subcommands:
                problems.append(f"`{' '.join(path)}` has no subcommand {word!r}")
                return problems
            command = subcommands[word]
            path.append(word)
            continue
        positionals += 1
    arguments = [p for p in command.params if getattr(p, "param_type_name", "") == "argument"]
    if positionals > sum(max(1, p.nargs) if p.nargs >= 0 else 10**6 for p in arguments):
        problems.append(f"`{' '.join(path)}` takes {len(arguments)} argument(s), the docs give {positionals}")
    return problems


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def _repo_path_problem(word: str) -> str | None:
    path = word.removeprefix("./")
    if path.split("/", 1)[0] in REPO_DIRS and "/" in path and not any(c in path for c in "*?<>$"):
        if not (ROOT / path).exists():
            return f"{word} does not exist in the repository"
    return None


def script_option_problems(script: Path, args: list[str]) -> list[str]:
    """A script's options are not introspectable: each ``--option`` must at least appear in its text."""
    text = script.read_text(errors="replace")
    return [
        f"{script.relative_to(ROOT)} never mentions {name}"
        for name in (a.split("=", 1)[0] for a in args if a.startswith("--"))
        if not re.search(re.escape(name) + r"(?![A-Za-z0-9-])", text)
    ]


ENDPOINT_URL = re.compile(r"^https?://(?:127\.0\.0\.1|localhost):8000(/[^?#\s]*)")


def _source_literals() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "garage_p2p").rglob("*.py"))


def endpoint_path_problems(words: tuple[str, ...], source: str) -> list[str]:
    """A URL on the default endpoint names a path the code serves (its string literal exists)."""
    problems = []
    for word in words:
        match = ENDPOINT_URL.match(word)
        if match and match.group(1) not in ("/", "/v1"):
            path = match.group(1).rstrip("/")
            if f'"{path}"' not in source:
                problems.append(f"the endpoint serves no {path} (no such route literal in garage_p2p/)")
    return problems


def check_command(command: Command, tree=None, targets: set[str] | None = None, source: str | None = None) -> list[str]:
    """Problems with one documented command (empty: it exists)."""
    tree = tree if tree is not None else _garage_tree()
    targets = targets if targets is not None else makefile_targets()
    source = source if source is not None else _source_literals()
    words = command.words
    program = words[0]
    problems = [p for p in map(_repo_path_problem, words[1:]) if p]
    problems += endpoint_path_problems(words[1:], source)
    if program.startswith(("/", "~", ".venv/bin/")):
        # An installed program (/opt/garage/venv/bin/garage, ~/venv/bin/pip): judged by its name.
        program = program.rsplit("/", 1)[1]
        words = (program, *words[1:])
    if program in tree:
        problems += check_cli(words, tree)
    elif program == "make":
        for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
            if target not in targets:
                problems.append(f"the Makefile has no target {target!r}")
    elif program in PYTHONS:
        args = list(words[1:])
        while args and args[0].startswith("-") and args[0] != "-m":
            args.pop(0)
        if args[:1] == ["-m"] and len(args) > 1:
            if importlib.util.find_spec(args[1]) is None:
                problems.append(f"no module {args[1]}")
        elif args and args[0] != "-c" and not (ROOT / args[0]).exists():
            problems.append(f"{args[0]} does not exist in the repository")
    elif program in SHELLS:
        args = list(words[1:])
        while args and args[0].startswith("-"):
            args.pop(0)
        if args and not args[0].startswith("/"):
            script = ROOT / args[0]
            if not script.exists():
                problems.append(f"{args[0]} does not exist in the repository")
            else:
                problems += script_option_problems(script, args[1:])
    elif "/" in program:
        if not (ROOT / program.removeprefix("./")).exists():
            problems.append(f"{program} does not exist in the repository")
    elif program not in ALLOWED:
        problems.append(f"{program!r} is neither a project command nor in the test's ALLOWED list")
    return [f"{command.where}: `{' '.join(command.words)}`: {p}" for p in dict.fromkeys(problems)]


def check_text(text: str, where: str = "doc.md") -> list[str]:
    tree, targets, source = _garage_tree(), makefile_targets(), _source_literals()
    return [p for c in commands_in(text, where) for p in check_command(c, tree, targets, source)]


# -- the docs -------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_exists(doc: Path) -> None:
    problems = check_text(doc.read_text(), str(doc.relative_to(ROOT)))
    assert not problems, "commands in the docs that do not exist:\n" + "\n".join(problems)


def test_the_docs_show_commands() -> None:
    """The extraction finds the commands it should (a parser that finds nothing passes everything)."""
    found = {c.words[:2] for doc in DOCS for c in commands_in(doc.read_text(), doc.name)}
    assert ("make", "demo") in found and ("make", "test") in found
    assert ("garage", "init") in found and ("garage", "keys") in found
    assert any(words[0] == "garage-peer" for words in found)


# -- the checker itself ---------------------------------------------------------------

SAMPLE = """
Text, then commands:

```sh
garage frobnicate                      # no such subcommand
garage status --frobnicate             # no such option
garage ledger export --format csv -o out.csv --peer ID   # fine
garage ledger shw
make demo && make frobnicate
bash bootstrap/no-such-script.sh
bash bootstrap/dev-env.sh --frobnicate
python benchmarks/no_such_benchmark.py
.venv/bin/python -m garage_p2p.no_such_module
frobtool --now
garage sim run simulations/no-such-scenario.toml
curl -s http://127.0.0.1:8000/v1/frobnicate
```

```console
$ garage keys revoke 1a2b3c4d extra-argument
output lines are not commands: frobtool
```

```python
frobtool()   # not shell
```
"""

CLEAN = """
```bash
sudo -u garage GARAGE_HOME=/var/lib/garage garage init      # a comment
GARAGE_HOME=/tmp/a garage-peer --api 127.0.0.1:8001 \\
    --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample --no-mdns \\
    --backend tiny=http://127.0.0.1:8001/v1
garage keys create --name prometheus --json | jq -r .key > /tmp/key 2>/dev/null
garage ledger show [--peer ID] [--json]
.venv/bin/python -m tools.emulate simulations/flash-crowd.toml; make test
cat > /tmp/x.toml <<'EOF'
this line is data: frobtool --now
EOF
garage job status JOB --json || curl -s http://127.0.0.1:8000/health
```

```console
$ garage status --json
{"peer_id": "12D3KooW..."}
```
"""


def test_made_up_commands_are_reported() -> None:
    problems = check_text(SAMPLE)
    expected = [
        "has no subcommand 'frobnicate'",
        "`garage status` has no option --frobnicate",
        "`garage ledger` has no subcommand 'shw'",
        "no target 'frobnicate'",
        "bootstrap/no-such-script.sh does not exist",
        "bootstrap/dev-env.sh never mentions --frobnicate",
        "benchmarks/no_such_benchmark.py does not exist",
        "no module garage_p2p.no_such_module",
        "'frobtool' is neither a project command",
        "simulations/no-such-scenario.toml does not exist",
        "the endpoint serves no /v1/frobnicate",
        "`garage keys revoke` takes 1 argument(s), the docs give 2",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected), problems
    assert not any("export" in p for p in problems)


def test_shell_syntax_is_understood() -> None:
    assert check_text(CLEAN) == []
    programs = [c.words for c in commands_in(CLEAN, "x.md")]
    assert ("garage", "init") in programs
    assert programs[1][:3] == ("garage-peer", "--api", "127.0.0.1:8001")
    assert "--backend" in programs[1]
    assert ("jq", "-r", ".key") in programs
    assert ("garage", "ledger", "show", "--peer", "ID", "--json") in programs
    assert not any("frobtool" in words for words in programs)
    assert ("garage", "status", "--json") in programs
