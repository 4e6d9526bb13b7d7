"""What every benchmark report shares: where its numbers come from (command, date, commit, machine) and writing it.

Benchmark scripts run as ``.venv/bin/python benchmarks/<name>.py`` from the repository root, so ``import _report``
finds this module.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from anatomark.paths import REPO_ROOT, git_commit


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(threads: int | None = None, machine_note: str = "") -> list[str]:
    """The ``- Command``, ``- Date; commit`` and ``- Machine`` lines of a report from the running script.

    Args:
        threads: torch threads used, when the script runs torch.
        machine_note: appended to the machine line (e.g. "shared with a training run").
    """
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    torch = sys.modules.get("torch")
    machine = f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if torch is not None:
        machine += f", torch {torch.__version__}" + (f" ({threads} threads)" if threads else "")
        machine += ", CUDA available (not used unless stated)" if torch.cuda.is_available() else ", CPU only"
    return [
        f"- Command: `{shlex.join(['.venv/bin/python', str(shown), *sys.argv[1:]])}` (from the repo root)",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit `{git_commit()}`",
        f"- Machine: {machine}" + (f" ({machine_note})" if machine_note else ""),
    ]


def write_report(out: str | Path, lines: list[str], data: Any = None, echo: bool = True) -> Path:
    """Write the markdown report (and ``data`` as JSON beside it, same stem), print it, say where it went."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip("\n") + "\n"
    out.write_text(text)
    if data is not None:
        out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    if echo:
        print(text)
    print(f"Wrote {out}")
    return out
