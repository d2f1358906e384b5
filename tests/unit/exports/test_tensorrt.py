"""TensorRT logic that needs no GPU (a fake ``tensorrt`` module), plus the real build when available."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from flair_deploy.description import Precision
from flair_deploy.errors import ExportError
from flair_deploy.exports.config import TensorRTOptions
from flair_deploy.exports.inspect import read_description
from flair_deploy.exports.tensorrt import (
    EngineFacts,
    build_engine,
    engine_cache_key,
    engine_profile,
    ort_tensorrt_provider_options,
    sidecar_path,
    trt_major,
)

PLAN = b"\x00fake-plan-bytes\xff" * 7


#: What each TensorRT major version's Python bindings offer of what the builder could touch (checked
#: against the 10.16 and 11.1 bindings, pyCore.cpp). A fake exposes only its version's names: calling a
#: removed API (``set_binding_shape``, ``max_workspace_size``, ``BuilderFlag.FP16`` on 11) fails.
_BUILDER_FLAGS = {
    10: (
        "FP16",
        "INT8",
        "BF16",
        "FP8",
        "REFIT",
        "OBEY_PRECISION_CONSTRAINTS",
        "PREFER_PRECISION_CONSTRAINTS",
    ),
    11: ("REFIT", "DEBUG", "GPU_FALLBACK", "SPARSE_WEIGHTS"),
}
_NETWORK_FLAGS = {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 11: {"STRONGLY_TYPED": 1}}


def fake_trt(version: str, *, parse_ok: bool = True, calls: list | None = None):
    calls = calls if calls is not None else []
    major = int(version.split(".")[0])

    class Config:
        __slots__ = ()  # assigning a removed attribute (max_workspace_size, int8_calibrator) fails

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", dict(profile.shapes)))

        def create_timing_cache(self, data):
            calls.append(("timing_seed", bytes(data)))
            return "cache"

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("timing_set", ignore_mismatch))

        def get_timing_cache(self):
            return SimpleNamespace(serialize=lambda: b"timing")

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        __slots__ = ()

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build",))
            return PLAN

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): UNSUPPORTED_NODE\nmore detail"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    if major == 10:
        Builder.platform_has_fast_fp16 = property(lambda self: True)  # removed in 11
    module = SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=Parser,
        MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
        BuilderFlag=SimpleNamespace(**{f: f for f in _BUILDER_FLAGS[major]}),
        NetworkDefinitionCreationFlag=SimpleNamespace(**_NETWORK_FLAGS[major]),
    )
    if major == 10:
        module.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})  # removed in 11
    return module, calls


def test_the_fakes_refuse_what_each_version_removed():
    trt10, _ = fake_trt("10.16.0")
    trt11, _ = fake_trt("11.1.0")
    assert hasattr(trt10.BuilderFlag, "FP16") and not hasattr(trt11.BuilderFlag, "FP16")
    assert hasattr(trt10, "IInt8EntropyCalibrator2") and not hasattr(trt11, "IInt8EntropyCalibrator2")
    assert not hasattr(trt11.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    config = trt11.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 30  # removed in TensorRT 10
    with pytest.raises(AttributeError):
        trt11.Builder(None).platform_has_fast_fp16  # noqa: B018  (removed in TensorRT 11)


@pytest.fixture
def onnx_file(tmp_path, tiny_description):
    path = tmp_path / "tiny.fp16.onnx"
    path.write_bytes(b"not really onnx, the fake parser does not care")
    return path, tiny_description.with_provenance(precision="fp16")


def _fake(version, **kw):
    return fake_trt(version, **kw)


@pytest.mark.parametrize(("version", "network_flags"), [("10.13.0.35", 1 << 1), ("11.1.0", 0)])
def test_version_dispatch_and_sidecar(onnx_file, tmp_path, version, network_flags):
    path, desc = onnx_file
    trt, calls = _fake(version)
    engine = tmp_path / "tiny.fp16.engine"
    opts = TensorRTOptions(cache_dir=tmp_path / "cache")
    facts = build_engine(path, engine, desc, options=opts, trt=trt, compute_capability="8.9")
    # Strongly typed on both: 10.x asks for it, 11.x always is; no precision builder flag on either.
    assert [c for c in calls if c[0] == "network_flags"] == [("network_flags", network_flags)]
    assert [c for c in calls if c[0] == "flag"] == []
    assert facts.strongly_typed and facts.builder_flags == ()
    assert engine.read_bytes() == PLAN, "engine bytes are the plan, untouched"
    back = read_description(engine)  # via the sidecar
    assert back.provenance.precision is Precision.FP16
    assert EngineFacts.from_description(back) == facts
    profile = dict(next(c for c in calls if c[0] == "profile")[1])
    assert profile["image"] == ((1, 5, 64, 64), (16, 5, 64, 64), (32, 5, 64, 64))
    assert (tmp_path / "cache" / f"timing-trt{version}-sm8.9.cache").read_bytes() == b"timing"


def test_engine_cache_reuses_matching_builds_only(onnx_file, tmp_path):
    path, desc = onnx_file
    opts = TensorRTOptions(cache_dir=tmp_path / "cache")
    trt, calls = _fake("10.13.0")
    first = build_engine(path, tmp_path / "a.engine", desc, options=opts, trt=trt, compute_capability="8.9")
    second = build_engine(path, tmp_path / "b.engine", desc, options=opts, trt=trt, compute_capability="8.9")
    assert calls.count(("build",)) == 1 and second.from_cache and not first.from_cache
    assert (tmp_path / "b.engine").read_bytes() == PLAN
    # A different GPU architecture is a different engine.
    build_engine(path, tmp_path / "c.engine", desc, options=opts, trt=trt, compute_capability="9.0")
    assert calls.count(("build",)) == 2
    # A new profile on the same GPU is rebuilt too, with the timing cache the first build saved.
    wider = TensorRTOptions(cache_dir=tmp_path / "cache", max_batch=64)
    build_engine(path, tmp_path / "d.engine", desc, options=wider, trt=trt, compute_capability="8.9")
    assert calls.count(("build",)) == 3
    assert [c[1] for c in calls if c[0] == "timing_seed"] == [b"", b"", b"timing"]


def test_cache_key_covers_every_input(tiny_description):
    profile = engine_profile(tiny_description, TensorRTOptions())
    other_profile = engine_profile(tiny_description, TensorRTOptions(max_batch=64))
    base = engine_cache_key("a" * 64, "10.1", "8.9", "fp16", profile)
    variants = [
        engine_cache_key("b" * 64, "10.1", "8.9", "fp16", profile),
        engine_cache_key("a" * 64, "10.2", "8.9", "fp16", profile),
        engine_cache_key("a" * 64, "10.1", "9.0", "fp16", profile),
        engine_cache_key("a" * 64, "10.1", "8.9", "int8", profile),
        engine_cache_key("a" * 64, "10.1", "8.9", "fp16", other_profile),
    ]
    assert len({base, *variants}) == 6
    assert base == engine_cache_key("a" * 64, "10.1", "8.9", Precision.FP16, profile)


def test_parse_failure_and_unsupported_version_are_one_line(onnx_file, tmp_path):
    path, desc = onnx_file
    trt, _ = _fake("10.0.1", parse_ok=False)
    with pytest.raises(
        ExportError, match=r"cannot parse tiny.fp16.onnx: In node 3 \(Conv\): UNSUPPORTED_NODE$"
    ):
        build_engine(path, tmp_path / "x.engine", desc, trt=trt, compute_capability="8.9")
    assert not (tmp_path / "x.engine").exists()
    with pytest.raises(ExportError, match=r"TensorRT 8\.6\.1 is not supported"):
        trt_major("8.6.1")


def test_profile_rules(tiny_description):
    with pytest.raises(ExportError, match="--dynamic-hw"):
        engine_profile(tiny_description, TensorRTOptions(max_tile=128))
    p = engine_profile(tiny_description, TensorRTOptions(min_tile=32, max_tile=128), dynamic_hw=True)
    assert p.shapes["image"] == ((1, 5, 32, 32), (16, 5, 64, 64), (32, 5, 128, 128))
    with pytest.raises(ExportError, match="multiple of the output stride"):
        engine_profile(tiny_description, TensorRTOptions(max_tile=100), dynamic_hw=True)


def test_ort_tensorrt_provider_options(tiny_description, tmp_path):
    from flair_deploy.description import MetadataSpec

    desc = tiny_description.model_copy(update={"metadata": MetadataSpec(dim=3)}).with_provenance(
        precision="int8"
    )
    opts = ort_tensorrt_provider_options(desc, options=TensorRTOptions(cache_dir=tmp_path))
    assert opts["trt_int8_enable"] == "False" and opts["trt_fp16_enable"] == "False"
    assert opts["trt_profile_opt_shapes"] == "image:16x5x64x64,metadata:16x3"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "ort")
    assert all(isinstance(v, str) for v in opts.values())


# A second interpreter (a torch import) for what test_version_dispatch_and_sidecar checks in-process.
@pytest.mark.slow
def test_sidecar_is_read_by_inspect_in_a_fresh_process(onnx_file, tmp_path):
    path, desc = onnx_file
    trt, _ = _fake("11.1.0")
    engine = tmp_path / "tiny.fp16.engine"
    build_engine(
        path,
        engine,
        desc,
        options=TensorRTOptions(cache_dir=tmp_path / "c"),
        trt=trt,
        compute_capability="8.9",
    )
    assert sidecar_path(engine).name == "tiny.fp16.engine.json"
    out = subprocess.run(
        [sys.executable, "-m", "flair_deploy", "inspect", str(engine), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["provenance"]["precision"] == "fp16"
    assert data["provenance"]["extra"]["tensorrt.version"] == "11.1.0"
    assert data["tile_size"] == 64 and data["bands"] == ["R", "G", "B", "NIR", "E"]


@pytest.mark.tensorrt
def test_real_engine_build(exported, tmp_path):
    facts = build_engine(
        exported.onnx[Precision.FP16],
        tmp_path / "tiny.fp16.engine",
        read_description(exported.onnx[Precision.FP16]),
        options=TensorRTOptions(cache_dir=tmp_path / "cache", max_batch=4),
    )
    assert facts.engine_sha256 and (tmp_path / "tiny.fp16.engine.json").is_file()
