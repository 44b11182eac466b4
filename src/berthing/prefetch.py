"""Cold start with a cold page cache: `berthing serve` asks the kernel for the files its last start read, in parallel.

A start reads ~700 files (Python modules, native libraries, the model). When the page cache has dropped them (a
reboot, a new container, or memory reclaim on an idle machine), importing them one by one waits on the disk for each:
~0.4 s of a 1 s start. Each start records the files it read (`record`); the next one (`start`) hands that list to a
small helper process that asks the kernel to read them all ahead (posix_fadvise WILLNEED) while the server imports.
A hint only: a missing, stale or unreadable list changes nothing but the time. This module imports the standard
library only, so the helper starts before the heavy imports do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

LIST_NAME = "startup-files.txt"
MAX_FILES = 5000  # a list longer than any real start is not ours to act on

# What the helper runs (python -I -S: no site, no user paths; nothing imported but os, stat and sys). Regular
# files only: a device or FIFO in the list is skipped, never read.
_HELPER = """
import os, stat, sys
with open(sys.argv[1], encoding="utf-8") as fh:
    paths = fh.read().splitlines()
for path in paths[: int(sys.argv[2])]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the helper
    except OSError:
        continue
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
"""


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """berthing's cache folder when neither a flag nor the TOML file names one."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "berthing"


def list_path(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Path:
    """Where the list of a `berthing serve` with these arguments lives: the cache folder of --cache-dir, else of
    BERTHING_CACHE_DIR, else the default (a cache folder named only in a TOML file gets its list in the default one)."""
    cache = None
    for i, arg in enumerate(argv):
        if arg == "--cache-dir" and i + 1 < len(argv):
            cache = argv[i + 1]
        elif arg.startswith("--cache-dir="):
            cache = arg.split("=", 1)[1]
    cache = cache or environ.get("BERTHING_CACHE_DIR")
    return (Path(cache) if cache else default_cache_dir(environ)) / LIST_NAME


def start(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> subprocess.Popen[bytes] | None:
    """Launch the read-ahead helper on the list a previous start left; None when there is none or it cannot run."""
    path = list_path(argv, environ)
    if not path.is_file() or not hasattr(os, "posix_fadvise"):
        return None
    import subprocess

    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, str(path), str(MAX_FILES)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        )
    except OSError:
        return None


def startup_files(extra: Iterable[Path] = (), limit: int = MAX_FILES) -> list[str]:
    """The files this process has read to get here: its modules' bytecode (or source), every mapped library, and
    `extra` (the models' artifact files), each once, in the order they were first needed; at most `limit`, the
    models' files always among them."""
    found: dict[str, None] = {}
    for module in list(sys.modules.values()):
        for attr in ("__cached__", "__file__"):
            name = getattr(module, attr, None)
            if isinstance(name, str) and os.path.isfile(name):
                found[os.path.abspath(name)] = None
                break
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                name = fields[5].rstrip("\n") if len(fields) == 6 else ""
                if name.startswith("/") and os.path.isfile(name):  # libraries, not /dev/zero or deleted files
                    found[name] = None
    except OSError:  # not Linux: modules and models only
        pass
    models = list(dict.fromkeys(str(path.resolve()) for path in extra if path.is_file()))
    taken = set(models)
    others = [name for name in found if name not in taken]
    return others[: max(0, limit - len(models))] + models  # over the limit, modules give way to the models' files


def record(argv: Sequence[str], extra: Iterable[Path] = (), environ: Mapping[str, str] = os.environ) -> Path | None:
    """Write the list for the next start (only when it changed); None when the cache folder cannot take it."""
    path = list_path(argv, environ)
    text = "\n".join(startup_files(extra)) + "\n"
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None
    return path
