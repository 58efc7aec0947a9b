"""The systemd units, shipped in the package for hosts installed with pip into a venv.

``cortex/systemd/{cortex,neuron}.service`` are the one copy of each unit: the RPMs install them
as they are (rpm/build-srpm.sh), and ``cortex systemd-unit gateway|neuron`` prints one with its
``ExecStart`` naming this installation's own ``cortex`` script and the config file, so that
``cortex systemd-unit neuron | sudo tee /etc/systemd/system/neuron.service`` is the whole step
(docs/operations.md).
"""

from __future__ import annotations

import shutil
import sys
from importlib.resources import files
from pathlib import Path
from typing import Literal

Role = Literal["gateway", "neuron"]
UNIT_FILE: dict[Role, str] = {"gateway": "cortex.service", "neuron": "neuron.service"}
DEFAULT_CONFIG: dict[Role, Path] = {
    "gateway": Path("/etc/cortex/cortex.toml"),
    "neuron": Path("/etc/cortex/neuron.toml"),
}
# The units' ProtectHome=yes hides these from the service: a venv under them cannot start.
HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"))


class NoScript(Exception):
    """No ``cortex`` script beside this Python nor on PATH; the message says so."""


def packaged(role: Role) -> str:
    """The unit as shipped (``ExecStart=/usr/bin/cortex ...``, the RPMs' path)."""
    return (files("cortex") / "systemd" / UNIT_FILE[role]).read_text(encoding="utf-8")


def cortex_script() -> Path:
    """This installation's ``cortex``: the script beside the running Python (a venv's bin/,
    not resolved through its symlink), else the one on PATH. Raises NoScript."""
    beside = Path(sys.executable).absolute().parent / "cortex"
    if beside.is_file():
        return beside
    found = shutil.which("cortex")
    if found is None:
        raise NoScript(f"no cortex script in {beside.parent} nor on PATH")
    return Path(found).absolute()


def render(role: Role, script: Path, config: Path) -> str:
    """The unit with ``ExecStart`` running ``script`` on ``config`` (both absolute)."""
    exec_start = f"ExecStart={script} --role {role} --config {config}"
    lines = packaged(role).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(starts) != 1:  # the packaged units have exactly one; a test holds them to it
        raise ValueError(f"{UNIT_FILE[role]} has {len(starts)} ExecStart lines, not 1")
    lines[starts[0]] = exec_start
    header = f"# Written by `{script} systemd-unit {role}`."
    return "\n".join([header, *lines]) + "\n"


def hidden_by_protect_home(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in HIDDEN)
