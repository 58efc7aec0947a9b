from __future__ import annotations

from pathlib import Path

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.sources import resolve_source


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "model.safetensors").write_bytes(b"")
    (root / "pickled").mkdir()
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"")
    return root


def resolve(source: str, root: Path, hub: bool = False) -> str:
    return resolve_source(source, [str(root)], allow_hub_download=hub)


def test_relative_name_resolves_in_a_root(root: Path) -> None:
    assert resolve("tiny", root) == str((root / "tiny").resolve())


def test_first_root_containing_the_name_wins(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "tiny").mkdir(parents=True)
    (other / "tiny" / "w.safetensors").write_bytes(b"")
    found = resolve_source("tiny", [str(other), str(root)], allow_hub_download=False)
    assert found == str((other / "tiny").resolve())


def test_absolute_path_inside_a_root_is_accepted(root: Path) -> None:
    assert resolve(str(root / "tiny"), root) == str((root / "tiny").resolve())


@pytest.mark.parametrize("source", ["../outside", "tiny/../../outside", "/etc", "/"])
def test_paths_outside_the_roots_are_rejected(root: Path, source: str) -> None:
    (root.parent / "outside").mkdir()
    (root.parent / "outside" / "w.safetensors").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="model_roots"):
        resolve(source, root)


def test_symlink_escaping_the_root_is_rejected(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "w.safetensors").write_bytes(b"")
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="model_roots"):
        resolve("link", root)


def test_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias").symlink_to(root / "tiny")
    assert resolve("alias", root) == str((root / "tiny").resolve())


def test_directory_without_safetensors_is_rejected(root: Path) -> None:
    with pytest.raises(InvalidRequest, match="safetensors"):
        resolve("pickled", root)


def test_missing_directory_is_rejected(root: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve("nope", root)
    assert info.value.param == "source"


def test_hub_source_refused_unless_allowed(root: Path) -> None:
    with pytest.raises(InvalidRequest, match="hub downloads are disabled"):
        resolve("hf:Qwen/Qwen3-0.6B", root)
    assert resolve("hf:Qwen/Qwen3-0.6B", root, hub=True) == "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize("source", ["hf:noslash", "hf:a/b/c", "hf:../x", "hf:/x"])
def test_malformed_hub_ids_are_rejected(root: Path, source: str) -> None:
    with pytest.raises(InvalidRequest, match="hf:org/name"):
        resolve(source, root, hub=True)


def test_a_gguf_file_inside_a_root_is_a_source(root: Path) -> None:
    (root / "smol").mkdir()
    (root / "smol" / "model.Q4_1.gguf").write_bytes(b"GGUF")
    assert resolve("smol/model.Q4_1.gguf", root) == str(
        (root / "smol" / "model.Q4_1.gguf").resolve()
    )


def test_a_file_that_is_not_gguf_is_refused(root: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"directory or GGUF file"):
        resolve("tiny/model.safetensors", root)


def test_a_gguf_symlinked_from_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF")
    (root / "linked.gguf").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="model_roots"):
        resolve("linked.gguf", root)


def test_a_weight_file_symlinked_from_outside_the_roots_is_refused(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"")
    (root / "tiny" / "extra.safetensors").symlink_to(outside)
    with pytest.raises(InvalidRequest, match=r"extra\.safetensors links outside"):
        resolve("tiny", root)


@pytest.mark.parametrize("source", ["a" * 4000, "a/" * 1900 + "b", "loop-a", "x\x00y"])
def test_unusable_paths_are_a_400_not_an_os_error(root: Path, source: str) -> None:
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        resolve_source(source, [str(root)], allow_hub_download=False)
