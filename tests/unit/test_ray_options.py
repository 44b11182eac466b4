"""The Serve options berthing sets, and the application plan, checked without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from berthing.config import Settings
from berthing.ray.options import ServeArgs, deployment_options, model_name, replica_settings, scale_range
from berthing.ray.plan import plan, serve_config
from berthing.types import BadRequest


def test_defaults_replace_what_ray_gets_wrong_for_batching() -> None:
    options = deployment_options(ServeArgs())
    assert options["max_ongoing_requests"] == 256  # Ray's 5 would cap every batch at 5
    assert options["max_queued_requests"] == 1024  # Ray's -1 queues without bound
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0}
    assert options["graceful_shutdown_timeout_s"] == 30.0


def test_autoscale_range_and_its_config() -> None:
    options = deployment_options(ServeArgs(autoscale="0:4", target_ongoing_requests=16, upscale_delay_s=5))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 16, "upscale_delay_s": 5,
        "downscale_delay_s": 600.0, "look_back_period_s": 30.0,
    }
    assert scale_range("2:2") == (2, 2)
    for bad in ("4", "3:1", "a:b", "-1:2", "0:0"):
        with pytest.raises(ValueError, match="MIN:MAX"):
            scale_range(bad)


def test_args_refuse_unknown_keys_and_settings() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ServeArgs.model_validate({"replica": 2})
    with pytest.raises(ValidationError, match="unknown berthing setting"):
        ServeArgs(settings={"max_batch_tokes": 1})


def test_replica_threads_follow_its_cpus_and_drop_the_servers_own_settings(tmp_path: Path) -> None:
    args = ServeArgs(model=f"m={tmp_path}", cpus=2.5, settings={"port": 1, "max_batch_tokens": 256, "default_model": "x"})
    assert replica_settings(args) == {"max_batch_tokens": 256, "models": [f"m={tmp_path}"], "workers": 1, "threads": 2,
                                      "lanes": False}
    assert ServeArgs(cpus=0.5).threads() == 1


def test_model_names_without_loading() -> None:
    assert model_name(None) == "minilm"
    assert model_name("bert=s3://bucket/models/x.berth") == "bert"
    assert model_name("s3://bucket/models/Sentiment.berth") == "sentiment"


def test_plan_routes_the_default_model_at_the_root_and_the_others_by_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    settings = Settings(models=[f"one={a}", f"two={b}"], default_model="two", inference_token="t0ken")
    plans = plan(settings, {"replicas": 2})
    assert [(p.name, p.route_prefix) for p in plans] == [("two", "/"), ("one", "/one")]
    config = serve_config(plans, "127.0.0.1", 8000)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    args = config["applications"][0]["args"]
    assert (args["model"], args["replicas"]) == (f"two={b}", 2)
    assert "inference_token" not in args.get("settings", {})  # a config file is read by many: the token stays out
    assert plans[0].args.settings["inference_token"] == "t0ken"  # `berthing ray serve` hands it to the replicas
    with pytest.raises(BadRequest, match="not among the models"):
        plan(Settings(models=[f"one={a}"], default_model="nope"), {})
    with pytest.raises(BadRequest, match="share a name"):
        plan(Settings(models=[f"x={a}", f"x={b}"]), {})
