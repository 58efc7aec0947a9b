"""The RPM packaging: `rpm/build-srpm.sh` (what `make srpm` runs), both specs and both units.

The SRPMs are built for real. Binary RPMs need Fedora's build macros and are built there (mock,
COPR), so what they would contain is checked on the spec with `rpmspec`, given Fedora's values
for the path macros Debian's rpm leaves undefined.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import cortex

ROOT = Path(__file__).resolve().parents[2]
RPM = ROOT / "rpm"
UNIT_DIR = ROOT / "cortex" / "systemd"  # package data: `cortex systemd-unit` prints them too
VERSION = cortex.__version__
TARBALL = f"cortex-{VERSION}.tar.gz"
FEDORA_MACROS = {
    "_bindir": "/usr/bin",
    "_sysconfdir": "/etc",
    "_sharedstatedir": "/var/lib",
    "_unitdir": "/usr/lib/systemd/system",
    "_sysusersdir": "/usr/lib/sysusers.d",
}
# What each spec must ship: its unit, and its configs from conf/ (source -> installed path).
UNITS = {"cortex": "cortex.service", "helexa-neuron": "neuron.service"}
CONFIGS = {
    "cortex": {"conf/cortex.toml": "cortex.toml", "conf/models.toml": "models.toml"},
    "helexa-neuron": {"conf/neuron.toml": "neuron.toml"},
}
EXEC_START = {
    "cortex.service": "/usr/bin/cortex --role gateway --config /etc/cortex/cortex.toml",
    "neuron.service": "/usr/bin/cortex --role neuron --config /etc/cortex/neuron.toml",
}

needs_rpm = pytest.mark.skipif(
    shutil.which("rpmbuild") is None and not (os.geteuid() == 0 and shutil.which("apt-get")),
    reason="rpmbuild is not installed and cannot be (installing it needs root and apt-get)",
)


def _run(*args: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, timeout=600
    ).stdout


@pytest.fixture(scope="module")
def srpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both SRPMs, built by the script `make srpm` runs (it installs rpmbuild if missing)."""
    out = tmp_path_factory.mktemp("srpm")
    _run(RPM / "build-srpm.sh", out)
    return {name: out / f"{name}-{VERSION}-1.src.rpm" for name in UNITS}


