"""Build the Primer images with buildah (or podman) where no container registry can be reached.

`make images` runs this. The base image is a bare Debian made with debootstrap (made here when
missing) instead of the registry's python/pytorch images; torch and every Python package come
from the sources pip is configured with on this machine (`pip config list`): their local paths
are mounted read-only into the build and the settings passed as build arguments, so the
Dockerfiles name no mirror. The training image is its CPU variant (flash-attn needs nvcc).
With a registry, build with Docker instead (see the README).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# pip settings forwarded to the build, each as the PIP_* build argument the Dockerfiles declare.
PIP_SETTINGS = ("index-url", "extra-index-url", "find-links", "constraint", "cert")
# Later sections win, as in pip: the environment over the config files' [install] over [global].
PIP_SECTIONS = ("global", "install", ":env:")


def pip_settings(listing: str) -> dict[str, str]:
    """The forwarded settings from `pip config list` output (lines like `global.cert='/x'`)."""
    found: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"(.+)\.([a-z-]+)='(.*)'", line.strip())
        if match and match[2] in PIP_SETTINGS and match[1] in PIP_SECTIONS:
            found.setdefault(match[2], {})[match[1]] = match[3]
    # An empty value (PIP_CERT= in the environment) does not hide a file's setting.
    return {key: next(by_section[s] for s in reversed(PIP_SECTIONS) if by_section.get(s))
            for key, by_section in found.items() if any(by_section.values())}


# Where this machine's pip files appear inside the build: under their own prefix, so they never
# shadow a file the image's packages write (ca-certificates rewrites /etc/ssl/certs).
MOUNT_PREFIX = "/mnt/host-pip"


def host_paths(key: str, value: str) -> tuple[str, list[Path]]:
    """``value`` with every local path it names (plain or file://) moved under MOUNT_PREFIX,
    and the paths on this machine to mount there."""
    words, paths = [], []
    for word in value.split():
        path = Path(urlparse(word).path if word.startswith("file:") else word)
        if path.is_absolute() and path.exists():
            # An index's pages link to files beside it (../../files/x.whl): mount its parent.
            paths.append(path.parent if key.endswith("index-url") else path)
            word = word.replace(str(path), MOUNT_PREFIX + str(path), 1)
        words.append(word)
    return " ".join(words), paths


def build_options(settings: dict[str, str]) -> list[str]:
    """--build-arg and read-only --volume options that give the build this machine's pip."""
    options, mounted = [], set()
    for key, value in settings.items():
        value, paths = host_paths(key, value)
        for path in paths:
            if path not in mounted:
                mounted.add(path)
                options += ["--volume", f"{path}:{MOUNT_PREFIX}{path}:ro"]
        options += ["--build-arg", f"PIP_{key.upper().replace('-', '_')}={value}"]
    return options


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kwargs)


def ensure_base(image: str, suite: str) -> None:
    """Make `image` from a debootstrap'ed Debian minbase unless it exists already."""
    if subprocess.run(["podman", "image", "exists", image]).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="primer-base-") as root:
        run(["debootstrap", "--variant=minbase", suite, root, DEBIAN_MIRROR])
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        run(["podman", "import", "-", image], stdin=tar.stdout)
        if tar.wait() != 0:
            sys.exit(f"tar of the debootstrap tree {root} failed")


def builder() -> list[str]:
    if shutil.which("buildah"):
        argv = ["buildah", "bud", "--layers"]
    elif shutil.which("podman"):
        argv = ["podman", "build", "--layers"]
    else:
        sys.exit("make images needs buildah or podman (apt-get install buildah podman runc)")
    # Debian's podman defaults to crun when present; runc is what these machines carry.
    return argv + (["--runtime", "runc"] if shutil.which("runc") else []) + ["--network", "host"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="localhost/primer-base:bookworm")
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--image", default="localhost/primer:0.1.0")
    parser.add_argument("--train-image", default="localhost/primer-train:0.1.0-cpu")
    parser.add_argument("--torch-index-url", default="",
                        help="where torch comes from; empty: pip's configured sources")
    parser.add_argument("--base-only", action="store_true",
                        help="only make the debootstrap base (the sandbox container test's)")
    args = parser.parse_args()

    ensure_base(args.base, args.suite)
    if args.base_only:
        return
    listing = run([sys.executable, "-m", "pip", "config", "list"],
                  capture_output=True, text=True).stdout
    common = builder() + build_options(pip_settings(listing)) + [
        "--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    images = {
        args.image: ["-f", "docker/Dockerfile", "--build-arg", f"PYTHON_IMAGE={args.base}"],
        args.train_image: ["-f", "docker/Dockerfile.train", "--build-arg", "EXTRAS=",
                           "--build-arg", f"BUILD_IMAGE={args.base}",
                           "--build-arg", f"RUNTIME_IMAGE={args.base}"],
    }
    for tag, options in images.items():
        start = time.monotonic()
        run([*common, *options, "-t", tag, "."], cwd=ROOT)
        print(f"built {tag} in {time.monotonic() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
