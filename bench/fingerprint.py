"""Hardware and software fingerprint stored with every run (and compared by the report), and the
reproducibility record beside it: ``packages.txt`` (every installed distribution) and, when the
code runs from a git tree with changes, ``code.diff`` (what the commit alone does not hold)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from bench.results import atomic_write_bytes


def cpuinfo(field_name: str) -> str | None:
    """The first ``field_name`` line of /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field_name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """'family 6 model 167': tells apart CPUs that share a marketing name ("Intel(R) Xeon(R)
    Processor" covers several generations with different vector units); None off x86 Linux."""
    fam, mod = cpuinfo("cpu family"), cpuinfo("model")
    return f"family {fam} model {mod}" if fam and mod else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def fingerprint(device: torch.device | None = None) -> dict:
    gpu = None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        gpu = torch.cuda.get_device_name(device if device is not None else 0)
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),  # the vector unit torch's kernels use: AVX512, ...
        "cores": os.cpu_count(),
        "cores_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # the cores this process may run on (a runner's pinned share, or taskset's)
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ale_py": _version("ale-py"),
        "pufferlib": _version("pufferlib"),
        "gymnasium": _version("gymnasium"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def hardware_key(fp: dict) -> str:
    """What must match for wall-clock numbers to be pooled (defined in plots.load, which does not
    import torch, so the report reads the same key)."""
    from plots.load import hardware_key as key

    return key(fp)


CODE_ROOT = Path(__file__).resolve().parent.parent  # the tree the harness runs from
# Untracked files copied into code.diff: what building and running the code reads (source, build
# and config files), each up to UNTRACKED_MAX_BYTES and UNTRACKED_TOTAL_BYTES in all. Other
# untracked files (results, figures, data: megabytes in a working tree that has run experiments)
# are named in its header, not copied; tracked changes are always copied in full.
UNTRACKED_MAX_BYTES = 1_000_000
UNTRACKED_TOTAL_BYTES = 5_000_000
SOURCE_SUFFIXES = {".py", ".pyi", ".pyx", ".pxd", ".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".toml", ".cfg", ".ini",
                   ".yaml", ".yml", ".sh"}  # fmt: skip
SOURCE_NAMES = {"Makefile", "Dockerfile", "MANIFEST.in", "CMakeLists.txt", "requirements.txt", ".gitignore"}
_LISTED_MAX = 100  # names of files left out, at most (then a count)


def installed_packages() -> str:
    """Every installed distribution as ``name==version``, one a line, sorted by name (the first
    of duplicates on sys.path: the one ``import`` finds)."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") not in seen:
            seen[name.lower().replace("_", "-")] = f"{name}=={dist.version}"
    return "".join(line + "\n" for _, line in sorted(seen.items()))


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    # GIT_OPTIONAL_LOCKS=0: reading never refreshes (writes) the index, so runs that start
    # together do not race on index.lock, and the user's index is left as it was.
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # fmt: skip


# A patch git apply takes whatever the user's git config says about colour, prefixes, drivers.
_PATCH = ("--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/")


def code_diff(root: Path = CODE_ROOT) -> bytes | None:
    """What the working tree at ``root`` holds beyond its commit, as one patch that ``git apply``
    takes on a checkout of that commit: ``git diff HEAD`` (tracked changes, staged or not) and
    every untracked, non-ignored source file as a new-file hunk (``SOURCE_SUFFIXES``; the others,
    and sources over the size caps, are named in the header, not copied). None when ``root`` is
    not in a git tree or the tree is clean; the git index is never written."""
    try:
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        tracked = _git(root, "diff", "HEAD", *_PATCH)
        listed = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--full-name")
        top = _git(root, "rev-parse", "--show-toplevel")
        if tracked.returncode != 0 or listed.returncode != 0 or top.returncode != 0:
            return None
        toplevel = Path(top.stdout.decode().strip())
        untracked, left_out, copied = [], [], 0
        for name in sorted(n for n in listed.stdout.decode(errors="surrogateescape").split("\0") if n):
            if name.endswith("/"):  # a nested git repository: git lists the folder, not its files
                left_out.append(f"{name} (a git repository of its own)")
                continue
            try:
                size = (toplevel / name).lstat().st_size
            except OSError:  # removed since it was listed
                continue
            path = Path(name)
            if path.suffix not in SOURCE_SUFFIXES and path.name not in SOURCE_NAMES:
                left_out.append(f"{name} ({size:,} bytes, not source)")
                continue
            if size > UNTRACKED_MAX_BYTES or copied + size > UNTRACKED_TOTAL_BYTES:
                left_out.append(f"{name} ({size:,} bytes, over the size cap)")
                continue
            copied += size
            # exit status 1 means "differs", as it always does against /dev/null
            hunk = _git(toplevel, "diff", "--no-index", *_PATCH, "--", "/dev/null", name)
            if hunk.returncode not in (0, 1):
                left_out.append(f"{name} (unreadable)")
                continue
            untracked.append(hunk.stdout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not tracked.stdout and not untracked and not left_out:
        return None
    # git apply skips text before the first "diff --git" line, so the header can stay in the patch.
    header = [f"# onoff-bench code.diff: the code this run started from, beyond commit {head.stdout.decode().strip()}",
              f"# of {toplevel}: tracked changes (git diff HEAD) and untracked files as new files.",
              "# Rebuild: git checkout COMMIT && git apply code.diff"]  # fmt: skip
    header += [f"# untracked, not copied: {t}" for t in left_out[:_LISTED_MAX]]
    if len(left_out) > _LISTED_MAX:
        header.append(f"# untracked, not copied: {len(left_out) - _LISTED_MAX} more files")
    return ("\n".join(header) + "\n").encode() + tracked.stdout + b"".join(untracked)


def write_record(folder: Path, root: Path = CODE_ROOT) -> None:
    """``packages.txt`` and, for a tree with changes, ``code.diff`` in ``folder`` (atomically)."""
    atomic_write_bytes(folder / "packages.txt", installed_packages().encode())
    diff = code_diff(root)
    if diff is not None:
        atomic_write_bytes(folder / "code.diff", diff)
