"""The dependencies declared in setup.cfg are the third-party imports of shards/ trainer/ launch/ tools/ synthetic/.

- every third-party import belongs to a declared dependency (install_requires), or to an optional extra, and then it
  is imported lazily (inside a function, in a `try` that turns ImportError into a message naming the extra);
- every declared dependency is imported somewhere, or is in DECLARED_NOT_IMPORTED with the dependency of ours whose
  import brings it in (checked: importing that dependency imports it).
"""

from __future__ import annotations

import ast
import configparser
import functools
import importlib.metadata
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "trainer", "launch", "tools", "synthetic")
# Extras for working on sonotext itself (tests, lint): used by tests/ and make, not by the packages.
TOOLING_EXTRAS = {"dev"}
# Declared, not imported by our code: distribution -> (a declared dependency we import, the module it brings in).
DECLARED_NOT_IMPORTED = {
    # sed_scores_eval imports pandas; pandas 3 is not supported by it.
    "pandas": ("sed_scores_eval", "pandas"),
    # sed_scores_eval -> sed_eval -> dcase_util imports pkg_resources, which setuptools 81 removed.
    "setuptools": ("sed_scores_eval", "pkg_resources"),
}


@dataclass(frozen=True)
class Import:
    module: str
    """Top-level module name (`submitit` for `from submitit.helpers import ...`)."""
    where: str
    """file:line"""
    lazy: bool
    """Inside a function body."""
    guarded: bool
    """Inside a `try` with an `except ImportError` (or ModuleNotFoundError) handler."""


def imports_of(source: str, where: str) -> list[Import]:
    """Absolute imports of a module, with whether each is lazy and guarded."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            else:
                names = []
            for name in names:
                found.append(Import(name.split(".")[0], f"{where}:{child.lineno}", lazy, guarded))
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Try):
                catches = any(_catches_import_error(h) for h in child.handlers)
                for stmt in child.body:
                    visit_one(stmt, child_lazy, guarded or catches)
                for part in (child.handlers, child.orelse, child.finalbody):
                    for stmt in part:
                        visit_one(stmt, child_lazy, guarded)
            else:
                visit(child, child_lazy, guarded)

    def visit_one(stmt: ast.AST, lazy: bool, guarded: bool) -> None:
        wrapper = ast.Module(body=[stmt], type_ignores=[])
        visit(wrapper, lazy, guarded)

    visit(ast.parse(source), lazy=False, guarded=False)
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types)


def third_party_imports() -> list[Import]:
    stdlib = set(sys.stdlib_module_names)
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for imp in imports_of(path.read_text(encoding="utf-8"), where):
                if imp.module not in stdlib and imp.module not in PACKAGES:
                    out.append(imp)
    return out


def declared() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    """(install_requires, {extra: requirements}) of setup.cfg, keyed by canonical distribution name."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")

    def parse(text: str) -> dict[str, Requirement]:
        reqs = [Requirement(line) for line in text.splitlines() if line.strip()]
        return {canonicalize_name(r.name): r for r in reqs}

    required = parse(cfg["options"]["install_requires"])
    extras = {name: parse(value) for name, value in cfg["options.extras_require"].items()}
    return required, extras


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> str:
    """The installed distribution that provides a top-level module, canonical name."""
    dists = _module_distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it (declare it in setup.cfg)"
    return canonicalize_name(dists[0])


def test_every_third_party_import_is_declared():
    required, extras = declared()
    optional = {name: extra for extra, reqs in extras.items() if extra not in TOOLING_EXTRAS for name in reqs}
    problems = []
    for imp in third_party_imports():
        dist = distribution_of(imp.module)
        if dist in required:
            continue
        if dist in optional:
            if not (imp.lazy and imp.guarded):
                problems.append(
                    f"{imp.where}: {imp.module} is in the optional extra [{optional[dist]}]: import it inside a "
                    "function, in a try that turns ImportError into a message naming the extra"
                )
            continue
        problems.append(
            f"{imp.where}: imports {imp.module} (distribution {dist}), which setup.cfg does not declare"
        )
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_imported():
    required, extras = declared()
    imported = {distribution_of(imp.module) for imp in third_party_imports()}
    unused = set(required) - imported - set(DECLARED_NOT_IMPORTED)
    assert not unused, (
        f"declared in setup.cfg but imported nowhere in {', '.join(PACKAGES)}: {sorted(unused)}"
    )
    for extra, reqs in extras.items():
        if extra not in TOOLING_EXTRAS:
            assert set(reqs) <= imported, f"extra [{extra}]: {sorted(set(reqs) - imported)} imported nowhere"
    assert set(DECLARED_NOT_IMPORTED) <= set(required), (
        "DECLARED_NOT_IMPORTED names an undeclared distribution"
    )


def test_declared_not_imported_are_brought_in_by_our_dependencies():
    """Each exception is real: importing the named dependency of ours imports the module in question."""
    required, _ = declared()
    imported = {imp.module for imp in third_party_imports()}
    parents = sorted({parent for parent, _ in DECLARED_NOT_IMPORTED.values()})
    assert set(parents) <= imported, f"{parents}: each must be a dependency sonotext imports"
    code = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"for name in {parents!r}: __import__(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    for dist, (parent, module) in DECLARED_NOT_IMPORTED.items():
        assert module in loaded, (
            f"{dist}: importing {parent} no longer imports {module}; drop it from setup.cfg"
        )
        assert canonicalize_name(parent) in required or parent in imported


def test_the_known_cases():
    """The dependencies this list was last fixed for (safetensors imported, omegaconf gone)."""
    required, _ = declared()
    assert "safetensors" in required and "huggingface-hub" in required
    assert "omegaconf" not in required, "the config loader is trainer/config.py; omegaconf is not used"
    assert str(required["submitit"].specifier) in ("<1.6,>=1.5", ">=1.5,<1.6")


@pytest.mark.parametrize(
    ("source", "lazy", "guarded"),
    [
        ("import numpy\n", False, False),
        ("def f():\n    import numpy\n", True, False),
        (
            "def f():\n    try:\n        import numpy\n    except ImportError:\n"
            "        raise SystemExit('pip install sonotext[x]')\n",
            True,
            True,
        ),
        ("try:\n    import numpy\nexcept (ValueError, ModuleNotFoundError):\n    pass\n", False, True),
        ("try:\n    pass\nexcept ImportError:\n    import numpy\n", False, False),
    ],
)
def test_imports_of_tells_lazy_and_guarded_imports(source, lazy, guarded):
    (imp,) = imports_of(source, "x.py")
    assert (imp.module, imp.lazy, imp.guarded) == ("numpy", lazy, guarded)
