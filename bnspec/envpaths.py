"""Where the converter environments live, and each family's interpreter: stdlib only, so that the
result cache (:mod:`bnspec.cache`) and the conversion paths can ask without the build machinery of
:mod:`bnspec.envs` (which builds them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ENVS_VAR = "BNSPEC_ENVS"
STAMP = ".bnspec-setup"  # also the Makefile's target for each environment


def checkout() -> Path | None:
    """The source checkout bnspec runs from (an editable install whose checkout has ``envs/``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "envs").is_dir() else None


def envs_root() -> Path:
    """The folder holding ``FAMILY/.venv``: ``BNSPEC_ENVS``; else a checkout's ``envs/``; else,
    inside one of the environments, the folder it lives in (they hold no platformdirs); else
    ``platformdirs.user_data_dir("bnspec")/envs``."""
    if os.environ.get(ENVS_VAR):
        return Path(os.environ[ENVS_VAR]).absolute()
    source = checkout()
    if source is not None:
        return source / "envs"
    own = _own_root(Path(sys.prefix))
    if own is not None:
        return own
    import platformdirs

    return Path(platformdirs.user_data_dir("bnspec")) / "envs"


def _own_root(prefix: Path) -> Path | None:
    try:
        stamp = json.loads((prefix / STAMP).read_text())
    except (OSError, ValueError):
        return None
    family = stamp.get("family") if isinstance(stamp, dict) else None
    return prefix.parent.parent if prefix.name == ".venv" and family == prefix.parent.name else None


def venv_of(family: str, root: Path | None = None) -> Path:
    return (envs_root() if root is None else root) / family / ".venv"


def env_python(family: str, root: Path | None = None) -> Path:
    """The interpreter of converter family ``family`` (it may not exist yet)."""
    return venv_of(family, root) / "bin" / "python"
