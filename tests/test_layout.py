"""The package's layout: a wing per stage (preprocess, train, infer, search) over two foundations,
the data contract (data/) and the network (model/), and shared modules at the top (config,
errors, files, devices, interrupts). A wing imports the foundations, and a sibling wing only where a stage
consumes another's product (search starts training runs); nothing imports back up."""

import ast
import importlib
import warnings

import pytest
from conftest import REPO

PACKAGE = REPO / "sequifier"
SHARED = {"config", "errors", "files", "devices", "interrupts"}  # the top-level modules every part may use
MAY_IMPORT = {
    "shared": {"shared"},
    "data": {"shared", "data"},
    "model": {"shared", "data", "model"},
    "preprocess": {"shared", "data", "preprocess"},
    "train": {"shared", "data", "model", "train"},
    "infer": {"shared", "data", "model", "infer"},
    "search": {"shared", "data", "model", "train", "search"},
    "export": {"model"},  # sequifier.export: the former name of sequifier.model.export, kept for a release
}
COMMANDS = {"cli", "__main__", "make", "__init__"}  # the entry points: they may start any stage
LONGEST_MODULE = 400


def part_of(module: str) -> str | None:
    """The part a module name (`sequifier.train.plan`, `sequifier.config`) belongs to."""
    parts = module.split(".")
    if parts[0] != "sequifier" or len(parts) == 1:
        return None
    if parts[1] in SHARED:
        return "shared"
    return parts[1]


def imported_modules(path) -> set[str]:
    """Every sequifier module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sequifier")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sequifier"):
            if node.module == "sequifier":  # from sequifier import config: the module config
                found |= {
                    f"sequifier.{alias.name}" for alias in node.names if not alias.name.startswith("__")
                }
            else:
                found.add(node.module)
    return found


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        yield path, "sequifier." + ".".join(relative.parts)


def test_every_module_belongs_to_a_known_part():
    for path, module in package_modules():
        if path.stem in COMMANDS and path.parent == PACKAGE:
            continue
        assert part_of(module) in MAY_IMPORT, f"{module}: a module outside the layout"


def test_wings_import_only_the_foundations_and_the_products_they_consume():
    crossings = []
    for path, module in package_modules():
        if path.parent == PACKAGE and path.stem in COMMANDS:
            continue
        part = part_of(module)
        for imported in imported_modules(path):
            if part_of(imported) not in MAY_IMPORT[part]:
                crossings.append(f"{module} imports {imported}")
    assert crossings == []


def test_the_shared_modules_and_the_contract_import_no_stage():
    for path, module in package_modules():
        if part_of(module) in ("shared", "data", "model"):
            stages = {
                m for m in imported_modules(path) if part_of(m) in ("preprocess", "train", "infer", "search")
            }
            assert not stages, f"{module} imports {stages}"


def test_development_tools_stay_out_of_the_package():
    assert not (PACKAGE / "reference.py").exists()
    for path, module in package_modules():
        assert not any(m.startswith("scripts") for m in imported_modules(path)), module


def test_no_module_is_longer_than_the_limit():
    long = {
        module: n
        for path, module in package_modules()
        if (n := len(path.read_text().splitlines())) > LONGEST_MODULE
    }
    assert long == {}


@pytest.mark.parametrize(
    "name",
    ["sequifier.preprocess.run", "sequifier.train.run", "sequifier.infer.run", "sequifier.search.run"],
)
def test_the_stages_run_from_their_package(name):
    module, _, attribute = name.rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_the_former_name_of_the_model_bundle_functions_still_works():
    import sequifier.model.export as home

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        former = importlib.reload(importlib.import_module("sequifier.export"))
    assert former.load_bundle is home.load_bundle and former.read_bundle is home.read_bundle
    assert former.find_export is home.find_export and former.describe is home.describe
    assert any(
        issubclass(w.category, DeprecationWarning) and "sequifier.model.export" in str(w.message)
        for w in caught
    )
