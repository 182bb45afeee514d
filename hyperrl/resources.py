"""The folders of built-in YAMLs: family files (``envs``) and training configs (``configs``).

Both folders live at the top level of the repo. ``pyproject.toml`` maps them into the
package, so a wheel (built from the repo or from the sdist) installs them as
``hyperrl/envs`` and ``hyperrl/configs``. A source tree or an editable install runs the
package from the repo, whose ``hyperrl/`` has no such folders: there they are the
top-level folders beside it.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Literal

__all__ = ["builtin_dir", "builtin_families_dir", "list_families"]


def builtin_dir(kind: Literal["envs", "configs"]) -> Path:
    """The folder of built-in ``kind`` YAMLs that belongs to the imported ``hyperrl``.

    The folder is found from the package actually imported rather than by importing
    ``hyperrl.envs``: another checkout's editable install could answer that import and hand
    this code its own YAMLs.
    """
    # files() of a package installed as files (pip never installs one zipped) is a real folder.
    package = Path(str(importlib.resources.files("hyperrl")))
    packaged = package / kind
    return packaged if packaged.is_dir() else package.parent / kind


def builtin_families_dir() -> Path:
    """The folder of built-in family YAMLs: $HYPERRL_ENVS_DIR when set, else the shipped ``envs``."""
    override = os.environ.get("HYPERRL_ENVS_DIR")
    if override:
        return Path(override)
    return builtin_dir("envs")


def list_families() -> list[str]:
    """Names of the built-in families, sorted."""
    d = builtin_families_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
