"""`[tool.bench_lib]` of a pyproject.toml: the one reader of the suite's settings file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bench_lib.errors import UserError


def tool_table(pyproject: Path | None, section: str = "") -> dict[str, Any]:
    """`[tool.bench_lib]` (or `[tool.bench_lib.<section>]`) of `pyproject`; {} without the file
    (None, missing, or no regular file such as /dev/null). `UserError` naming the file when it
    cannot be read or is not TOML."""
    if pyproject is None or not pyproject.is_file():
        return {}
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{pyproject}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{pyproject}: not valid TOML (not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"{pyproject}: cannot read it ({exc.strerror})") from None
    table: Any = data.get("tool", {})
    for name in ("bench_lib", section) if section else ("bench_lib",):
        table = table.get(name, {}) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            raise UserError(
                f"{pyproject}: [tool.bench_lib{'.' + section if section else ''}] must be a table"
            )
    return dict(table)
