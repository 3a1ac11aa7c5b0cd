"""The Docker sandbox's image, made offline from Debian packages (no image registry needed).

    python -m envgym.tools.docker_image                  # the image, in the engine at $DOCKER_HOST
    python -m envgym.tools.docker_image --rootfs-only    # only the cached Debian root (root; no engine)
    python -m envgym.tools.docker_image --base python:3.11-slim   # FROM a registry image instead

Two steps, each cached under a hash of its inputs:
1. the base: a minimal Debian root with python3 (`debootstrap --variant=minbase`; root only, about a
   minute, once per machine), kept as a tarball in `$ENVGYM_CACHE/docker/` (default: the user cache
   dir), so every clone, engine and CI run on the machine reuses it; an engine imports it as
   `envgym/debian-python:<key>` in seconds;
2. `containers/python-sandbox/Dockerfile` built FROM that base (build argument `BASE`), tagged
   `envgym/python-sandbox:<key>`, the key hashing the base's inputs and the Dockerfile's folder.
An engine that holds the tagged image skips both steps; a changed Dockerfile or base recipe gives a
new key, so a stale image is never used.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from envgym.tools.docker_engine import docker_cache_dir, unmount_under

REPOSITORY = "envgym/python-sandbox"
BASE_REPOSITORY = "envgym/debian-python"
DOCKERFILE_DIR = Path(importlib.resources.files("envgym.containers") / "python-sandbox")  # shipped in the wheel
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: What debootstrap installs. Changing any of it (or the recipe in `rootfs_tarball`) changes the key.
ROOTFS_RECIPE = {"suite": "bookworm", "variant": "minbase", "include": "python3", "pruned": "apt-cache,apt-lists",
                 "recipe": "1"}


class ImageError(RuntimeError):
    """The sandbox image cannot be made here; the message says what is missing and what to do."""


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def rootfs_key() -> str:
    """The hash of the Debian root's recipe."""
    return _digest(*(f"{k}={v}" for k, v in sorted(ROOTFS_RECIPE.items())))


def image_tag(base: str | None = None) -> str:
    """The sandbox image's name for `base` (None: the offline Debian base), keyed by every input."""
    folder = sorted(p for p in DOCKERFILE_DIR.rglob("*") if p.is_file())
    return f"{REPOSITORY}:{_digest(base or 'offline:' + rootfs_key(), *(p.read_bytes() for p in folder))}"


def rootfs_tarball(mirror: str = DEFAULT_MIRROR, log=sys.stderr) -> Path:
    """The cached tarball of the Debian root, made with debootstrap when missing (root only).

    Safe to call from several processes at once: one builds, the others wait for it.
    """
    from filelock import FileLock

    folder = docker_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"debian-{ROOTFS_RECIPE['suite']}-python3-{rootfs_key()}.tar"
    with FileLock(str(folder / "rootfs.lock")):
        if target.exists():
            return target
        if os.geteuid() != 0:
            raise ImageError(f"the sandbox's Debian base is not built yet ({target} is missing) and debootstrap "
                             "needs root: run `python -m envgym.tools.docker_image --rootfs-only` as root, or build "
                             "from a registry image with --base python:3.11-slim")
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed (Debian/Ubuntu: apt-get install debootstrap)")
        print(f"building the sandbox's Debian base with debootstrap (about a minute, once) into {target}",
              file=log, flush=True)
        scratch = Path(tempfile.mkdtemp(prefix="rootfs-", dir=folder))
        try:
            root = scratch / "root"
            made = subprocess.run(["debootstrap", f"--variant={ROOTFS_RECIPE['variant']}",
                                   f"--include={ROOTFS_RECIPE['include']}", ROOTFS_RECIPE["suite"], str(root), mirror],
                                  capture_output=True, text=True)
            unmount_under(root)  # debootstrap mounts /proc and /sys in the root; a failed run may leave them
            if made.returncode != 0:
                tail = "\n".join((made.stdout + made.stderr).splitlines()[-15:])
                raise ImageError(f"debootstrap failed (exit {made.returncode}) from {mirror}:\n{tail}")
            for pruned in ("var/cache/apt/archives", "var/lib/apt/lists"):  # downloaded .debs and indexes
                for entry in (root / pruned).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(scratch / "rootfs.tar"), "."],
                           check=True)
            os.replace(scratch / "rootfs.tar", target)
        finally:
            unmount_under(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
        for stale in folder.glob("debian-*.tar"):
            if stale != target:
                stale.unlink()
    return target


def ensure_image(client, base: str | None = None, mirror: str = DEFAULT_MIRROR, log=sys.stderr) -> str:
    """The sandbox image's tag in the engine of `client` (a docker.DockerClient), built if missing.

    `base` None builds FROM the offline Debian base (imported from `rootfs_tarball`); a registry
    image such as "python:3.11-slim" builds FROM that instead. Raises ImageError when it cannot.
    """
    import docker

    tag = image_tag(base)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    if base is None:
        base = f"{BASE_REPOSITORY}:{rootfs_key()}"
        try:
            client.images.get(base)
        except docker.errors.ImageNotFound:
            client.api.import_image(src=str(rootfs_tarball(mirror, log)), repository=BASE_REPOSITORY,
                                    tag=rootfs_key())
        client.images.get(base).tag(BASE_REPOSITORY, "bookworm")  # the Dockerfile's default BASE
    print(f"building {tag} from {DOCKERFILE_DIR} FROM {base}", file=log, flush=True)
    try:
        image, _ = client.images.build(path=str(DOCKERFILE_DIR), tag=tag, buildargs={"BASE": base}, rm=True,
                                       forcerm=True, network_mode="none")
    except (docker.errors.BuildError, docker.errors.APIError) as exc:
        raise ImageError(f"building {tag} FROM {base} failed: {exc}") from None
    image.tag(REPOSITORY, "latest")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envgym.tools.docker_image",
                                     description="Make the Docker sandbox's image offline (debootstrap + import).")
    parser.add_argument("--rootfs-only", action="store_true",
                        help="only make (or find) the cached Debian root tarball; needs root, no Docker engine")
    parser.add_argument("--base", help="build FROM this registry image (e.g. python:3.11-slim) instead")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror for debootstrap ({DEFAULT_MIRROR})")
    args = parser.parse_args(argv)
    if args.rootfs_only and args.base:
        parser.error("--rootfs-only makes the offline base; it does not combine with --base")
    try:
        if args.rootfs_only:
            print(rootfs_tarball(args.mirror))
            return 0
        from envgym.tools.docker_sandbox import docker_problem, engine_client

        problem = docker_problem()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        print(ensure_image(engine_client(), args.base, args.mirror))
        return 0
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
