"""What identifies the code that built a site (:func:`source_fingerprint`)."""

from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from pathlib import Path


def source_fingerprint() -> str:
    """SHA-256 of what the llnm3d package runs: its Python code without docstrings, comments
    and blank lines (:func:`code_text`), its templates, scripts, styles and data files, and the
    bundled weights (``llnm3d/weights``).

    Recorded in every site's ``data.json``; a site whose fingerprint differs from the running
    code's was built by other code (the test of the published ``site/`` relies on this).
    Editing a docstring or a comment does not change it.
    """
    package = Path(__file__).resolve().parents[1]
    files = [(p.relative_to(package).as_posix(), p) for p in package.rglob("*")
             if p.is_file() and p.suffix in {".py", ".j2", ".js", ".css", ".json", ".safetensors"}]
    digest = hashlib.sha256()
    for name, path in sorted(files):
        content = (code_text(path.read_text(encoding="utf-8")).encode() if path.suffix == ".py"
                   else path.read_bytes())
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def code_text(source: str) -> str:
    """Python source as it runs: docstrings (on lines of their own), comments, trailing
    spaces and blank lines removed. Positions come from ``ast`` and ``tokenize``, which agree
    across Python versions, unlike ``ast.dump``."""
    lines = source.split("\n")  # as tokenize and ast count lines
    dropped: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        own_lines = isinstance(node, ast.Module) or first.lineno > node.lineno
        if (own_lines and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            assert first.end_lineno is not None  # ast.parse gives every statement its lines
            dropped.update(range(first.lineno, first.end_lineno + 1))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            lines[row - 1] = lines[row - 1][:column]
    return "\n".join(line.rstrip() for number, line in enumerate(lines, 1)
                     if number not in dropped and line.strip())
