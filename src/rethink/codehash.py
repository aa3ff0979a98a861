"""Content hashes of the code a rule runs: its entry module and every module of the same source
tree that it imports, followed transitively.

Snakemake does not track modules a rule's command imports, and where it compares code it
compares mtimes or command text. The workflow passes these hashes as rule parameters, so a step
reruns when the code it runs changes, and only then.

What counts: a module's imports are read with `ast` (every `import` and `from ... import`, at
any depth, also inside functions, so lazy imports count), resolved on the files of the search-path
entry the entry module lives in (`src/` for rethink, the working directory for a user's model),
and followed; the `__init__.py` of every package on the way counts too. Modules of other
entries (the standard library, torch, ...) do not: their versions are the environment's.

What a hash reads of a module: its text without comments and blank lines (found by Python's
tokenizer). A comment-only edit, or a touched or freshly checked-out file, reruns nothing; any
other edit, docstrings included, reruns the rules whose entry imports the module.
"""

import ast
import functools
import hashlib
import io
import os
import pathlib
import sys
import tokenize

from rethink.errors import RethinkError


def search_path():
    """Where `python -m` in the working directory finds modules: the directory, then sys.path."""
    return [pathlib.Path(os.getcwd()), *(pathlib.Path(p or os.getcwd()) for p in sys.path)]


def locate(module, roots=None):
    """(root, file) of `module` without importing anything: the first search-path entry that
    has it as `<name>.py` or a package (its `__init__.py`, or None for a namespace package).
    None when no entry has it."""
    parts = module.split(".")
    for root in roots if roots is not None else search_path():
        base = root.joinpath(*parts)
        if (base / "__init__.py").is_file():
            return root, base / "__init__.py"
        if base.with_suffix(".py").is_file():
            return root, base.with_suffix(".py")
        if len(parts) > 1 and base.is_dir() and (root / parts[0]).is_dir():
            return root, None  # a namespace package (a folder without __init__.py)
    return None


def _read(path):
    """(import statements, text without comments and blank lines) of a module file, parsed once
    per content: the entries share most of their modules."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise RethinkError(f"{path}: cannot be read as Python ({err})") from None
    return _parse(str(path), text)


@functools.cache
def _parse(path, text):
    try:
        tree = ast.parse(text, filename=path)
        lines = text.splitlines()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                lines[row - 1] = lines[row - 1][:col]
    except (SyntaxError, ValueError, tokenize.TokenError) as err:
        raise RethinkError(f"{path}: cannot be read as Python ({err})") from None
    imports = [node for node in _statements(tree.body) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return imports, "\n".join(line.rstrip() for line in lines if line.strip())


def _statements(nodes):
    """Every statement, nested ones too (imports are statements: no need to visit expressions)."""
    for node in nodes:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, field, ()))


def _imported_names(path, module, is_package):
    """Every module name `path` (the module `module`) may import: each import's target, each
    `from X import name` as X and X.name (a submodule, when one exists), relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in _read(path)[0]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        else:
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names if alias.name != "*")


def files(module, roots=None):
    """The files `module` runs (a package run with -m: its __init__.py and __main__.py), with
    every module of its own search-path entry it imports, transitively: {path: module name}."""
    found = locate(module, roots)
    if found is None:
        where = ", ".join(map(str, roots if roots is not None else search_path()))
        raise RethinkError(f"module {module} is not on the Python path (looked in {where})")
    root, _ = found
    seen, queue = {}, [module]
    if (root.joinpath(*module.split(".")) / "__main__.py").is_file():
        queue.append(f"{module}.__main__")
    while queue:
        name = queue.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            prefix = ".".join(parts[:depth])
            hit = locate(prefix, [root])
            if hit is None or hit[1] is None or hit[1] in seen:
                continue
            path = hit[1]
            seen[path] = prefix
            queue.extend(_imported_names(path, prefix, path.name == "__init__.py"))
    return dict(sorted(seen.items()))


def source_text(path):
    """A module's text as its hash reads it: comments and blank lines dropped."""
    return _read(pathlib.Path(path))[1]


def digest(*modules):
    """sha256 (first 16 hex digits) over the files `modules` run: names and text (source_text)."""
    h = hashlib.sha256()
    for module in modules:
        root, _ = locate(module)
        for path, name in files(module, [root]).items():
            h.update(f"{name}\0{source_text(path)}\0".encode())
    return h.hexdigest()[:16]
