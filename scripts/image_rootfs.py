"""Assemble the container image's runtime root filesystem from installed Debian packages.

Run by the Dockerfile's build stage with Debian's python3 (standard library only):

    python3 image_rootfs.py /rootfs --package python3-minimal ... --scan /opt/foundry-proxy

The root holds, complete, the named packages plus every package that owns a shared library
one of their programs or libraries (or an ELF file under --scan) loads, found with ldd until
nothing new appears. Each package's status paragraph goes to /var/lib/dpkg/status.d/, the
layout image scanners read for images without dpkg (docs/container.md). Files that Debian
generates at install time, not listed by dpkg, are taken too: the CA bundle and its links,
the bytecode of the packages' modules, the loader cache. No shell, package manager or
coreutils comes along: the run fails if one would.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

#: Generated at install time (postinst scripts, triggers); not in any package's file list.
GENERATED = ["/etc/ssl/certs", "/etc/ld.so.cache"]
#: The root must not hold these: the point of the runtime stage is to leave them out.
FORBIDDEN = {"bash", "dash", "coreutils", "apt", "dpkg", "perl-base", "util-linux", "debconf"}
# Debian's tools, by path: the build stage is a Debian image, this runs nowhere else.
DPKG_QUERY = "/usr/bin/dpkg-query"
LDD = "/usr/bin/ldd"
#: Top-level links of a merged-/usr system, as in the build stage.
MERGED_USR = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"]
USERS = """\
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
"""
GROUPS = """\
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
"""


def query(*args: str) -> str:
    done = subprocess.run([DPKG_QUERY, *args], capture_output=True, text=True, check=True)  # noqa: S603
    return done.stdout


def package_files(package: str) -> list[str]:
    return [p for p in query("--listfiles", package).splitlines() if p not in ("", "/.")]


def owner(path: str) -> str | None:
    """The installed package that lists ``path`` (trying its /usr-merged spellings)."""
    real = os.path.realpath(path)
    for candidate in dict.fromkeys([path, real, real.removeprefix("/usr"), "/usr" + path]):
        done = subprocess.run(  # noqa: S603 (fixed program, a path)
            [DPKG_QUERY, "--search", candidate], capture_output=True, text=True, check=False
        )
        for line in done.stdout.splitlines():
            if line.startswith("diversion "):
                continue
            name, _, listed = line.partition(": ")
            if listed.strip() == candidate and "," not in name:
                return name.split(":")[0]
    return None


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_libraries(path: str) -> set[str]:
    done = subprocess.run([LDD, path], capture_output=True, text=True, check=False)  # noqa: S603
    found = set(re.findall(r"=>\s+(/\S+)", done.stdout))
    found |= set(re.findall(r"^\s*(/\S+)\s+\(", done.stdout, re.M))  # the loader itself
    missing = re.findall(r"(\S+)\s+=>\s+not found", done.stdout)
    if missing:
        sys.exit(f"image_rootfs: {path} needs {missing}, which no installed package provides")
    return found


def elf_files(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.isfile(p) and not os.path.islink(p) and is_elf(p)]


def closure(packages: set[str], scan: list[Path]) -> set[str]:
    """The packages plus the owners of every library their ELF files (and ``scan``'s) load."""
    scanned = [str(p) for root in scan for p in root.rglob("*")]
    pending, seen_files, done = set(packages), set(), set()
    libraries: set[str] = set()
    for path in elf_files(scanned):
        libraries |= needed_libraries(path)
    while pending or libraries:
        for package in sorted(pending):
            done.add(package)
            for path in elf_files(package_files(package)):
                if path not in seen_files:
                    seen_files.add(path)
                    libraries |= needed_libraries(path)
        pending = set()
        for library in sorted(libraries):
            name = owner(library)
            if name is None:
                sys.exit(f"image_rootfs: no installed package owns {library}")
            if name not in done:
                pending.add(name)
        libraries = set()
    return done


def copy_entry(source: str, root: Path) -> None:
    target = Path(str(root) + source)
    info = os.lstat(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISDIR(info.st_mode):
        if target.is_symlink():  # a merged-/usr link: its target directory is made already
            return
        target.mkdir(exist_ok=True)
        os.chmod(target, stat.S_IMODE(info.st_mode))
    elif os.path.lexists(target):
        return
    elif stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def copy_tree(top: str, root: Path) -> None:
    copy_entry(top, root)
    if os.path.isdir(top) and not os.path.islink(top):
        for parent, dirs, files in os.walk(top):
            for name in sorted(dirs) + sorted(files):
                copy_entry(os.path.join(parent, name), root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the directory to fill (made, must be new)")
    parser.add_argument("--package", action="append", default=[], help="a package to include")
    parser.add_argument("--scan", action="append", default=[], type=Path, help="ELF files to serve")
    args = parser.parse_args()

    root: Path = args.root
    root.mkdir(parents=True)
    for name in MERGED_USR:
        if os.path.islink(f"/{name}"):
            link = os.readlink(f"/{name}")
            (root / name).parent.joinpath(link).mkdir(parents=True, exist_ok=True)
            os.symlink(link, root / name)

    packages = closure(set(args.package), args.scan)
    if forbidden := packages & FORBIDDEN:
        sys.exit(f"image_rootfs: these would come along and must not: {sorted(forbidden)}")
    for package in sorted(packages):
        for path in package_files(package):
            if os.path.lexists(path):  # the slim base's dpkg excludes docs and man pages
                copy_entry(path, root)
            if path.endswith(".py"):  # Debian byte-compiles its modules after unpacking them
                cached = Path(path).parent / "__pycache__"
                for pyc in sorted(cached.glob(Path(path).stem + ".*.pyc")):
                    copy_entry(str(pyc), root)
    for top in GENERATED:
        if os.path.lexists(top):
            copy_tree(top, root)

    status = root / "var/lib/dpkg/status.d"
    status.mkdir(parents=True)
    for package in sorted(packages):
        (status / package).write_text(query("--status", package))
    (root / "etc/passwd").write_text(USERS)
    (root / "etc/group").write_text(GROUPS)
    for name, mode in (("tmp", 0o1777), ("root", 0o700)):
        (root / name).mkdir(exist_ok=True)
        os.chmod(root / name, mode)
    print("image_rootfs: " + " ".join(sorted(packages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