def _spec_sections(name: str) -> dict[str, str]:
    """The macro-expanded spec split into sections ("%files -n python3-cortex" -> its body)."""
    defines = [arg for k, v in FEDORA_MACROS.items() for arg in ("--define", f"{k} {v}")]
    text = _run("rpmspec", "-P", *defines, RPM / f"{name}.spec")
    sections: dict[str, str] = {"preamble": ""}
    key = "preamble"
    header = re.compile(
        r"^%(package|description|prep|build|install|check|files|changelog|"
        r"generate_buildrequires|pre|post|preun|postun)\b"
    )
    for line in text.splitlines():
        if header.match(line):
            key = re.sub(r"\s+-f\s+\S+", "", line.strip())
            sections[key] = ""
        else:
            sections[key] += line + "\n"
    return sections


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys like DeviceAllow may repeat)."""
    unit: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in (UNIT_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def _srpm_tarball_names(srpm: Path) -> list[str]:
    payload = subprocess.run(
        ["rpm2archive", "-"], input=srpm.read_bytes(), capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(payload)) as outer:
        member = outer.extractfile(f"./{TARBALL}")
        assert member is not None
        with tarfile.open(fileobj=io.BytesIO(member.read())) as inner:
            return inner.getnames()


# --------------------------------------------------------------------------- source RPMs


@pytest.mark.slow
@needs_rpm
@pytest.mark.parametrize("name", UNITS)
def test_srpm_carries_spec_tarball_unit(srpms: dict[str, Path], name: str) -> None:
    files = set(_run("rpm", "-qpl", srpms[name]).split())
    expected = {f"{name}.spec", TARBALL, UNITS[name]}
    if name == "cortex":
        expected.add("cortex.sysusers")
    assert files == expected


@pytest.mark.slow
@needs_rpm
@pytest.mark.parametrize("name", UNITS)
def test_srpm_header_is_noarch_at_the_package_version(srpms: dict[str, Path], name: str) -> None:
    header = _run("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH} %{LICENSE}", srpms[name])
    assert header == f"{name} {VERSION} noarch Apache-2.0"
    build_requires = _run("rpm", "-qp", "--requires", srpms[name]).splitlines()
    assert "python3-devel >= 3.11" in build_requires
    assert "systemd-rpm-macros" in build_requires


@pytest.mark.slow
@needs_rpm
def test_tarball_is_the_working_tree_with_configs_and_without_ignored_files(
    srpms: dict[str, Path],
) -> None:
    names = _srpm_tarball_names(srpms["cortex"])
    top = f"cortex-{VERSION}"
    assert all(n == top or n.startswith(top + "/") for n in names)
    paths = {n.removeprefix(top + "/") for n in names if n != top}
    wanted = {src for conf in CONFIGS.values() for src in conf}
    wanted |= {
        "setup.cfg",
        "harnesses/transformers/pyproject.toml",
        "cortex/systemd/cortex.service",
    }
    assert wanted <= paths, f"missing from the tarball: {sorted(wanted - paths)}"
    junk = {p for p in paths if re.search(r"(^|/)(\.git|\.venv|build|__pycache__)(/|$)", p)}
    assert not junk
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "-C", ROOT, "check-ignore", "--stdin"],
            input="\n".join(sorted(paths)),
            capture_output=True,
            text=True,
        ).stdout.split()
        assert not ignored, f".gitignore'd files in the tarball: {ignored[:10]}"


# --------------------------------------------------------------------------- binary RPMs
# These use rpmspec; requesting `srpms` first installs the rpm tools where they are missing.


@needs_rpm
@pytest.mark.usefixtures("srpms")
def test_specs_build_noarch_packages_at_cortex_version() -> None:
    packages = {
        name: _run("rpmspec", "-q", "--qf", "%{NAME} %{VERSION} %{ARCH}\n", RPM / f"{name}.spec")
        for name in UNITS
    }
    assert packages["cortex"].split("\n") == [
        f"cortex {VERSION} noarch",
        f"python3-cortex {VERSION} noarch",
        "",
    ]
    assert packages["helexa-neuron"] == f"helexa-neuron {VERSION} noarch\n"


@needs_rpm
@pytest.mark.usefixtures("srpms")
def test_runtime_requires_python_311_and_the_matching_application() -> None:
    app = f"python3-cortex = {VERSION}-1"
    gateway = _run("rpmspec", "-q", "--requires", RPM / "cortex.spec").splitlines()
    neuron = _run("rpmspec", "-q", "--requires", RPM / "helexa-neuron.spec").splitlines()
    assert app in gateway and "python3 >= 3.11" in gateway
    assert app in neuron and "python3 >= 3.11" in neuron


@needs_rpm
@pytest.mark.usefixtures("srpms")
@pytest.mark.parametrize("name", UNITS)
def test_unit_and_configs_are_packaged(name: str) -> None:
    sections = _spec_sections(name)
    files = sections["%files"]
    assert f"/usr/lib/systemd/system/{UNITS[name]}" in files.split()
    for source, installed in CONFIGS[name].items():
        target = f"/etc/cortex/{installed}"
        assert f"%config(noreplace) %attr(0640,root,cortex) {target}" in files
        assert re.search(
            rf"\s{re.escape(source)}\s+\S*{re.escape(target)}$", sections["%install"], re.M
        )
    assert f"%systemd_post {UNITS[name]}" in sections["%post"]


@needs_rpm
@pytest.mark.usefixtures("srpms")
def test_application_package_owns_command_user_and_model_root() -> None:
    files = _spec_sections("cortex")["%files -n python3-cortex"]
    assert "/usr/bin/cortex" in files.split()
    assert "/usr/lib/sysusers.d/cortex.conf" in files.split()
    assert "%dir %attr(0750,cortex,cortex) /var/lib/cortex/models" in files
    assert "%sysusers_create_compat" in _spec_sections("cortex")["%pre -n python3-cortex"]


# --------------------------------------------------------------------------- systemd units


@pytest.mark.parametrize("unit", EXEC_START)
def test_unit_runs_cortex_as_its_user_with_hardening(unit: str) -> None:
    service = _unit(unit)["Service"]
    assert service["ExecStart"] == [EXEC_START[unit]]
    assert service["User"] == ["cortex"]
    assert service["Restart"] == ["on-failure"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelModules": "yes",
    }.items():
        assert service[key] == [value], key
    assert "/var/lib/cortex" in " ".join(service["ReadWritePaths"]).split()
    assert _unit(unit)["Install"]["WantedBy"] == ["multi-user.target"]


def test_sysusers_creates_the_unit_user_with_home_in_the_state_dir() -> None:
    lines = [
        line.split()
        for line in (RPM / "cortex.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [(f[0], f[1], f[-2]) for f in lines] == [("u", "cortex", "/var/lib/cortex")]


def test_gateway_unit_has_no_devices_and_neuron_unit_keeps_gpus() -> None:
    gateway, neuron = _unit("cortex.service")["Service"], _unit("neuron.service")["Service"]
    assert gateway["PrivateDevices"] == ["yes"]
    assert neuron.get("PrivateDevices", ["no"]) == ["no"]
    assert neuron.get("DevicePolicy", ["auto"]) == ["auto"]
    assert {"video", "render"} <= set(" ".join(neuron["SupplementaryGroups"]).split())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """Verified in a scratch root holding the system's units and stand-ins for /usr/bin/cortex
    and /usr/bin/kill, since verify also checks that ExecStart's and ExecReload's binaries
    exist."""
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "usr/bin").mkdir(parents=True)
    for binary in ("cortex", "kill"):
        (tmp_path / "usr/bin" / binary).write_text("#!/bin/sh\n")
        (tmp_path / "usr/bin" / binary).chmod(0o755)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    for unit in EXEC_START:
        shutil.copy(UNIT_DIR / unit, tmp_path / "etc/systemd/system" / unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}"]
        + [f"/etc/systemd/system/{unit}" for unit in EXEC_START],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
