"""
Facts about the machine a benchmark runs on: CPUs, memory, how busy it is, the CPU time the
hypervisor steals (``/proc/stat``), the code's git revision, the client tools' versions and
the open-files limit. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = (
    "CURL",
    "ROOT",
    "WRK",
    "CpuTimes",
    "git_revision",
    "library_fingerprint",
    "machine",
    "machine_busy",
    "raise_open_files_limit",
    "steal_since",
    "tool_version",
)

ROOT = Path(__file__).resolve().parent.parent
CURL = "/usr/bin/curl"
WRK = "/usr/bin/wrk"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class CpuTimes:
    """All CPUs' jiffies from ``/proc/stat``: busy (not idle nor iowait), steal, total."""

    busy: int
    steal: int
    total: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        steal = fields[7] if len(fields) > 7 else 0
        return cls(sum(fields) - idle, steal, sum(fields))

    def share_since(self, earlier: CpuTimes | None, what: str) -> float | None:
        """The share of the CPUs' time since *earlier* that was *what* ("busy", "steal")."""
        if earlier is None or self.total <= earlier.total:
            return None
        return float(getattr(self, what) - getattr(earlier, what)) / (self.total - earlier.total)


def machine_busy(seconds: float = 1.0) -> float | None:
    """The share of all CPUs that was busy over the next *seconds* (0 to 1)."""
    before = CpuTimes.now()
    time.sleep(seconds)
    after = CpuTimes.now()
    return after.share_since(before, "busy") if after is not None else None


def steal_since(before: CpuTimes | None) -> float | None:
    """The share of the CPUs' time since *before* that the hypervisor gave to others."""
    after = CpuTimes.now()
    return after.share_since(before, "steal") if after is not None else None


def git_revision() -> str:
    """The short git revision, marked if ``tornado_safestream/`` has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tornado_safestream"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if not rev:
        return "unknown"
    return f"{rev} (tornado_safestream/ modified)" if dirty else rev


def library_fingerprint() -> str:
    """A hash of the package's source files: the code the servers run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tornado_safestream").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()[:12]


def machine() -> dict[str, Any]:
    """The machine's facts, for the report's header and the JSON results."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "runner_python": platform.python_version(),
        "git": git_revision(),
        "library": library_fingerprint(),
    }


def tool_version(path: str) -> str | None:
    """``curl 7.88.1``, ``wrk 4.1.0``...: the first two words of *path* ``--version``."""
    if not os.access(path, os.X_OK):
        return None
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = (done.stdout or done.stderr).split()[:2]
    return " ".join(words) or None


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """
    Raise this process's soft ``RLIMIT_NOFILE`` towards *wanted* (up to the hard limit); the
    limits (soft, hard) afterwards. Child processes inherit them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
