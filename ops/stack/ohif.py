"""The OHIF v3 viewer's static files, which the `viewer` program (viewer/) serves on OHIF_PORT.

OHIF publishes its built viewer in the npm package @ohif/app: the tarball's `dist/` is
the whole web application (HTML, JavaScript bundles, WebAssembly codecs), nothing of it
runs on the server. So the hub fetches exactly one tarball, never a dependency tree:
the version and npm's `integrity` (sha512 of the tarball) are pinned below, like a
lockfile entry. `npm pack` fetches it when npm is installed (it honours the site's npm
registry and proxy settings); otherwise the registry's tarball URL is read directly.
Either way the bytes must match the pinned sha512 before anything is extracted.

OHIF publishes its JavaScript unminified (a 17 MB main bundle), and a browser's first load
of the viewer is spent parsing and compiling it (bench/RESULTS.md). So every `*.js` of the
dist is rewritten with `esbuild --minify-whitespace` before the install counts as
finished: whitespace and comments only (legal comments kept), no renaming, no bundling,
the module format and the file names unchanged, so the program is the same. esbuild is
one static binary, fetched and checked exactly as the viewer is (a second pinned npm
tarball, @esbuild/linux-x64); it runs on x86-64 Linux only and is not kept.

The files go to OHIF_ROOT/<version>/dist (OHIF_ROOT is var/ohif in the checkout, not
committed), without the source maps (*.map, only read by a browser's developer tools).
A finished install carries a marker naming the integrity it was checked against and how it
was minified, so a second `make run` changes nothing, while an interrupted install, or one
made before minifying (or with other esbuild flags), is replaced. Installs of the same
root are serialised by a lock file, so `make run` and a test session can share it.

    .venv/bin/python -m ops.stack.ohif [--root DIR]     install if missing, print the dist path
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from core.settings import PROJECT_ROOT
from ops import datadirs

DEFAULT_STATE_DIR = PROJECT_ROOT / "var"  # config/env.defaults: STATE_DIR=./var
OHIF_ROOT = DEFAULT_STATE_DIR / "ohif"
MARKER = ".installed"
SKIPPED_SUFFIXES = (".map",)
DOWNLOAD_TIMEOUT_S = 300.0
MAX_TARBALL_BYTES = 200 * 1024 * 1024  # the 3.13.2 tarball is 50 MB
MINIFY_TIMEOUT_S = 600.0  # ~7 s for the 3.13.2 dist on this machine
# Whitespace only. `--minify --keep-names` saves ~0.1-0.3 s more (bench/RESULTS.md) but rewrites code: it
# renames locals and wraps named functions in a helper defined per file, while onnxruntime-web in OHIF's
# chunks builds a worker from a function's source text (`fn.toString()`), which no test here exercises.
MINIFY_FLAGS = ("--minify-whitespace",)
ESBUILD_BINARY = PurePosixPath("package", "bin", "esbuild")
ESBUILD_MACHINES = ("x86_64", "amd64")  # what platform.machine() says on the one binary's architecture


class OhifError(RuntimeError):
    """The viewer could not be installed; the message says why and what to do."""


@dataclass(frozen=True)
class NpmRelease:
    """One pinned npm release: `integrity` is npm's (`npm view PACKAGE@VERSION dist.integrity`)."""

    package: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball_url(self) -> str:
        name = self.package.rsplit("/", 1)[-1]
        return f"https://registry.npmjs.org/{self.package}/-/{name}-{self.version}.tgz"


# Pinned: to upgrade, change both and run `make run` (README.md, "Ports": the viewer).
OHIF = NpmRelease(
    package="@ohif/app",
    version="3.13.2",
    integrity="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==",
)
# The minifier: esbuild's Linux x86-64 build, one binary in a package without dependencies or scripts.
ESBUILD = NpmRelease(
    package="@esbuild/linux-x64",
    version="0.28.2",
    integrity="sha512-4xTZr1FUmSoQW4XIWmit3tzQrUTZM+N3P0XV8xROKYF50XfI7xeO90+1bZvNwxIufQ9hDQVRJH5YhgPVF8A/HQ==",
)

Out = Callable[[str], None]
Fetcher = Callable[[NpmRelease, Path], Path]


def dist_dir(root: Path = OHIF_ROOT, release: NpmRelease = OHIF) -> Path:
    """Where the viewer's files are once installed (what `python -m viewer --dist` serves)."""
    return root / release.version / "dist"


def marker_text(release: NpmRelease = OHIF, minifier: NpmRelease = ESBUILD) -> str:
    """What a finished install's marker says: the viewer's checked integrity and how its JavaScript was minified."""
    return f"{release.integrity}\nminified by {minifier.spec} {' '.join(MINIFY_FLAGS)}\n"


