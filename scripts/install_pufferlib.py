#!/usr/bin/env python3
"""Build and install PufferLib 3.0.0 (the Ocean C environments) without network downloads.

Why a script: PyPI's sdist cannot be installed with plain pip here. Its setup.py downloads
raylib (webassembly) and box2d unless directories of those names exist in the source root; its
NO_OCEAN=1 path is broken; with nvcc on PATH it builds a CUDA trainer extension we do not use
(NO_TRAIN=1 skips it); impulse_wars needs box2d (dropped); and its metadata pins numpy<2 and
gymnasium<=0.29.1 although the Ocean envs work with numpy 2 / gymnasium 1 when compiled against
the installed numpy (--no-build-isolation) and installed with --no-deps.

Steps (each reports its own failure):
  1. skip everything if pufferlib 3.0.0 with the breakout binding already imports;
  2. reuse a cached wheel if one exists for this Python and numpy;
  3. find the sdist on whatever index pip is configured with (pip's own finder: no host is
     named here) and download it;
  4. check its sha256;
  5. unpack, create the placeholder directories, drop impulse_wars;
  6. build a wheel with NO_TRAIN=1 --no-build-isolation;
  7. cache the wheel (in $ONOFF_CACHE or ~/.cache/onoff-bench) and install it with --no-deps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.0.0"
SHA256 = "7df3a3e3f5f894d78d2a1f5374097890aec01473183e748abefe4f3faa10eaa9"
PLACEHOLDERS = ("raylib-5.5_webassembly", "box2d-web", "box2d-linux-amd64")


class StepFailed(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[install_pufferlib] {msg}", flush=True)


def installed_ok() -> bool:
    code = (
        "import importlib.metadata as m, sys; "
        f"sys.exit(0 if m.version('pufferlib') == '{VERSION}' else 1); "
    )
    probe = code + "\nimport pufferlib.ocean.breakout.binding"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def cache_dir() -> Path:
    root = os.environ.get("ONOFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "onoff-bench"
    )
    import numpy

    # The extensions are compiled against this Python's ABI and numpy's C API (stable within 2.x).
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-numpy{numpy.__version__.split('.')[0]}"
    return Path(root) / f"pufferlib-{VERSION}-{SHA256[:12]}-{tag}"


def download(dest: Path) -> Path:
    """Download the sdist via pip's own index finder, honouring pip.conf / PIP_INDEX_URL."""
    try:
        from pip._internal.commands import create_command
    except ImportError as e:
        raise StepFailed(f"download: pip is not importable in {sys.executable} ({e})") from e
    cmd = create_command("download")
    options, _ = cmd.parse_args(["--no-deps", "--no-binary", ":all:", f"pufferlib=={VERSION}"])
    with cmd.main_context():
        session = cmd.get_default_session(options)
        finder = cmd._build_package_finder(options, session)
        links = [
            c.link
            for c in finder.find_all_candidates("pufferlib")
            if str(c.version) == VERSION and c.link.filename.endswith(".tar.gz")
        ]
        if not links:
            raise StepFailed(f"download: no pufferlib-{VERSION}.tar.gz on the configured package index")
        link = links[0]
        say(f"downloading {link.filename}")
        resp = session.get(link.url_without_fragment)
        if resp.status_code != 200:
            raise StepFailed(f"download: HTTP {resp.status_code} for {link.filename}")
        path = dest / link.filename
        path.write_bytes(resp.content)
    return path


def main() -> int:
    if installed_ok():
        say(f"pufferlib {VERSION} already installed")
        return 0
    cache = cache_dir()
    wheels = sorted(cache.glob("pufferlib-*.whl")) if cache.exists() else []
    try:
        if not wheels:
            with tempfile.TemporaryDirectory(prefix="pufferlib-build-") as tmp:
                tmp = Path(tmp)
                sdist = download(tmp)
                say("checking sha256")
                digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
                if digest != SHA256:
                    raise StepFailed(f"sha256: got {digest}, expected {SHA256}")
                say("unpacking")
                try:
                    with tarfile.open(sdist) as tar:
                        tar.extractall(tmp, filter="data")
                except (tarfile.TarError, OSError) as e:
                    raise StepFailed(f"unpack: {e}") from e
                src = tmp / f"pufferlib-{VERSION}"
                for name in PLACEHOLDERS:
                    (src / name).mkdir(exist_ok=True)  # setup.py downloads these only if missing
                shutil.rmtree(src / "pufferlib" / "ocean" / "impulse_wars", ignore_errors=True)
                # Compile the ~30 Ocean extensions in parallel: PufferLib's build_ext copies the
                # setup.cfg [build_ext] options to its C sub-build, which honours `parallel`.
                cfg = src / "setup.cfg"
                text = cfg.read_text() if cfg.exists() else ""
                par = f"[build_ext]\nparallel = {len(os.sched_getaffinity(0))}\n"
                text = text.replace("[build_ext]\n", par, 1) if "[build_ext]\n" in text else text + "\n" + par
                cfg.write_text(text)
                say("building the wheel (all Ocean envs; about 30 s on 2 cores)")
                env = dict(os.environ, NO_TRAIN="1")
                out = tmp / "wheel"
                r = subprocess.run(
                    [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                     "-w", str(out), str(src)],
                    env=env, capture_output=True, text=True,
                )  # fmt: skip
                if r.returncode != 0:
                    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
                    raise StepFailed(f"build: pip wheel exited {r.returncode}:\n{tail}")
                built = sorted(out.glob("pufferlib-*.whl"))
                if not built:
                    raise StepFailed("build: pip wheel produced no wheel")
                cache.mkdir(parents=True, exist_ok=True)
                for w in built:
                    shutil.copy2(w, cache / w.name)
                wheels = sorted(cache.glob("pufferlib-*.whl"))
                say(f"cached {wheels[0].name} in {cache}")
        else:
            say(f"using cached {wheels[0].name}")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheels[0])],
            capture_output=True, text=True,
        )  # fmt: skip
        if r.returncode != 0:
            raise StepFailed(f"install: pip install exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        if not installed_ok():
            raise StepFailed("verify: pufferlib installed but pufferlib.ocean.breakout.binding does not import")
    except StepFailed as e:
        say(f"FAILED at step {e}")
        return 1
    say(f"pufferlib {VERSION} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
