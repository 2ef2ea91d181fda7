"""Section 5: the Lambda package as `make package` builds and slims it: size, files, largest parts."""

from __future__ import annotations

import subprocess
import zipfile
from dataclasses import dataclass

from tools.bench.common import PACKAGE_ZIP, ROOT


@dataclass(frozen=True)
class PackageSize:
    """deployment.zip: its size in MB (10^6 bytes), its files, its `.pyc` files, compressed MB by top-level entry."""

    mb: float
    files: int
    pyc: int
    largest: tuple[tuple[str, float], ...]

    def top(self, count: int = 5) -> str:
        return ", ".join(f"{name} {mb:.2f}" for name, mb in self.largest[:count])


def measure(build: bool = True) -> PackageSize:
    """Build the package with `make package` (which slims and checks it), then read deployment.zip."""
    if build:
        subprocess.run(["make", "package"], cwd=ROOT, check=True, capture_output=True, text=True)
    with zipfile.ZipFile(PACKAGE_ZIP) as archive:
        infos = archive.infolist()
    by_top: dict[str, float] = {}
    for info in infos:
        top = info.filename.split("/")[0]
        name = top.split("-")[0] if top.endswith(".dist-info") else top
        by_top[name] = by_top.get(name, 0.0) + info.compress_size / 1e6
    return PackageSize(
        PACKAGE_ZIP.stat().st_size / 1e6,
        len(infos),
        sum(1 for i in infos if i.filename.endswith(".pyc")),
        tuple(sorted(by_top.items(), key=lambda kv: -kv[1])),
    )
