"""No product function over 60 lines of code without a reason in a comment (issue 26 item 1): its docstring
does not count; its reason is a `# NOTE (over 60 lines): ...` comment inside it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 60
REASON = "# NOTE (over 60 lines):"


def long_functions(root: Path = REPO) -> list[str]:
    """`path:name (n lines)` of each function whose code, after its docstring, exceeds MAX_LINES lines and
    that gives no REASON."""
    found = []
    for package in ("gan_core", "infra", "pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source, filename=str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                first = node.body[0]
                has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str)
                start = first.end_lineno + 1 if has_doc else first.lineno
                size = node.end_lineno - start + 1
                if size > MAX_LINES and not any(REASON in line for line in lines[node.lineno - 1:node.end_lineno]):
                    found.append(f"{path.relative_to(root)}:{node.name} ({size} lines)")
    return found


def test_no_function_over_60_lines_without_a_reason():
    assert long_functions() == [], f"functions over {MAX_LINES} lines of code, no `{REASON}` comment"


def test_a_planted_long_function_fails(tmp_path):
    for package in ("gan_core", "infra", "pipelines"):
        (tmp_path / package).mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "infra" / "long.py").write_text(f'def long():\n    """Docstring lines do not count."""\n{body}\n')
    assert long_functions(tmp_path) == ["infra/long.py:long (61 lines)"]
    (tmp_path / "infra" / "long.py").write_text(f"def long():\n    {REASON} a reason.\n{body}\n")
    assert long_functions(tmp_path) == []
