"""The operator docs cannot silently fall behind the code.

Every key of every config Struct must appear (in backticks) in docs/configuration.md, and every
route either role registers must appear in docs/api.md. Apps are built, never started.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import msgspec
import pytest

from cortex import config
from cortex.gateway.app import make_app as make_gateway
from cortex.neuron.app import make_app as make_neuron

DOCS = Path(__file__).resolve().parent.parent / "docs"

CONFIG_STRUCTS = [
    cls
    for _, cls in inspect.getmembers(config, inspect.isclass)
    if issubclass(cls, config._Strict) and cls is not config._Strict
]


def test_every_config_struct_is_covered() -> None:
    names = {cls.__name__ for cls in CONFIG_STRUCTS}
    assert {"GatewaySection", "EvictionSection", "ModelEntry", "NeuronSection"} <= names


@pytest.mark.parametrize("struct", CONFIG_STRUCTS, ids=lambda cls: cls.__name__)
def test_config_keys_documented(struct: type[msgspec.Struct]) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    forms = ("`{}`", "[{}]", "[[{}]]")  # a key, a table, an array of tables
    missing = [
        f.encode_name
        for f in msgspec.structs.fields(struct)
        if not any(form.format(f.encode_name) in text for form in forms)
    ]
    assert not missing, f"{struct.__name__} keys missing from docs/configuration.md: {missing}"


def _paths(app: object) -> set[str]:
    routes = app.router.routes()  # type: ignore[attr-defined]
    return {r.resource.canonical for r in routes if r.resource is not None}


def test_routes_documented() -> None:
    gateway = make_gateway(config.CortexConfig(), config.ModelsConfig())
    neuron = make_neuron(config.NeuronConfig(), config.ModelsConfig(), {})
    paths = _paths(gateway) | _paths(neuron)
    assert "/v1/chat/completions" in paths and "/models/load" in paths
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = sorted(p for p in paths if f"`{p}`" not in text and f" {p}`" not in text)
    assert not missing, f"routes missing from docs/api.md: {missing}"


def _worked_example() -> str:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    start = text.index("## Worked example")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_worked_example_configs_parse_and_hold_together(tmp_path: Path) -> None:
    """Each TOML block of the Qwen3 example loads as the file it stands for; every model it
    defines is downloaded by a command above it; the gateway stays on loopback (behind TLS)."""
    section = _worked_example()
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    kinds = {"[neuron]": config.load_neuron, "[gateway]": config.load_cortex}
    parsed: dict[str, object] = {}
    for block in blocks:
        first = block.lstrip().split("\n", 1)[0]
        loader = kinds.get(first, config.load_models)
        path = tmp_path / "example.toml"
        path.write_text(block)
        parsed[first] = loader(path)
    gateway = parsed["[gateway]"]
    models = parsed["[[models]]"]
    assert isinstance(gateway, config.CortexConfig) and isinstance(models, config.ModelsConfig)
    assert gateway.gateway.listen.startswith("127.0.0.1:")
    downloaded = set(re.findall(r"--local-dir /var/lib/cortex/models/(\S+)", section))
    assert {m.source for m in models.models} <= downloaded


def test_docs_install_the_harness_from_a_checkout_not_pypi() -> None:
    """cortex-harness-transformers is not on PyPI: no doc may tell anyone to pip install it."""
    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        text = page.read_text(encoding="utf-8")
        assert "pip install 'cortex-harness-transformers" not in text, page.name
        assert "pip install cortex-harness-transformers" not in text, page.name


ROOT = DOCS.parent
# The package design notes the docs guard covers beside docs/.
PACKAGE_READMES = [
    ROOT / "cortex" / "gateway" / "README.md",
    ROOT / "cortex" / "neuron" / "README.md",
    ROOT / "harnesses" / "transformers" / "README.md",
    ROOT / "harnesses" / "transformers" / "cortex_transformers" / "README.md",
    ROOT / "harnesses" / "example" / "README.md",
]
# A path ending in .py, its folders and stem possibly brace lists: `gateway/{a,b}.py`.
MODULE_PATH = re.compile(
    r"(?<![\w./{}-])((?:[\w.-]+/|\{[\w.,/-]+\}/)*(?:[\w-]+|\{[\w,.-]+\})\.py)\b"
)


def _expand(path: str) -> list[str]:
    """`gateway/{a,b}.py` -> [`gateway/a.py`, `gateway/b.py`]."""
    match = re.search(r"\{([^}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for alt in match.group(1).split(",") for p in _expand(head + alt + tail)]


def _missing_modules(page: Path) -> list[str]:
    """Module paths named on ``page`` that exist neither beside it, nor from the repository
    root, nor under cortex/ (docs write `gateway/loads.py` for cortex/gateway/loads.py)."""
    bases = (page.parent, ROOT, ROOT / "cortex")
    text = page.read_text().replace("\\_", "_")  # Markdown's escaped underscores: \_\_init\_\_
    named = {p for found in MODULE_PATH.findall(text) for p in _expand(found)}
    return sorted(p for p in named if not any((base / p).is_file() for base in bases))


@pytest.mark.parametrize(
    "page",
    [*sorted(DOCS.glob("*.md")), ROOT / "README.md", *PACKAGE_READMES],
    ids=lambda page: page.relative_to(ROOT).as_posix(),
)
def test_every_module_a_doc_names_exists(page: Path) -> None:
    assert not _missing_modules(page), f"{page.relative_to(ROOT)} names missing modules"


def test_a_renamed_module_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    (tmp_path / "here.py").write_text("")
    page.write_text(
        "See `here.py`, `cortex/gateway/{snapshot,state}.py`, gateway/loads.py and "
        "cortex/neuron/stores/\\_\\_init\\_\\_.py; not tests/e2e/nowhere.py.\n"
    )
    assert _missing_modules(page) == ["cortex/gateway/state.py", "tests/e2e/nowhere.py"]
