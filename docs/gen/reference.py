"""The reference pages made from the code at each build (mkdocs-gen-files), so they cannot drift from it: every
command's flags from its argparse parser, every default from `client/defaults.py`, and the signatures of a model
version the exporter writes (the committed demo model, exported into a temporary folder)."""
from __future__ import annotations

import argparse
import ast
import io
import tempfile
import textwrap
import tokenize
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import mkdocs_gen_files

from s3d_retrieval.client import cli, defaults
from s3d_retrieval.model.quiet import quiet_tensorflow

quiet_tensorflow()  # the signatures page exports a model: TensorFlow's start-up lines are not the build's


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def built(main: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The parser `main` builds: caught when it is asked to parse, before anything runs."""
    def caught(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Built(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught):
        try:
            main([])
        except _Built as done:
            return done.parser
    raise RuntimeError(f"{main} parsed no arguments")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def flags(parser: argparse.ArgumentParser, title: str, level: int) -> list[str]:
    """A command's usage and a table of its arguments, then each of its verbs the same way."""
    formatter = parser._get_formatter()
    lines = [f"{'#' * level} `{title}`", ""]
    for paragraph in (parser.description or "").strip().split("\n\n"):  # an indented one is a usage listing
        indented = all(line.startswith(" ") for line in paragraph.splitlines())
        lines += (["```text", textwrap.dedent(paragraph), "```", ""] if indented else [paragraph, ""]) if paragraph else []
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    rows, verbs = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            verbs = list(action.choices.items())
            continue
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS or action.required
        shown = "" if hidden else f"`{_cell(str(default))}`"
        rows.append(f"| {names} | {_cell(formatter._expand_help(action) if action.help else '')} | {shown} |")
    if rows:
        lines += ["| argument | what it does | default |", "|---|---|---|", *rows, ""]
    for name, verb in verbs:
        lines += flags(verb, f"{title} {name}", level + 1)
    return lines


def cli_page() -> str:
    from s3d_retrieval.export.__main__ import parse as export_parse
    from s3d_retrieval.model.__main__ import main as model_main
    from s3d_retrieval.serving.__main__ import parse as serving_parse

    commands = [("s3d-client", cli.parser()), ("python -m model", built(model_main)),
                ("python -m export", built(export_parse)), ("python -m serving", built(serving_parse))]
    lines = ["# Command line", "",
             "Every command and flag, read from the argparse parsers when the site is built. `s3d-client` is also",
             "`python -m client` in the repository; `python -m model`, `export` and `serving` are also the installed",
             "`s3d-model`, `s3d-export` and `s3d-serve`.", ""]
    for title, parser in commands:
        lines += flags(parser, title, 2)
    return "\n".join(lines) + "\n"


def defaults_page() -> str:
    """Each constant of `client/defaults.py` with its value and the comments written beside it."""
    source = Path(defaults.__file__).read_text()
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    rows = []
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        above, line = [], node.lineno - 1
        while line in comments and not source.splitlines()[line - 1].split("#")[0].strip():
            above.insert(0, comments[line])
            line -= 1
        said = " ".join(above + [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                                 if n in comments])
        value = ast.get_source_segment(source, node.value) if node.value else ""
        rows.append(f"| `{', '.join(names)}` | `{_cell(value or '')}` | {_cell(said)} |")
    doc = ast.get_docstring(ast.parse(source)) or ""
    return "\n".join(["# Defaults", "", doc, "",
                      "Read from `client/defaults.py` when the site is built: each name, its value, and the comment "
                      "beside it in the code (a comment above a group of names is shown with the first).", "",
                      "| name | value | why |", "|---|---|---|", *rows]) + "\n"


def signatures_page() -> str:
    """The signature map of a model version as the exporter writes it, read back from the saved graph."""
    from s3d_retrieval.export.pipeline import export_model
    from s3d_retrieval.model.corpus import DEMO_MODULE

    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(str(DEMO_MODULE), Path(tmp) / defaults.MODEL_NAME)
    lines = ["# Served signatures", "",
             "What a model version answers (tag `serve`), read at build time from the graph that `python -m export` "
             "writes for the committed demo model. A version exported from the real module has the same names and "
             "types; its embeddings are 512-d like these, its `mixed_5c` 1024-d (the demo model's tiny network has "
             "128). A dimension of -1 takes any size.", "",
             "| signature | inputs | outputs |", "|---|---|---|"]
    for name, spec in sorted(result.signatures.items()):
        listed = ["<br>".join(f"`{key}` {kind}" for key, kind in sorted(spec[side].items()))
                  for side in ("inputs", "outputs")]
        lines.append(f"| `{name}` | {listed[0]} | {listed[1]} |")
    lines += ["", f"`serving_default` answers as `{defaults.DEFAULT_SIGNATURE}`. Clients send `frames` (uint8, a "
              f"quarter of the bytes) to `{defaults.VIDEO_UINT8_SIGNATURE}`; `{defaults.VIDEO_SIGNATURE}` takes the "
              f"hub module's own float input. `{defaults.PREPROCESSING_SIGNATURE}` tells a client the sampling the "
              f"model was trained with (keys `frames`, `fps`, `size`)."]
    return "\n".join(lines) + "\n"


def documented(modules: list[str]) -> None:
    """The modules whose docstrings are the file-format page: each must have one (an empty section would pass)."""
    import importlib

    for name in modules:
        if not (importlib.import_module(name).__doc__ or "").strip():
            raise RuntimeError(f"{name} has no docstring, and reference/formats.md shows it")


documented(["s3d_retrieval.client.library.index", "s3d_retrieval.client.library.vectors",
            "s3d_retrieval.client.milvus.store", "s3d_retrieval.client.library.evalset",
            "s3d_retrieval.model.narration", "s3d_retrieval.export.versions"])
for page, make in (("reference/cli.md", cli_page), ("reference/defaults.md", defaults_page),
                   ("reference/signatures.md", signatures_page)):
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(make())
