"""Discovery of the models a user already has: the Hugging Face cache and Ollama's store, as
fakes laid out the way those programs write them (tests/fake_stores.py). No weights are read:
a GGUF is known by its magic bytes, a snapshot by its files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cortex.config import NeuronSection, SamplingDefaults
from cortex.errors import InvalidRequest
from cortex.neuron.sources import resolve_source
from cortex.neuron.stores import RESCAN_S, Stores, huggingface, ollama
from tests.fake_stores import REVISION, add_hf_snapshot, add_ollama_model

GGUF = b"GGUF" + b"\x03\x00\x00\x00" + bytes(64)  # the magic and a version: enough to be found
CAUSAL = {"architectures": ["Qwen3ForCausalLM"], "max_position_embeddings": 4096}


def model_files(folder: Path, config: dict[str, object] = CAUSAL, **files: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    contents = {"model.safetensors": b"w" * 100, "tokenizer.json": b"{}"} | files
    for name, data in contents.items():
        if data:
            (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    hub = tmp_path / "hub"
    add_hf_snapshot(hub, "org/tiny", model_files(tmp_path / "tiny"))
    return hub


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "ollama"
    gguf = tmp_path / "w.gguf"
    gguf.write_bytes(GGUF)
    add_ollama_model(root, "tiny:latest", gguf, params={"temperature": 0.3, "repeat_penalty": 1.1})
    add_ollama_model(root, "me/tiny:q4", gguf)
    return root


def test_a_complete_hf_snapshot_is_offered_by_its_repository_id(hub: Path) -> None:
    [found] = huggingface.models(hub)
    assert (found.id, found.source, found.store, found.format) == (
        "org/tiny", "hf-cache:org/tiny", "huggingface", "safetensors",
    )  # fmt: skip
    assert (found.bytes, found.context_length) == (100, 4096)


@pytest.mark.parametrize(
    ("config", "files"),
    [
        (CAUSAL, {"tokenizer.json": b""}),  # no tokenizer
        (CAUSAL, {"model.safetensors": b"", "pytorch_model.bin": b"p"}),  # pickled only
        ({"architectures": ["BertModel"]}, {}),  # not a causal LM
        (CAUSAL, {"model.safetensors.index.json": b'{"weight_map": {"a": "gone.safetensors"}}'}),
    ],
    ids=["no-tokenizer", "pickled-only", "not-causal", "missing-shard"],
)
def test_hf_snapshots_that_cannot_load_are_skipped(
    tmp_path: Path, config: dict[str, object], files: dict[str, bytes]
) -> None:
    hub = tmp_path / "hub"
    add_hf_snapshot(hub, "org/bad", model_files(tmp_path / "bad", config, **files))
    assert list(huggingface.models(hub)) == []
    assert huggingface.snapshot(hub, "org/bad") is None


def test_refs_main_names_the_snapshot(tmp_path: Path, hub: Path) -> None:
    newer = add_hf_snapshot(hub, "org/tiny", model_files(tmp_path / "v2"), revision="f" * 40)
    assert newer.stat().st_mtime >= (newer.parent / REVISION).stat().st_mtime
    (hub / "models--org--tiny" / "refs" / "main").write_text(REVISION)
    assert huggingface.snapshot(hub, "org/tiny") == newer.parent / REVISION


def test_ollama_models_are_named_as_ollama_lists_them(store: Path) -> None:
    found = {m.id: m for m in ollama.models(store)}
    assert sorted(found) == ["me/tiny:q4", "tiny:latest"]
    tiny = found["tiny:latest"]
    assert (tiny.source, tiny.store, tiny.format, tiny.bytes) == (
        "ollama:tiny:latest", "ollama", "gguf", len(GGUF),
    )  # fmt: skip
    assert tiny.sampling == SamplingDefaults(temperature=0.3, repetition_penalty=1.1)
    assert found["me/tiny:q4"].sampling == SamplingDefaults()


def test_ollama_models_that_cannot_load_are_skipped(tmp_path: Path, store: Path) -> None:
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"PK\x03\x04 a pickle in a zip")
    add_ollama_model(store, "pickled:latest", not_gguf)
    gguf = tmp_path / "w.gguf"
    projector = ("application/vnd.ollama.image.projector",)
    add_ollama_model(store, "vision:latest", gguf, extra_layers=projector)
    other = tmp_path / "other.gguf"
    other.write_bytes(GGUF + b"other")  # its own blob, removed below
    gone = add_ollama_model(store, "gone:latest", other)
    model_layer = json.loads(gone.read_text())["layers"][0]
    (store / "blobs" / model_layer["digest"].replace(":", "-")).unlink()
    assert sorted(m.id for m in ollama.models(store)) == ["me/tiny:q4", "tiny:latest"]


def test_bad_ollama_params_are_not_used(tmp_path: Path, store: Path) -> None:
    add_ollama_model(store, "hot:latest", tmp_path / "w.gguf", params={"temperature": 9})
    hot = next(m for m in ollama.models(store) if m.id == "hot:latest")
    assert hot.sampling == SamplingDefaults()


def stores(hub: Path | None = None, store: Path | None = None) -> Stores:
    roots = {"huggingface": hub, "ollama": store}
    return Stores({kind: root for kind, root in roots.items() if root is not None})  # type: ignore[misc]


def test_a_store_source_is_located_and_passes_the_root_checks(hub: Path, store: Path) -> None:
    found = stores(hub, store)
    for source in ("hf-cache:org/tiny", "ollama:tiny", "ollama:tiny:latest", "ollama:me/tiny:q4"):
        path = resolve_source(found.locate(source), found.roots, allow_hub_download=False)
        assert Path(path).is_relative_to(hub.resolve()) or Path(path).is_relative_to(
            store.resolve()
        )
    snapshot = resolve_source(
        found.locate("hf-cache:org/tiny"), found.roots, allow_hub_download=False
    )
    assert Path(snapshot) == (hub / "models--org--tiny" / "snapshots" / REVISION).resolve()
    blob = Path(resolve_source(found.locate("ollama:tiny"), found.roots, allow_hub_download=False))
    assert blob.name.startswith("sha256-") and blob.read_bytes() == GGUF


def test_other_sources_are_left_alone(hub: Path) -> None:
    assert stores(hub).locate("Qwen3-8B") == "Qwen3-8B"
    assert stores(hub).locate("hf:org/name") == "hf:org/name"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ollama:tiny", 'not discovered on this neuron (neuron.toml: discover = ["ollama"])'),
        ("hf-cache:org/none", "holds no a complete safetensors snapshot"),
        ("hf-cache:../../etc", "holds no"),
        ("hf-cache:org/../../x", "holds no"),
    ],
)  # fmt: skip
def test_bad_store_sources_are_refused(hub: Path, source: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as err:
        stores(hub).locate(source)
    assert err.value.param == "source"


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b/c/d:e", "tiny:..", ".hidden", "x:"])
def test_ollama_names_cannot_leave_the_manifests(store: Path, name: str) -> None:
    with pytest.raises(InvalidRequest, match="holds no"):
        stores(store=store).locate("ollama:" + name)


def test_a_gguf_without_a_suffix_is_known_by_its_magic(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "blob").write_bytes(GGUF)
    (root / "other").write_bytes(b"not a model")
    assert resolve_source("blob", [str(root)], allow_hub_download=False) == str(root / "blob")
    with pytest.raises(InvalidRequest, match="not a directory or GGUF file"):
        resolve_source("other", [str(root)], allow_hub_download=False)


def test_a_snapshot_linking_outside_the_store_is_refused(tmp_path: Path, hub: Path) -> None:
    snapshot = hub / "models--org--tiny" / "snapshots" / REVISION
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"w")
    (snapshot / "extra.safetensors").symlink_to(outside)
    found = stores(hub)
    with pytest.raises(InvalidRequest, match="links outside"):
        resolve_source(found.locate("hf-cache:org/tiny"), found.roots, allow_hub_download=False)


def test_scans_are_kept_for_rescan_s(tmp_path: Path, store: Path) -> None:
    now = [1000.0]
    found = Stores({"ollama": store}, clock=lambda: now[0])
    assert len(found.discovered()) == 2
    add_ollama_model(store, "new:latest", tmp_path / "w.gguf")
    now[0] += RESCAN_S / 2
    assert len(found.discovered()) == 2
    now[0] += RESCAN_S / 2
    assert "new:latest" in {m.id for m in found.discovered()}


def test_roots_come_from_the_environment_unless_configured(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "OLLAMA_MODELS": str(tmp_path / "ol")}
    both = NeuronSection(discover=("huggingface", "ollama"))
    assert Stores.from_config(both, env).roots == [
        str(tmp_path / "hf" / "hub"),
        str(tmp_path / "ol"),
    ]
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    assert Stores.from_config(both, env).roots[0] == str(tmp_path / "hub")
    configured = NeuronSection(discover=("ollama",), ollama_models=str(tmp_path / "mine"))
    assert Stores.from_config(configured, env).roots == [str(tmp_path / "mine")]
    assert Stores.from_config(NeuronSection(), env).roots == []


def test_a_missing_store_offers_nothing(tmp_path: Path) -> None:
    found = Stores({"huggingface": tmp_path / "no-hub", "ollama": tmp_path / "no-ollama"})
    assert found.discovered() == []
