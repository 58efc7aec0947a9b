"""Config files: the examples parse, defaults hold, and every bad value is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cortex import config
from cortex.errors import ConfigError
from cortex.protocol.neuron import LoadRequest

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_example_cortex_toml_parses_with_documented_defaults() -> None:
    cfg = config.load_cortex(CONF / "cortex.toml")
    assert cfg.gateway.listen == "127.0.0.1:31313"
    assert cfg.eviction.strategy == "lru"
    assert cfg.neurons[0].name == "local"
    assert cfg == config.CortexConfig(neurons=cfg.neurons), "example must show the defaults"


def test_example_models_toml_parses() -> None:
    models = config.load_models(CONF / "models.toml")
    first = models.models[0]
    assert (first.id, first.quantization, first.tool_parser) == ("qwen3-8b", "4bit", "hermes")
    assert "claude-*-sonnet-*" in first.aliases


def test_example_neuron_toml_parses_with_documented_defaults() -> None:
    cfg = config.load_neuron(CONF / "neuron.toml")
    assert cfg == config.NeuronConfig(), "example must show the defaults"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[eviction]\nstrategy = "fifo"\n',
            "cortex.toml: eviction.strategy: expected one of lru, priority, got 'fifo'",
        ),
        (
            '[gateway]\nlistn = "x"\n',
            "cortex.toml: gateway: unknown key 'listn' (did you mean 'listen'?)",
        ),
        (
            '[[neuron]]\nname = "a"\n',
            "cortex.toml: (top level): unknown key 'neuron' (did you mean 'neurons'?)",
        ),
        ("[gateway]\nbogus = 1\n", "cortex.toml: gateway: unknown key 'bogus'"),
        (
            '[gateway]\nlisten = "localhost"\n',
            "cortex.toml: gateway: listen: expected HOST:PORT such as 127.0.0.1:31313, "
            "got 'localhost'",
        ),
        (
            '[gateway]\nmetrics_listen = "0.0.0.0:99999"\n',
            "cortex.toml: gateway: metrics_listen: expected HOST:PORT",
        ),
        ("[gateway]\nqueue_depth = 0\n", "cortex.toml: gateway.queue_depth: expected `int` >= 1"),
        ("[gateway]\nlisten = 5\n", "cortex.toml: gateway.listen: expected `str`, got 5"),
        (
            '[[neurons]]\nname = "a"\nendpoint = "ftp://x"\n',
            "expected an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://x"\n[[neurons]]\nname = "a"\n'
            'endpoint = "http://y"\n',
            "duplicate name 'a'",
        ),
        ("[gateway\n", "cortex.toml: not valid TOML"),
    ],
)
def test_bad_cortex_toml_is_one_line_naming_key_and_value(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_cortex(_write(tmp_path, "cortex.toml", text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_neuron_listen_is_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_neuron(_write(tmp_path, "neuron.toml", '[neuron]\nlisten = "13131"\n'))
    assert str(err.value) == (
        "neuron.toml: neuron: listen: expected HOST:PORT such as 127.0.0.1:31313, got '13131'"
    )


@pytest.mark.parametrize("value", ["1", "15"])
def test_a_step_of_fewer_than_16_tokens_is_refused_but_0_means_by_device(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_neuron(
            _write(tmp_path, "neuron.toml", f"[neuron]\nmax_batch_tokens = {value}\n")
        )
    assert str(err.value) == (
        f"neuron.toml: neuron.max_batch_tokens: expected 0 (by device) or at least 16, got {value}"
    )
    by_device = _write(tmp_path, "ok.toml", "[neuron]\nmax_batch_tokens = 0\n")
    assert config.load_neuron(by_device).neuron.max_batch_tokens == 0


def test_bad_model_entry_names_its_index(tmp_path: Path) -> None:
    text = (
        '[[models]]\nid = "a"\nsource = "a"\n'
        '[[models]]\nid = "b"\nsource = "b"\nquantization = "3bit"\n'
    )
    with pytest.raises(ConfigError) as err:
        config.load_models(_write(tmp_path, "models.toml", text))
    assert str(err.value) == (
        "models.toml: models[1].quantization: "
        "expected one of 4bit, 8bit, int4, int8, none, got '3bit'"
    )


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "-1.0"])
def test_absurd_vram_gb_is_refused_naming_the_entry(tmp_path: Path, value: str) -> None:
    text = f'[[models]]\nid = "a"\nsource = "a"\nvram_gb = {value}\n'
    with pytest.raises(ConfigError) as err:
        config.load_models(_write(tmp_path, "models.toml", text))
    assert str(err.value).startswith("models.toml: models[0].vram_gb: expected `float`")


def test_infinite_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway.idle_timeout_s: expected `float` <= 1000000"):
        config.load_cortex(_write(tmp_path, "cortex.toml", "[gateway]\nidle_timeout_s = inf\n"))


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load_neuron(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9", ("::1", 9)), (":5", ("0.0.0.0", 5))],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert config.split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["nohost", "h:0", "h:99999", "h:x"])
def test_split_listen_rejects(listen: str) -> None:
    with pytest.raises(ConfigError):
        config.split_listen(listen)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_check_accepts_example_and_rejects_fifo(tmp_path: Path) -> None:
    ok = _check("--role", "gateway", "--config", str(CONF / "cortex.toml"), "--check")
    assert ok.returncode == 0, ok.stderr
    bad = (CONF / "cortex.toml").read_text().replace('strategy = "lru"', 'strategy = "fifo"')
    _write(tmp_path, "models.toml", (CONF / "models.toml").read_text())
    result = _check(
        "--role", "gateway", "--config", str(_write(tmp_path, "cortex.toml", bad)), "--check"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cortex.toml: eviction.strategy: expected one of lru, priority, got 'fifo'"
    )


def test_cli_check_neuron_preload_must_name_a_catalogue_model(tmp_path: Path) -> None:
    _write(tmp_path, "models.toml", '[[models]]\nid = "a"\nsource = "a"\n')
    path = _write(tmp_path, "neuron.toml", 'preload = ["b"]\n[neuron]\nmodels = "models.toml"\n')
    result = _check("--role", "neuron", "--config", str(path), "--check")
    assert result.returncode == 2
    assert "preload: 'b' is not in models.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_version_and_help() -> None:
    assert _check("--version").stdout.startswith("cortex, version ")
    help_text = _check("--help").stdout
    for word in ("--role", "--config", "--check", "demo-model", "status", "serve"):
        assert word in help_text


def test_models_sampling_table_applies_to_its_entry_and_is_bounded(tmp_path: Path) -> None:
    text = (
        '[[models]]\nid = "a"\nsource = "a"\n[models.sampling]\ntemperature = 0.2\ntop_p = 0.9\n'
        '[[models]]\nid = "b"\nsource = "b"\n'
    )
    a, b = config.load_models(_write(tmp_path, "models.toml", text)).models
    assert a.sampling == config.SamplingDefaults(temperature=0.2, top_p=0.9)
    assert b.sampling.empty
    bad = '[[models]]\nid = "a"\nsource = "a"\n[models.sampling]\ntemperature = 3.0\n'
    with pytest.raises(ConfigError) as err:
        config.load_models(_write(tmp_path, "bad.toml", bad))
    assert str(err.value).startswith("bad.toml: models[0].sampling.temperature: expected `float`")


def test_compiled_decode_is_off_by_default_and_reaches_the_load_request(tmp_path: Path) -> None:
    text = (
        '[[models]]\nid = "a"\nsource = "a"\ncompiled_decode = true\n'
        '[[models]]\nid = "b"\nsource = "b"\n'
    )
    a, b = config.load_models(_write(tmp_path, "models.toml", text)).models
    assert (a.compiled_decode, b.compiled_decode) == (True, False)
    assert LoadRequest.from_entry(a).compiled_decode
    bad = '[[models]]\nid = "a"\nsource = "a"\ncompiled_decode = "yes"\n'
    with pytest.raises(ConfigError, match="compiled_decode"):
        config.load_models(_write(tmp_path, "bad.toml", bad))


def test_sampling_defaults_fill_only_what_is_unset() -> None:
    mine = config.SamplingDefaults(temperature=0.2)
    own = config.SamplingDefaults(temperature=0.6, top_k=20)
    assert mine.over(own) == config.SamplingDefaults(temperature=0.2, top_k=20)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["lmstudio"]', "neuron.discover[0]: expected one of huggingface, ollama, got 'lmstudio'"),
        ('["ollama", "ollama"]', "neuron.discover: duplicate name 'ollama'"),
    ],
)
def test_discover_names_known_stores_once(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load_neuron(_write(tmp_path, "neuron.toml", f"[neuron]\ndiscover = {value}\n"))
    assert str(err.value).startswith(f"neuron.toml: {message}")
    both = _write(tmp_path, "ok.toml", '[neuron]\ndiscover = ["huggingface", "ollama"]\n')
    assert config.load_neuron(both).neuron.discover == ("huggingface", "ollama")
