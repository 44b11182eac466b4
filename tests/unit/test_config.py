"""Settings precedence: CLI flags (init) > BERTHING_* env > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from berthing.config import Settings


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "berthing.toml"
    toml.write_text('port = 9000\nmax_items = 7\nmax_wait_ms = 3.5\nmodels = ["a=./x"]\n')
    monkeypatch.setenv("BERTHING_CONFIG_FILE", str(toml))
    assert (Settings().port, Settings().max_items, Settings().models) == (9000, 7, ["a=./x"])
    monkeypatch.setenv("BERTHING_MAX_ITEMS", "9")
    monkeypatch.setenv("BERTHING_MODELS", "a=./x, b=./y")
    assert (Settings().max_items, Settings().models) == (9, ["a=./x", "b=./y"])
    assert Settings(max_items=11).max_items == 11
    assert Settings().max_wait_ms == 3.5 and Settings().max_batch_size == 64


def test_unknown_keys_and_missing_file_are_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("max_itemz = 3\n")
    with pytest.raises(ValueError, match="max_itemz"):
        Settings(config_file=toml)
    with pytest.raises(FileNotFoundError):
        Settings(config_file=tmp_path / "none.toml")


def test_management_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defaults = Settings()
    assert (defaults.management_host, defaults.management_port, defaults.model_store) == ("127.0.0.1", 8081, None)
    assert (defaults.management_auth, defaults.inference_token, defaults.allowed_sources) == (True, None, [])
    monkeypatch.setenv("BERTHING_ALLOWED_SOURCES", "/srv/models/, org/")
    monkeypatch.setenv("BERTHING_MODEL_STORE", str(tmp_path))
    assert (Settings().allowed_sources, Settings().model_store) == (["/srv/models/", "org/"], tmp_path)


def test_example_config_file_and_per_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "berthing.toml"
    settings = Settings(config_file=example)
    assert (settings.port, settings.management_port, settings.metrics_port) == (8080, 8081, 8082)
    sentiment, minilm, other = (settings.load_options(n) for n in ("sentiment", "minilm", "other"))
    assert (sentiment.workers, sentiment.limits.max_batch_size, sentiment.limits.max_wait_ms) == (2, 32, 2.0)
    assert (sentiment.limits.max_batch_tokens, minilm.limits.max_batch_tokens, other.limits.max_batch_tokens) == (512, 1024, 512)
    assert (minilm.workers, other.workers, other.limits.max_batch_size) == (1, 1, 64)
    monkeypatch.setenv("BERTHING_MAX_BATCH_SIZE", "16")  # a global change reaches models without their own value
    assert (Settings(config_file=example).load_options("other").limits.max_batch_size,
            Settings(config_file=example).load_options("sentiment").limits.max_batch_size) == (16, 32)


def test_per_model_settings_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[per_model.sentiment]\nmax_batch_sise = 3\n")
    with pytest.raises(ValueError, match=r"per_model\.sentiment\.max_batch_sise"):
        Settings(config_file=toml)
    toml.write_text("[per_model.sentiment]\nworkers = 0\n")
    with pytest.raises(ValueError, match=r"per_model\.sentiment\.workers"):
        Settings(config_file=toml)


def test_optimize_defaults_to_auto_and_reaches_the_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from berthing.packaging.tune import OptimizeRequest

    monkeypatch.delenv("BERTHING_OPTIMIZE", raising=False)  # the test suite sets it to none for its fp32 parity tests
    assert Settings().optimize == "auto" and Settings().load_options().optimize == OptimizeRequest("auto")
    calibration = tmp_path / "texts.txt"
    calibration.write_text("one\ntwo\n", encoding="utf-8")
    monkeypatch.setenv("BERTHING_THRESHOLDS", '{"cosine_min": 0.97, "label_agreement": "off"}')
    settings = Settings(optimize="int8", calibration_file=calibration, optimize_force=True)
    wanted = OptimizeRequest("int8", calibration, {"cosine_min": 0.97, "label_agreement": "off"}, True)
    assert settings.load_options().optimize == wanted
    toml = tmp_path / "b.toml"
    toml.write_text('optimize = "fused"\n[per_model.exact]\noptimize = "none"\n', encoding="utf-8")
    monkeypatch.delenv("BERTHING_THRESHOLDS")
    from_file = Settings(config_file=toml)
    assert from_file.load_options("any").optimize.level == "fused" and from_file.load_options("exact").optimize.level == "none"
    with pytest.raises(ValueError, match="unknown verification threshold 'cos'"):
        Settings(thresholds={"cos": 1})
    with pytest.raises(ValueError, match="threshold cosine_min must be a number or 'off', not 'high'"):
        Settings(thresholds={"cosine_min": "high"})


def test_the_cache_key_of_an_optimized_artifact_follows_everything_that_shapes_it(tmp_path: Path) -> None:
    from berthing.packaging.tune import OptimizeRequest

    calibration = tmp_path / "texts.txt"
    calibration.write_text("one\n", encoding="utf-8")
    keys = {
        OptimizeRequest("auto").key(), OptimizeRequest("int8").key(), OptimizeRequest("int8", force=True).key(),
        OptimizeRequest("int8", thresholds={"cosine_min": 0.9}).key(), OptimizeRequest("int8", calibration).key(),
    }
    assert len(keys) == 5 and OptimizeRequest("int8").key() == OptimizeRequest("int8", thresholds={}).key()
    calibration.write_text("two\n", encoding="utf-8")
    assert OptimizeRequest("int8", calibration).key() not in keys  # the file's content, not its name


def test_env_tables_are_json_and_merge_with_the_toml_file_key_by_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "b.toml"
    toml.write_text("[per_model.a]\nworkers = 2\nmax_batch_size = 8\n[per_model.b]\nworkers = 3\n", encoding="utf-8")
    monkeypatch.setenv("BERTHING_CONFIG_FILE", str(toml))
    monkeypatch.setenv("BERTHING_PER_MODEL", '{"a": {"max_batch_size": 16}}')
    monkeypatch.setenv("berthing_lanes", "false")  # names in any case, as the shell allows
    monkeypatch.setenv("BERTHING_NOT_A_SETTING", "x")  # other variables of the prefix are not settings
    settings = Settings(per_model={"b": {"workers": 4}})
    assert settings.load_options("a").workers == 2 and settings.load_options("a").limits.max_batch_size == 16
    assert settings.load_options("b").workers == 4 and settings.lanes is False
    monkeypatch.setenv("BERTHING_PER_MODEL", "a=2")
    with pytest.raises(ValueError, match="BERTHING_PER_MODEL must be a JSON object: Expecting value"):
        Settings()


def test_config_file_errors_name_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "b.toml"
    toml.write_text("port = \n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"config file {toml} is not valid TOML: Invalid value \(at line 1"):
        Settings(config_file=toml)
    monkeypatch.setenv("BERTHING_CONFIG_FILE", str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError, match=r"gone\.toml not found"):
        Settings()
    monkeypatch.delenv("BERTHING_CONFIG_FILE")
    monkeypatch.setenv("BERTHING_PORT", "80x")
    with pytest.raises(ValueError, match="port\n  Input should be a valid integer, unable to parse string"):
        Settings()
