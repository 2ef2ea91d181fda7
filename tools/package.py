"""Slim the Lambda package that `chalice package` built: keep only what Lambda runs.

Chalice packages the whole `chalicelib/` directory. The local emulator, the command-line tool
(and the backfill module only it imports), the demo data, tests and tools never run on Lambda,
so they are dropped from `deployment.zip`. The slimmed zip is then checked: unpacked into a
temporary directory, `import app` must succeed in a fresh interpreter whose path holds only that
directory, the packages the Lambda Python runtime provides (boto3 and its dependencies) and the
standard library; and every project module app.py can reach, counting imports inside functions,
must be in the zip.

    python -m tools.package build/package-dev               # slim, compile and verify, in place
    python -m tools.package build/package-dev --no-compile  # slim and verify only
    python -m tools.package build/package-dev --check       # verify only

Lambda's code directory is read-only, so a module shipped without bytecode is compiled from source
at every cold start. When this interpreter is the Python of the functions' runtime (sam.json), the
zip gets a `.pyc` beside every module, in unchecked-hash mode (Python loads it without comparing the
source's timestamp, which the unpacked zip may not keep); another Python's `.pyc` would be ignored.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import py_compile
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Paths inside the zip that Lambda never runs: a directory ends with "/".
EXCLUDED: tuple[str, ...] = (
    "chalicelib/local/",  # the embedded AWS emulator and the local stack
    "chalicelib/cli.py",  # the operator's command line
    "chalicelib/backfill.py",  # CSV/JSON Lines import and export, used by the command line only
    "chalicelib/catalog/demo.json",  # demo organizations and keys, loaded by the local stack only
    "tests/",
    "tools/",
)
# Project modules in EXCLUDED (a module whose import would fail on Lambda).
EXCLUDED_MODULES: tuple[str, ...] = ("chalicelib.local", "chalicelib.cli", "chalicelib.backfill", "tests", "tools")
# What the Lambda Python runtime provides besides the standard library (requirements.txt leaves
# boto3 out for that reason).
RUNTIME_PACKAGES: tuple[str, ...] = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


def excluded(name: str) -> bool:
    """Whether a path inside the zip is one Lambda never runs."""
    return any(name == path or (path.endswith("/") and name.startswith(path)) for path in EXCLUDED)


def slimmed_away(name: str) -> bool:
    """Whether slimming drops a path: an excluded one, or bytecode chalice copied from the work tree
    (compiled for this machine's Python, and stale once the source changes)."""
    return excluded(name) or "__pycache__/" in name


def runtime_of(package_dir: Path) -> str | None:
    """The functions' Python runtime (e.g. python3.11) as sam.json names it, if the template is there."""
    template = package_dir / "sam.json"
    if not template.exists():
        return None
    found = set(re.findall(r'"Runtime":\s*"(python3\.\d+)"', template.read_text(encoding="utf-8")))
    return found.pop() if len(found) == 1 else None


def this_python() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Slimmed:
    """What slimming did: the files and bytes before and after."""

    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    dropped: tuple[str, ...]
    compiled: int


def slim(zip_path: Path, compile_for: str | None = None) -> Slimmed:
    """Rewrite the zip without the excluded paths (same compression, entries in the same order).

    With `compile_for` equal to this interpreter's runtime name (python3.X), a `.pyc` is added for
    every module left; a stale one already in the zip is dropped either way.
    """
    before = zip_path.stat().st_size
    temporary = zip_path.with_suffix(".slim.zip")
    dropped: list[str] = []
    compiled = 0
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(temporary, "w") as target:
        infos = source.infolist()
        modules: dict[str, bytes] = {}
        for info in infos:
            if slimmed_away(info.filename):
                dropped.append(info.filename)
                continue
            data = source.read(info)  # before writestr, which rewrites the ZipInfo's offsets
            if info.filename.endswith(".py"):
                modules[info.filename] = data
            target.writestr(info, data, compress_type=info.compress_type)
        if compile_for is not None and compile_for == this_python():
            compiled = _add_bytecode(modules, target)
    os.replace(temporary, zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        files_after = len(archive.namelist())
    return Slimmed(len(infos), files_after, before, zip_path.stat().st_size, tuple(dropped), compiled)


def _add_bytecode(modules: dict[str, bytes], target: zipfile.ZipFile) -> int:
    """Compile the modules (unchecked-hash .pyc, paths as Lambda sees them) into the target zip."""
    with tempfile.TemporaryDirectory(prefix="lambda-bytecode-") as work:
        root = Path(work)
        for name, data in modules.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        compileall.compile_dir(
            root,
            quiet=2,
            stripdir=str(root),
            prependdir="/var/task",
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            workers=1,
        )
        count = 0
        for pyc in sorted(root.rglob("*.pyc")):
            target.write(pyc, pyc.relative_to(root).as_posix(), compress_type=zipfile.ZIP_DEFLATED)
            count += 1
        return count


def runtime_site(into: Path, site_packages: Path | None = None) -> Path:
    """A directory standing in for the Lambda runtime's own packages: links to boto3 and its dependencies."""
    site = site_packages or Path(sysconfig.get_paths()["purelib"])
    into.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        source = site / name
        if not source.exists() and (site / f"{name}.py").exists():
            source = site / f"{name}.py"
        if source.exists():
            (into / source.name).symlink_to(source)
    return into


# Run in the child interpreter (-I -S: no site-packages, no PYTHONPATH): import app from the package,
# then list every module loaded and, by modulefinder, every project module app.py can reach.
_PROBE = r"""
import json, modulefinder, sys
package, runtime = sys.argv[1], sys.argv[2]
sys.path[:0] = [package, runtime]
import app  # noqa: F401  (the Lambda handler module)
loaded = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
finder = modulefinder.ModuleFinder(path=sys.path)
finder.run_script(package + "/app.py")
reachable = sorted(n for n in finder.modules if n == "app" or n.startswith("chalicelib"))
missing = sorted(n for n in finder.badmodules if n.startswith("chalicelib"))
print(json.dumps({"loaded": loaded, "reachable": reachable, "missing": missing}))
"""


@dataclass(frozen=True)
class Verified:
    """The import check of a package: what `import app` loaded and what app.py can reach."""

    loaded: dict[str, str | None]
    reachable: tuple[str, ...]
    problems: tuple[str, ...]


def verify(zip_path: Path, site_packages: Path | None = None) -> Verified:
    """Unpack the zip and import app from it in a fresh interpreter with only the runtime's packages."""
    with tempfile.TemporaryDirectory(prefix="lambda-package-") as work:
        package = Path(work) / "package"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(package)
            names = archive.namelist()
        runtime = runtime_site(Path(work) / "runtime", site_packages)
        env = {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1", "HOME": work}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("METERING_", "POWERTOOLS_"))})
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, str(package), str(runtime)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return Verified({}, (), (f"import app failed:\n{result.stderr.strip()[-3000:]}",))
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        problems = list(_problems(probe, names, str(package), str(runtime)))
        return Verified(probe["loaded"], tuple(probe["reachable"]), tuple(problems))


def _problems(probe: dict[str, object], names: Sequence[str], package: str, runtime: str) -> Iterable[str]:
    loaded = probe["loaded"]
    assert isinstance(loaded, dict)
    stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    for name, path in sorted(loaded.items()):
        if path is None or path.startswith(package) or any(path.startswith(p) for p in stdlib):
            continue
        if not path.startswith(runtime):
            yield f"{name} was imported from outside the package and the runtime: {path}"
    reachable = probe["reachable"]
    assert isinstance(reachable, list)
    for module in reachable:
        if any(module == m or module.startswith(m + ".") for m in EXCLUDED_MODULES):
            yield f"app.py reaches {module}, which the package leaves out"
        relative = module.replace(".", "/")
        if f"{relative}.py" not in names and f"{relative}/__init__.py" not in names:
            yield f"app.py reaches {module}, which is not in the zip"
    missing = probe["missing"]
    assert isinstance(missing, list)
    for module in missing:
        yield f"app.py imports {module}, which cannot be found"
    for name in names:
        if excluded(name):
            yield f"{name} is in the zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="the directory `chalice package` wrote (holds deployment.zip)")
    parser.add_argument("--check", action="store_true", help="verify only; leave the zip as it is")
    parser.add_argument("--no-compile", action="store_true", help="add no .pyc files")
    args = parser.parse_args(argv)
    zip_path = args.package_dir / "deployment.zip"
    if not args.check:
        runtime = None if args.no_compile else runtime_of(args.package_dir)
        done = slim(zip_path, compile_for=runtime)
        if runtime is None or done.compiled == 0:
            why = "--no-compile" if args.no_compile else f"runtime {runtime}, this interpreter {this_python()}"
            compiled = f"no .pyc added ({why})"
        else:
            compiled = f"{done.compiled} .pyc added for {runtime}"
        print(
            f"slimmed {zip_path}: {done.files_before} -> {done.files_after} files, "
            f"{done.bytes_before / 1e6:.2f} -> {done.bytes_after / 1e6:.2f} MB "
            f"(dropped {len(done.dropped)}: {', '.join(sorted({_top(n) for n in done.dropped}))}; {compiled})"
        )
    checked = verify(zip_path)
    for problem in checked.problems:
        print(f"package check: {problem}", file=sys.stderr)
    if checked.problems:
        return 1
    print(f"package check: import app works from the zip alone; {len(checked.reachable)} project modules reachable")
    return 0


def _top(name: str) -> str:
    for path in EXCLUDED:
        if name == path or name.startswith(path):
            return path
    return "__pycache__/ (the work tree's bytecode)" if "__pycache__/" in name else name


if __name__ == "__main__":
    raise SystemExit(main())
