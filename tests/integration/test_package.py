"""The Lambda package holds what Lambda runs and nothing of the local stack, the CLI, the demo data, tests or tools."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools import package

ROOT = Path(__file__).resolve().parents[2]
CHALICE = Path(sys.executable).with_name("chalice")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chalice package` for the dev stage, as `make package` runs it (without the merged template), unslimmed."""
    out = tmp_path_factory.mktemp("package") / "dev"
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "METERING_STAGE": "dev",
        "METERING_USAGE_QUEUE": "metering-usage-dev",
    }
    subprocess.run(
        [str(CHALICE), "package", "--stage", "dev", str(out)], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return out / "deployment.zip"


@pytest.fixture(scope="module")
def slimmed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("slim") / "deployment.zip"
    shutil.copy(built, target)
    package.slim(target)
    return target


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


def test_chalice_packages_the_local_stack_and_cli_that_slimming_removes(built: Path, slimmed: Path) -> None:
    before, after = names(built), names(slimmed)
    assert "chalicelib/local/emulator.py" in before and "chalicelib/cli.py" in before
    for name in after:
        assert not name.startswith(("chalicelib/local/", "tests/", "tools/")), name
        assert name not in ("chalicelib/cli.py", "chalicelib/backfill.py", "chalicelib/catalog/demo.json"), name
    assert set(after) == {n for n in before if not package.slimmed_away(n)}
    assert slimmed.stat().st_size < built.stat().st_size


def test_app_imports_from_the_slimmed_zip_with_only_the_lambda_runtime_packages(slimmed: Path) -> None:
    checked = package.verify(slimmed)
    assert checked.problems == ()
    # The child really imported the project and its dependencies from the zip, not from the checkout.
    assert checked.loaded["app"] is not None and "lambda-package-" in checked.loaded["app"]
    assert "lambda-package-" in (checked.loaded["pydantic"] or "")
    assert "chalicelib.workers.pipeline" in checked.reachable and "chalicelib.dialects.metronome" in checked.reachable
    assert not any(m.startswith(("chalicelib.local", "chalicelib.cli", "chalicelib.backfill")) for m in checked.loaded)


def test_the_check_refuses_a_zip_missing_a_module_app_needs(slimmed: Path, tmp_path: Path) -> None:
    broken = tmp_path / "deployment.zip"
    with zipfile.ZipFile(slimmed) as source, zipfile.ZipFile(broken, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if info.filename != "chalicelib/storage/keys.py":
                target.writestr(info, source.read(info))
    problems = package.verify(broken).problems
    assert problems and "chalicelib.storage.keys" in problems[0]


def test_the_check_refuses_a_zip_that_still_holds_the_emulator(built: Path) -> None:
    problems = package.verify(built).problems
    assert "chalicelib/local/emulator.py is in the zip" in problems


def test_compiling_adds_unchecked_bytecode_for_every_module_for_the_runtime_python(built: Path, tmp_path: Path) -> None:
    target = tmp_path / "deployment.zip"
    shutil.copy(built, target)
    done = package.slim(target, compile_for=package.this_python())
    tag = sys.implementation.cache_tag
    with zipfile.ZipFile(target) as archive:
        modules = [n for n in archive.namelist() if n.endswith(".py")]
        for module in modules:
            folder, _, file = module.rpartition("/")
            pyc = f"{folder}/__pycache__/{file[:-3]}.{tag}.pyc" if folder else f"__pycache__/{file[:-3]}.{tag}.pyc"
            if module.startswith(("chalicelib/", "app.py", "pydantic/")):  # project and a dependency: all compile
                header = archive.read(pyc)[:8]
                assert header[:4] == importlib.util.MAGIC_NUMBER, module
                assert int.from_bytes(header[4:8], "little") == 0b01, module  # hash-based, not checked
    assert done.compiled >= len([m for m in modules if m.startswith("chalicelib/")])
    assert package.verify(target).problems == ()


def test_no_bytecode_for_another_python(built: Path, tmp_path: Path) -> None:
    target = tmp_path / "deployment.zip"
    shutil.copy(built, target)
    assert package.slim(target, compile_for="python3.99").compiled == 0
    assert not [n for n in names(target) if n.endswith(".pyc")]