def is_installed(root: Path = OHIF_ROOT, release: NpmRelease = OHIF, minifier: NpmRelease = ESBUILD) -> bool:
    marker = root / release.version / MARKER
    try:
        return marker.read_text(encoding="ascii") == marker_text(release, minifier) and (
            dist_dir(root, release) / "index.html").is_file()
    except OSError:
        return False


def integrity_of(path: Path) -> str:
    """npm's integrity string of a file: "sha512-" and the base64 of its SHA-512."""
    sha = hashlib.sha512()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return "sha512-" + base64.b64encode(sha.digest()).decode("ascii")


def fetch_with_npm(release: NpmRelease, directory: Path) -> Path:
    """`npm pack` of the pinned version into `directory` (the tarball only, no dependencies)."""
    npm = shutil.which("npm")
    if npm is None:
        raise OhifError("npm is not installed")
    proc = subprocess.run(
        [npm, "pack", release.spec, "--pack-destination", str(directory), "--silent", "--ignore-scripts"],
        capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False, cwd=directory,
    )
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip().endswith(".tgz")]
    if proc.returncode != 0 or not names:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OhifError(f"npm pack {release.spec} failed: {detail[-1] if detail else proc.returncode}")
    return directory / names[-1]


def fetch_direct(release: NpmRelease, directory: Path, url: str | None = None) -> Path:
    """The registry's tarball URL read with httpx (no npm on this machine)."""
    target = directory / f"{release.package.rsplit('/', 1)[-1]}-{release.version}.tgz"
    size = 0
    try:
        with httpx.stream("GET", url or release.tarball_url, timeout=DOWNLOAD_TIMEOUT_S,
                          follow_redirects=True) as response, target.open("wb") as handle:
            if response.status_code != 200:
                raise OhifError(f"{url or release.tarball_url} answered HTTP {response.status_code}")
            for chunk in response.iter_bytes(1 << 20):
                size += len(chunk)
                if size > MAX_TARBALL_BYTES:
                    raise OhifError(f"{release.spec}: the download exceeds {MAX_TARBALL_BYTES} bytes")
                handle.write(chunk)
    except httpx.HTTPError as exc:
        raise OhifError(f"cannot download {release.spec}: {type(exc).__name__}: {exc}") from None
    return target


def fetch(release: NpmRelease, directory: Path) -> Path:
    """npm when it is installed, else the tarball URL; the caller checks the integrity."""
    if shutil.which("npm"):
        try:
            return fetch_with_npm(release, directory)
        except (OhifError, subprocess.TimeoutExpired):
            pass  # e.g. an npm too old for --pack-destination: the same bytes, read directly
    return fetch_direct(release, directory)


def fetch_verified(release: NpmRelease, directory: Path, fetcher: Fetcher) -> Path:
    """The release's tarball in `directory`, refused unless it matches its pinned integrity."""
    tarball = fetcher(release, directory)
    found = integrity_of(tarball)
    if found != release.integrity:
        raise OhifError(f"{release.spec}: the tarball's checksum is {found}, expected the pinned {release.integrity}; "
                        "nothing was installed. The registry (or a proxy or mirror between) served other bytes "
                        "than npm published: find out why before changing the pin in ops/stack/ohif.py")
    return tarball


def check_machine(minifier: NpmRelease = ESBUILD) -> None:
    """Refuse before any download where the pinned esbuild binary cannot run."""
    system, machine = platform.system(), platform.machine()
    if system != "Linux" or machine.lower() not in ESBUILD_MACHINES:
        raise OhifError(
            f"the OHIF viewer is minified at install by {minifier.spec}, a Linux x86-64 binary, and this "
            f"machine is {system} {machine}: install on x86-64 Linux (the compose image: build it for "
            "linux/amd64), or pin esbuild's package for this machine (e.g. @esbuild/linux-arm64 at the "
            f"same version, its integrity from `npm view @esbuild/linux-arm64@{minifier.version} "
            "dist.integrity`) as ESBUILD in ops/stack/ohif.py")


