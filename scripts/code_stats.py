"""Code size between two git revisions: lines per module and the longest functions, as Markdown tables.

For reviewing a simplification (docs/simplification.md was written with it)::

    python scripts/code_stats.py 062625d HEAD

Modules are matched by path; a renamed module shows as removed and added (give ``--rename OLD=NEW`` to
pair them). Functions and methods are measured from ``def`` to their last line, docstring included.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys

SOURCE_ROOTS = ("ssd_ros/", "training/", "launch/", "benchmarks/", "scripts/")


def python_files(revision: str) -> dict[str, str]:
    """``{path: source}`` of the product's Python files (tests excluded) at ``revision``."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision], capture_output=True, text=True, check=True
    )
    paths = [p for p in listing.stdout.split() if p.endswith(".py") and p.startswith(SOURCE_ROOTS)]
    return {
        p: subprocess.run(["git", "show", f"{revision}:{p}"], capture_output=True, text=True, check=True).stdout
        for p in paths
    }


def function_lengths(sources: dict[str, str]) -> list[tuple[int, str]]:
    """``(lines, "path:qualified name")`` of every function and method."""
    found = []

    def visit(node: ast.AST, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((child.end_lineno - child.lineno + 1, f"{path}:{prefix}{child.name}"))
                visit(child, path, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.")

    for path, source in sources.items():
        visit(ast.parse(source), path, "")
    return sorted(found, reverse=True)


def main(argv: list[str] | None = None) -> int:
    """Print the module table (lines before, after, change) and the longest functions of both revisions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="pair a renamed module")
    parser.add_argument("--top", type=int, default=12, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    before, after = python_files(args.before), python_files(args.after)
    renamed = dict(pair.split("=", 1) for pair in args.rename)

    print(f"| module | {args.before} | {args.after} | change |\n|---|---:|---:|---:|")
    totals = [0, 0]
    shown = set()
    for old in sorted(before):
        new = renamed.get(old, old)
        a, b = before[old].count("\n"), after[new].count("\n") if new in after else 0
        totals[0] += a
        totals[1] += b
        shown.add(new)
        name = old if new == old else f"{old} -> {new}"
        print(f"| {name} | {a} | {b or 'removed'} | {b - a:+d} |")
    for new in sorted(set(after) - shown):
        b = after[new].count("\n")
        totals[1] += b
        print(f"| {new} | new | {b} | {b:+d} |")
    print(f"| **total** | {totals[0]} | {totals[1]} | {totals[1] - totals[0]:+d} |\n")

    for revision, sources in ((args.before, before), (args.after, after)):
        longest = function_lengths(sources)
        print(f"Longest functions at {revision}:\n\n| lines | function |\n|---:|---|")
        for length, name in longest[: args.top]:
            print(f"| {length} | `{name}` |")
        print(f"\nFunctions over 80 lines: {sum(length > 80 for length, _ in longest)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
