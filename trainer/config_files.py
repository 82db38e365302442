"""Config files by path or by name: the configs shipped with sonotext are usable from any directory.

    resolve_config_file("my_run.yaml")                 # a file here: used as is
    resolve_config_file("debug")                       # the shipped configs/debug.yaml
    resolve_config_file("configs/debug.yaml")          # ./configs/debug.yaml if it exists, else the shipped one
    resolve_config_file("configs:debug.yaml")          # always the shipped one
    resolve_config_file("zero2", folders=("deepspeed",))   # configs/deepspeed/zero2.json

The shipped configs are the repository's `configs/` folder. A checkout (and an editable install) reads them
there; a built wheel carries the same files as package data in `trainer/configs/` (setup.cfg maps the folder,
so there is no second copy to keep in sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.config import ConfigError

SHIPPED_PREFIX = "configs:"
SUFFIXES = (".yaml", ".yml", ".json")


def shipped_dir() -> Path | None:
    """The folder of the shipped configs: trainer/configs/ in an installed wheel, configs/ in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / "configs").is_dir() and (checkout / "setup.cfg").is_file():
        return checkout / "configs"
    return None


def shipped_names() -> list[str]:
    """Every shipped config as `folder/name.ext` relative to the configs folder, sorted."""
    root = shipped_dir()
    if root is None:
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in SUFFIXES)


def shipped_config(name: str, folders: Sequence[str] = ("",)) -> Path | None:
    """The shipped file called `name` (suffix optional), looked up in each of `folders` in turn; None if absent."""
    root = shipped_dir()
    if root is None or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    for folder in folders:
        base = root / folder / name
        for candidate in (base, *(base.with_name(base.name + s) for s in SUFFIXES)):
            if candidate.is_file():
                return candidate
    return None


def resolve_config_file(ref: str | Path, folders: Sequence[str] = ("",), what: str = "config file") -> Path:
    """A config file from a path or a shipped name.

    Order: `configs:NAME` is always the shipped config; otherwise an existing file wins; otherwise a relative
    reference names a shipped config, with a leading `configs/` dropped (so `configs/debug.yaml` in the docs and in
    configs that name other configs works from anywhere) and looked up in `folders` (`""` is the top level).
    """
    text = str(ref)
    if text.startswith(SHIPPED_PREFIX):
        name = text[len(SHIPPED_PREFIX) :]
        found = shipped_config(name, folders)
        if found is None:
            raise ConfigError(f"{what} not found: no shipped config {name!r} ({_available(folders)})")
        return found
    path = Path(text)
    if path.is_file():
        return path
    if not path.is_absolute():
        parts = path.parts
        name = Path(*parts[1:]).as_posix() if len(parts) > 1 and parts[0] == "configs" else text
        found = shipped_config(name, folders)
        if found is not None:
            return found
    raise ConfigError(
        f"{what} not found: {text} (no such file, and no shipped config of that name; {_available(folders)})"
    )


def _available(folders: Sequence[str]) -> str:
    """The shipped names a reference could have meant: those in `folders`."""
    wanted = {Path(f).as_posix() if f else "." for f in folders}
    names = [n for n in shipped_names() if Path(n).parent.as_posix() in wanted]
    if not names:
        return "no shipped configs found"
    return "shipped: " + ", ".join(names)
