"""setup.cfg declares every third-party package that tfblip imports."""

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _requirement_names(text):
    """Normalized distribution names of a setup.cfg requirement list (PEP 503)."""
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_normalize(re.match(r"[A-Za-z0-9._-]+", line).group()))
    return names


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path):
    """(top-level module, imported at module level) of every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            yield module.split(".")[0], id(node) in module_level


def test_every_third_party_import_is_declared():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    required = _requirement_names(config["options"]["install_requires"])
    optional = set()
    for extra in config["options.extras_require"].values():
        optional |= _requirement_names(extra)
    distributions = importlib.metadata.packages_distributions()

    undeclared = set()
    for path in (ROOT / "tfblip").rglob("*.py"):
        for module, at_module_level in _imports(path):
            if module in sys.stdlib_module_names or module == "tfblip":
                continue
            names = {_normalize(d) for d in distributions.get(module, [module])}
            # Imported when the module loads: a base requirement. Imported inside a function
            # (torch, huggingface_hub), or anywhere in tfblip.beam (the `beam` extra's own
            # package, which names the extra when apache_beam is missing): an extra is enough.
            in_extra_package = path.is_relative_to(ROOT / "tfblip" / "beam")
            base_only = at_module_level and not in_extra_package
            declared = required if base_only else required | optional
            if not names & declared:
                undeclared.add(f"{module} ({path.relative_to(ROOT)})")
    assert not undeclared, f"imported but not declared in setup.cfg: {sorted(undeclared)}"
