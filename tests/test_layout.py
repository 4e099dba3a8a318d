"""The package's import graph, read from its source with ``ast`` (every import, at the top of a
module or inside a function): the run path reads one way, evaluation and data import no model
internals, the trainer imports no model, and only ``recbole_endo.compat`` patches RecBole."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "recbole_endo")


def read_modules():
    """``{module name: parsed source}`` of every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, file), ROOT)[: -len(".py")].split(os.sep)
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                with open(os.path.join(folder, file)) as source:
                    modules[name] = ast.parse(source.read())
    return modules


MODULES = read_modules()


def imported(tree):
    """Every module name an import of ``tree`` names (``from a import b``: ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def plugin_imports(name):
    """The package's modules that module ``name`` imports, with the packages Python imports
    first (``a.b.c`` imports ``a.b``), but the root package and ``name``'s own packages, which
    are already being imported when ``name`` runs."""
    enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set()
    for module in imported(MODULES[name]):
        parts = module.split(".")
        found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & MODULES.keys()
    return found - enclosing - {name, "recbole_endo"}


def in_package(name, package):
    return name == package or name.startswith(package + ".")


def test_the_graph_reads_every_module():
    assert {"recbole_endo.quick_start", "recbole_endo.trainer", "recbole_endo.compat.registration"} <= MODULES.keys()


@pytest.mark.parametrize("package", ["recbole_endo.evaluation", "recbole_endo.data"])
def test_evaluation_and_data_import_nothing_from_the_models(package):
    for name in [name for name in MODULES if in_package(name, package)]:
        assert not [module for module in plugin_imports(name) if in_package(module, "recbole_endo.model")], name


def test_the_trainer_imports_no_model():
    # It looks a model's class up by name (recbole_endo.registry) and reads its attributes.
    assert not [module for module in plugin_imports("recbole_endo.trainer") if in_package(module, "recbole_endo.model")]


def test_option_checks_live_outside_the_models():
    assert "recbole_endo.options" in MODULES and "recbole_endo.model.options" not in MODULES


def test_the_package_has_no_import_cycle():
    graph = {name: plugin_imports(name) for name in MODULES}
    done, path = set(), []

    def visit(name):
        assert name not in path, " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        path.append(name)
        for module in graph[name]:
            visit(module)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def recbole_names(tree):
    """Names a module binds to RecBole: ``import recbole.x`` binds ``recbole``, ``from recbole.x
    import y (as z)`` binds ``y`` (``z``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names if in_package(alias.name, "recbole")}
        elif isinstance(node, ast.ImportFrom) and node.module and in_package(node.module, "recbole"):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def root_name(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def recbole_patches(tree):
    """Lines where a module assigns to (or deletes) an attribute or item of something imported
    from RecBole (a module, class or registry), or calls setattr/delattr on one: what patching
    RecBole looks like. (An instance's attribute set through a local name is not seen.)"""
    names = recbole_names(tree)
    lines = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            targets = node.args[:1]
        lines += [node.lineno for target in targets if root_name(target) in names and not isinstance(target, ast.Name)]
    return lines


def test_only_compat_patches_recbole():
    patching = {name: lines for name, tree in MODULES.items() if (lines := recbole_patches(tree))}
    assert patching and all(in_package(name, "recbole_endo.compat") for name in patching), patching
    # register() is the one place that tells RecBole about the plugin (its models, trainers,
    # metrics and checkpoint config); the other compat modules change a run while it runs.
    assert "recbole_endo.compat.registration" in patching


def test_each_compat_module_names_the_recbole_behaviour_it_changes():
    for name, tree in MODULES.items():
        if in_package(name, "recbole_endo.compat"):
            assert "RecBole" in (ast.get_docstring(tree) or ""), name


def test_the_run_path_names_no_dataset():
    """Datasets are prepared through recbole_endo.data.preparers; RecBole's own special case of
    ml-100k is fixed in recbole_endo.compat.config."""
    datasets = {file[: -len(".yaml")] for file in os.listdir(os.path.join(ROOT, "recbole_endo", "properties", "dataset"))}
    for name in ("recbole_endo.quick_start", "recbole_endo.config", "recbole_endo.trainer", "recbole_endo.registry"):
        named = {node.value for node in ast.walk(MODULES[name]) if isinstance(node, ast.Constant)} & datasets
        assert not named, (name, named)