def extract_esbuild(tarball: Path, target: Path) -> Path:
    """The esbuild binary of `tarball` (package/bin/esbuild, a regular file) written to `target`, executable."""
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            member = archive.getmember(ESBUILD_BINARY.as_posix())
        except KeyError:
            raise OhifError(f"the esbuild tarball has no {ESBUILD_BINARY}") from None
        source = archive.extractfile(member) if member.isfile() else None
        if source is None:
            raise OhifError(f"{ESBUILD_BINARY} in the esbuild tarball is not a file")
        with source, target.open("wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
    os.chmod(target, 0o755)
    return target


def minify(esbuild: Path, dist: Path) -> int:
    """Rewrite every *.js under `dist` in place with MINIFY_FLAGS (one esbuild run); returns the file count.

    No --bundle and no --format: each file is transformed alone and keeps its module format.
    """
    scripts = sorted(f"./{p.relative_to(dist).as_posix()}" for p in dist.rglob("*.js") if p.is_file())
    if not scripts:
        return 0
    proc = subprocess.run(
        [str(esbuild), *MINIFY_FLAGS, "--log-level=error", "--allow-overwrite", "--outdir=.", "--outbase=.",
         *scripts],
        cwd=dist, capture_output=True, text=True, timeout=MINIFY_TIMEOUT_S, check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OhifError(f"esbuild could not minify the viewer (exit {proc.returncode}): "
                        f"{' / '.join(detail[:3]) or 'no output'}; nothing was installed")
    return len(scripts)


def _members(archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath]]:
    """The files and folders of package/dist/, each with its path below dist/.

    Anything else (links, devices, absolute paths, '..') is refused: the tarball is checked
    against its pinned hash, but extraction must be safe whatever it holds.
    """
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise OhifError(f"unsafe path in the tarball: {member.name!r}")
        if path.parts[:2] != ("package", "dist") or len(path.parts) < 3:
            continue
        if not (member.isfile() or member.isdir()):
            raise OhifError(f"unexpected entry in the tarball: {member.name!r} is not a file")
        if member.isfile() and path.name.endswith(SKIPPED_SUFFIXES):
            continue
        yield member, PurePosixPath(*path.parts[2:])


def extract_dist(tarball: Path, target: Path) -> int:
    """Extract package/dist/ of `tarball` into `target` (which must not exist); returns the file count."""
    target.mkdir(parents=True)
    count = 0
    with tarfile.open(tarball, "r:gz") as archive:
        for member, relative in _members(archive):
            dest = target.joinpath(*relative.parts)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise OhifError(f"cannot read {member.name!r} in the tarball")
            with source, dest.open("wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
            os.chmod(dest, 0o644)
            count += 1
    if not (target / "index.html").is_file():
        raise OhifError("the tarball has no dist/index.html: not a built OHIF viewer")
    return count


def _create_root(root: Path) -> None:
    """Create `root`. The default one is in var/, the default STATE_DIR: when var/ does not exist
    yet it is created as `make run` creates STATE_DIR (mode 700, ownership marker), so that a
    first `make ohif` or test run does not leave an unmarked STATE_DIR behind (ops/datadirs.py)."""
    if root.parent == DEFAULT_STATE_DIR and not root.parent.exists():
        datadirs.create_owned(root.parent, "STATE_DIR", 0o700)
    root.mkdir(parents=True, exist_ok=True)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    _create_root(root)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_ohif(
    root: Path = OHIF_ROOT, release: NpmRelease = OHIF, *, out: Out = print, fetcher: Fetcher = fetch,
    minifier: NpmRelease = ESBUILD,
) -> Path:
    """Install the pinned viewer, minified, into `root` unless it is there already; returns its dist directory."""
    if is_installed(root, release, minifier):
        return dist_dir(root, release)
    check_machine(minifier)
    with _locked(root):
        if is_installed(root, release, minifier):  # installed meanwhile by another process
            return dist_dir(root, release)
        for stale in root.glob(".install-*"):  # left by an install that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        out(f"Installing the OHIF viewer {release.spec} into {root / release.version}")
        with tempfile.TemporaryDirectory(prefix=".install-", dir=root) as scratch:
            work = Path(scratch)
            downloads = work / "download"
            downloads.mkdir()
            tarball = fetch_verified(release, downloads, fetcher)
            esbuild = extract_esbuild(fetch_verified(minifier, downloads, fetcher), work / "esbuild")
            staged = work / release.version
            count = extract_dist(tarball, staged / "dist")
            out(f"Minifying its JavaScript with {minifier.spec} {' '.join(MINIFY_FLAGS)}")
            scripts = minify(esbuild, staged / "dist")
            (staged / MARKER).write_text(marker_text(release, minifier), encoding="ascii")
            final = root / release.version
            if final.exists():  # an interrupted install: replace it whole
                shutil.rmtree(final)
            staged.rename(final)
        out(f"OHIF viewer {release.version} installed ({count} files, {scripts} scripts minified)")
    return dist_dir(root, release)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack.ohif", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=OHIF_ROOT, help=f"install under this folder (default {OHIF_ROOT})")
    args = parser.parse_args(argv)
    try:
        path = ensure_ohif(args.root.resolve(), out=lambda line: print(line, file=sys.stderr))
    except OhifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
