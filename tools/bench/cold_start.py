"""Section 4: the cold start, `import app` against `import boto3` in fresh interpreters (`-X importtime`).

Two places are measured, each the median of COLD_RUNS fresh interpreters:
- the checkout (cwd = the project, the venv's packages), as a developer runs it;
- the slimmed deployment.zip unpacked, with only the Lambda runtime's packages beside it and
  bytecode writing off (`-B`): Lambda's code directory is read-only, so every module of the zip
  that has no `.pyc` is compiled from source at every cold start.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tools import package
from tools.bench.common import COLD_RUNS, ROOT


@dataclass(frozen=True)
class ImportTime:
    """One module's import in fresh interpreters: the median cumulative time and where it went."""

    module: str
    runs_ms: tuple[float, ...]
    by_package_ms: tuple[tuple[str, float], ...]  # self time by top-level package, the median run

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)

    def top(self, count: int = 6) -> str:
        return ", ".join(f"{name} {ms:,.0f}" for name, ms in self.by_package_ms[:count])


def parse_importtime(stderr: str, module: str) -> tuple[float, list[tuple[str, float]]]:
    """The cumulative milliseconds of `module`'s top-level import, and self time by top-level package under it.

    `-X importtime` prints `import time: self [us] | cumulative | imported package` per module, children
    before their parent, nested names indented by two spaces per level.
    """
    block: list[tuple[str, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        block.append((name.strip(), int(self_us.strip())))
        if depth == 0 and name.strip() == module:
            by_package: dict[str, float] = {}
            for child, child_self_us in block:
                top = child.split(".")[0]
                by_package[top] = by_package.get(top, 0.0) + child_self_us / 1000
            return int(cumulative_us.strip()) / 1000, sorted(by_package.items(), key=lambda kv: -kv[1])
        if depth == 0:
            block = []  # an earlier top-level import (interpreter start-up)
    raise ValueError(f"no top-level import of {module} in the -X importtime output")


def import_time(module: str, code: str, cwd: Path, flags: tuple[str, ...] = ()) -> ImportTime:
    """Median of COLD_RUNS fresh interpreters running `code`, which imports `module` at top level."""
    runs: list[float] = []
    breakdowns: list[list[tuple[str, float]]] = []
    for _ in range(COLD_RUNS):
        done = subprocess.run(
            [sys.executable, *flags, "-X", "importtime", "-c", code],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        )
        total, by_package = parse_importtime(done.stderr, module)
        runs.append(total)
        breakdowns.append(by_package)
    median_run = sorted(range(len(runs)), key=lambda i: runs[i])[len(runs) // 2]
    return ImportTime(module, tuple(runs), tuple(breakdowns[median_run]))


@dataclass(frozen=True)
class ColdStart:
    """`import app` and `import boto3`, in the checkout and from the Lambda package."""

    app: ImportTime
    boto3: ImportTime
    zip_app: ImportTime | None
    zip_boto3: ImportTime | None

    @property
    def ratio(self) -> float:
        return self.app.median_ms / self.boto3.median_ms

    @property
    def zip_ratio(self) -> float | None:
        if self.zip_app is None or self.zip_boto3 is None:
            return None
        return self.zip_app.median_ms / self.zip_boto3.median_ms


def measure(zip_path: Path | None = None) -> ColdStart:
    """Both imports in the checkout; and, when the package is built, from the unpacked zip."""
    app = import_time("app", "import app", ROOT)
    boto3 = import_time("boto3", "import boto3", ROOT)
    zip_app = zip_boto3 = None
    if zip_path is not None and zip_path.exists():
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as work:
            unpacked = Path(work) / "package"
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(unpacked)
            runtime = package.runtime_site(Path(work) / "runtime")
            path = f"import sys; sys.path[:0] = [{str(unpacked)!r}, {str(runtime)!r}]; "
            flags = ("-I", "-S", "-B")  # no site-packages, no PYTHON* variables, no bytecode written
            zip_app = import_time("app", path + "import app", Path(work), flags)
            zip_boto3 = import_time("boto3", path + "import boto3", Path(work), flags)
    return ColdStart(app, boto3, zip_app, zip_boto3)
