"""Contract tests for every backend importable here (torch, onnxruntime CPU) and the EchoBackend double."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flair_deploy.artifacts import save_checkpoint
from flair_deploy.description import MetadataSpec, ModelDescription, Precision
from flair_deploy.errors import BackendError, InputSpecError, ModelDescriptionError
from flair_deploy.inference.backends import (
    Backend,
    BackendName,
    available_backends,
    backend_for_artifact,
    create_backend,
)
from flair_deploy.inference.backends.torch_backend import TorchBackend
from flair_deploy.models import build_model
from tests.fakes import EchoBackend

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def export_onnx(model: torch.nn.Module, desc: ModelDescription, path: Path, *, props: bool = True) -> Path:
    model = model.eval()
    x = torch.rand(1, desc.in_channels, desc.tile_size, desc.tile_size) * 255
    names, args, axes = (
        ["image"],
        (x,),
        {"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
    )
    if desc.metadata is not None:
        names.append("metadata")
        args = (x, torch.rand(1, desc.metadata.dim))
        axes["metadata"] = {0: "n"}
    torch.onnx.export(
        model,
        args,
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    if props:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, desc.to_metadata_props())
        onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def desc() -> ModelDescription:
    from flair_deploy.description import ArchitectureSpec, class_preset

    # Smaller than conftest's tiny_description (depth 3, narrow decoder) to keep the suite fast on a
    # shared CPU; module-scoped so the ONNX export happens once.
    return ModelDescription(
        name="tiny",
        tile_size=32,
        overlap=8,
        architecture=ArchitectureSpec(
            arch="unet", encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)
        ),
        classes=class_preset("flair15"),
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Other work shares this CPU: one thread avoids oversubscription stalls in torch's first calls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(desc):
    torch.manual_seed(0)
    return build_model(desc).eval()


@pytest.fixture(scope="module")
def onnx_path(desc, model, tmp_path_factory) -> Path:
    return export_onnx(model, desc, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(params=["torch", "onnxruntime", "echo"])
def backend(request, desc, model, onnx_path) -> Backend:
    if request.param == "torch":
        return TorchBackend.from_module(model, desc)
    if request.param == "onnxruntime":
        return create_backend(None, onnx_path, options={"threads": 1})
    return EchoBackend(desc)


def tiles(desc: ModelDescription, n: int = 2, hw: tuple[int, int] = (32, 32)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, desc.in_channels, *hw)).astype(np.float32)


# ---------------------------------------------------------------------- contract
def test_outputs_have_the_documented_shapes_and_dtypes(backend, desc):
    x = tiles(desc, 2, (32, 48))
    with backend:
        logits = backend.infer(x)
        probs = backend.predict_probabilities(x)
        classes, conf = backend.predict_classes(x)
    assert logits.shape == (2, desc.num_classes, 32, 48) and logits.dtype == np.float32
    assert probs.shape == logits.shape and probs.dtype == np.float32
    assert classes.shape == conf.shape == (2, 32, 48)
    assert classes.dtype == np.uint8 and conf.dtype == np.float32
    assert backend.last_times.total > 0


def test_probabilities_sum_to_one_over_active_classes_and_zero_on_inactive(backend, desc):
    active = np.array(desc.active_mask)
    assert not active.all()  # the fixture must exercise inactive classes
    with backend:
        probs = backend.predict_probabilities(tiles(desc))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs[:, ~active] == 0.0)


def test_predict_classes_never_returns_an_inactive_class_and_matches_probabilities(backend, desc):
    inactive = np.flatnonzero(~np.array(desc.active_mask))
    x = tiles(desc, 3)
    with backend:
        logits = backend.infer(x)
        classes, conf = backend.predict_classes(x)
        probs = backend.predict_probabilities(x)
    assert not np.isin(classes, inactive).any()
    # An inactive logit that is the raw maximum somewhere proves the mask is applied (not a tautology).
    if isinstance(backend, EchoBackend):
        assert np.isin(logits.argmax(axis=1), inactive).any()
    np.testing.assert_array_equal(classes, probs.argmax(axis=1))
    np.testing.assert_allclose(conf, probs.max(axis=1), atol=1e-5)


def test_calls_outside_with_block_are_refused(backend, desc):
    with pytest.raises(BackendError, match="inside `with backend:`"):
        backend.infer(tiles(desc))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: tiles(d).astype(np.float64), "dtype float64, expected float32"),
        (lambda d: tiles(d)[:, :3], r"shape \(2, 3, 32, 32\), expected \(N>=1, 5, H, W\)"),
        (lambda d: tiles(d)[0], "expected"),
        (lambda d: tiles(d).tolist(), "numpy array"),
    ],
)
def test_bad_batches_raise_input_spec_error(backend, desc, make, match):
    with backend, pytest.raises(InputSpecError, match=match):
        backend.infer(make(desc))


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_tile_not_multiple_of_output_stride_is_refused(name, desc, model, onnx_path):
    b = TorchBackend.from_module(model, desc) if name == "torch" else create_backend(name, onnx_path)
    with b, pytest.raises(InputSpecError, match="output stride 8"):
        b.infer(tiles(desc, 1, (32, 30)))


def test_metadata_to_image_only_model_is_refused(backend, desc):
    with backend, pytest.raises(InputSpecError, match="takes no metadata"):
        backend.infer(tiles(desc), np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------- parity and variants
def test_onnxruntime_logits_match_torch(desc, model, onnx_path):
    x = tiles(desc, 2)
    with TorchBackend.from_module(model, desc) as tb, create_backend("onnxruntime", onnx_path) as ob:
        ref, got = tb.infer(x), ob.infer(x)
        assert (tb.predict_classes(x)[0] == ob.predict_classes(x)[0]).mean() > 0.999
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)


def test_torch_variants_stay_close_to_fp32(desc, model):
    x = tiles(desc, 1)
    with TorchBackend.from_module(model, desc) as ref:
        expected = ref.infer(x)
    with TorchBackend.from_module(model, desc, channels_last=True, threads=1) as cl:
        np.testing.assert_allclose(cl.infer(x), expected, atol=1e-3, rtol=1e-3)
    with TorchBackend.from_module(model, desc, precision="bf16") as bf:
        got = bf.infer(x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.25 * np.abs(expected).max()
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_torch_backend_restores_module_state_and_threads(desc):
    m = build_model(desc)  # training mode
    threads = torch.get_num_threads()
    with TorchBackend.from_module(m, desc, threads=1):
        assert not m.training and torch.get_num_threads() == 1
    assert m.training and torch.get_num_threads() == threads


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int8"}, "int8"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"cuda_graphs": True}, "cuda_graphs needs a CUDA device"),
        ({"compile": "fastest"}, "unknown torch.compile mode"),
        ({"colour": True}, r"unknown torch backend option\(s\) \['colour'\]"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        # Checked before any CUDA call, so this runs on a CPU machine too.
        (
            {"device": "cuda", "cuda_graphs": True, "compile": "reduce-overhead"},
            "captures CUDA graphs itself",
        ),
        ({"device": "cuda", "cuda_graphs": True, "compile": "max-autotune"}, "captures CUDA graphs itself"),
    ],
)
def test_torch_bad_options_are_one_line_errors(desc, model, kwargs, match):
    with pytest.raises(BackendError, match=match) as info:
        TorchBackend.from_module(model, desc, **kwargs)
    assert "\n" not in str(info.value)


def test_torch_backend_loads_a_checkpoint_by_suffix(desc, model, tmp_path):
    path = save_checkpoint(tmp_path / "m.ckpt", model, desc)
    b = create_backend(None, path)
    assert isinstance(b, TorchBackend) and b.description.classes == desc.classes
    x = tiles(desc, 1)
    with b, TorchBackend.from_module(model, desc) as ref:
        np.testing.assert_allclose(b.infer(x), ref.infer(x), atol=1e-5)


def test_cuda_device_without_cuda_is_an_error(desc, model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with (
        pytest.raises(BackendError, match="torch sees no CUDA device"),
        TorchBackend.from_module(model, desc, device="cuda"),
    ):
        pass


# ---------------------------------------------------------------------- onnxruntime specifics
def test_onnxruntime_reads_description_from_metadata_props(desc, onnx_path):
    b = create_backend("onnxruntime", onnx_path, options={"threads": 1})
    assert b.description == desc and b.precision is Precision.FP32 and b.name is BackendName.ONNXRUNTIME


def test_onnxruntime_without_description_needs_a_preset(desc, model, tmp_path):
    path = export_onnx(model, desc, tmp_path / "bare.onnx", props=False)
    with pytest.raises(ModelDescriptionError, match="carries no model description; give --preset"):
        create_backend(None, path)
    b = create_backend(None, path, preset="flair-inc-rgbie-15cl-resnet34-unet")
    assert b.description.name == "FLAIR-INC_rgbie_15cl_resnet34-unet"


def test_onnxruntime_self_described_model_refuses_a_preset(onnx_path):
    with pytest.raises(ModelDescriptionError, match="describes itself and disagrees: --preset"):
        create_backend(None, onnx_path, preset="flair-inc-rgbie-15cl-resnet34-unet")


def test_requested_but_missing_provider_is_an_error_not_a_cpu_fallback(onnx_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    b = create_backend("onnxruntime", onnx_path, device="cuda")
    with (
        pytest.raises(BackendError, match=r"CUDAExecutionProvider requested .*pip install onnxruntime-gpu"),
        b,
    ):
        pass
    b = create_backend("onnxruntime", onnx_path, device="cuda", options={"provider": "tensorrt"})
    with pytest.raises(BackendError, match="TensorrtExecutionProvider requested"), b:
        pass


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"options": {"provider": "cuda"}}, "does not run on device 'cpu'"),
        ({"options": {"provider": "openvino"}}, "unknown onnxruntime provider"),
        ({"precision": "int8"}, "is a fp32 model but int8 was requested"),
        ({"options": {"profile_batches": (4, 2, 8)}}, "profile_batches"),
    ],
)
def test_onnxruntime_bad_options(onnx_path, kwargs, match):
    with pytest.raises(BackendError, match=match):
        create_backend("onnxruntime", onnx_path, **kwargs)


def test_onnxruntime_takes_the_logits_output_among_extra_heads_and_post_processes_it_once(desc, tmp_path):
    # A graph whose extra heads deliberately disagree with its logits: every answer must come from the
    # logits, through the one masked softmax/argmax (inactive classes never win), whatever the heads say.
    from onnx import TensorProto, helper

    k, d = desc.num_classes, desc.in_channels
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Tile", ["m", "reps"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node(
            "Constant", [], ["seven"], value=helper.make_tensor("s", TensorProto.UINT8, [], [7])
        ),
        helper.make_node("Shape", ["image"], ["shp"]),
        helper.make_node("Gather", ["shp", "nhw"], ["shp3"]),
        helper.make_node("Expand", ["seven", "shp3"], ["class_index"]),
        helper.make_node("Cast", ["class_index"], ["confidence"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", d, "h", "w"])],
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in [("logits", 1), ("probabilities", 1), ("class_index", 2), ("confidence", 1)]
        ],
        initializer=[
            helper.make_tensor("reps", TensorProto.INT64, [4], [1, k, 1, 1]),
            helper.make_tensor("nhw", TensorProto.INT64, [3], [0, 2, 3]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    helper.set_model_props(proto, desc.to_metadata_props())
    path = tmp_path / "outs.onnx"
    onnx.save(proto, str(path))
    with create_backend(None, path) as b:
        x = tiles(desc, 1)
        classes, conf = b.predict_classes(x)
        probs = b.predict_probabilities(x)
        logits = b.infer(x)
        run = b.run(x.astype(np.uint8))  # raw uint8 tiles, cast inside
    active = np.asarray(desc.active_mask)
    # Every logit is equal (the tiled mean): the first active class wins, with 1/A confidence.
    assert (classes == np.flatnonzero(active)[0]).all()
    np.testing.assert_allclose(conf, 1.0 / active.sum(), rtol=1e-5)
    np.testing.assert_allclose(probs[:, active], 1.0 / active.sum(), rtol=1e-5)
    assert (probs[:, ~active] == 0).all()
    assert logits.shape == (1, k, *x.shape[2:]) and isinstance(run, np.ndarray)


def test_metadata_model_requires_metadata(tmp_path):
    from flair_deploy.description import ArchitectureSpec, class_preset

    desc = ModelDescription(
        name="meta",
        tile_size=32,
        overlap=8,
        classes=class_preset("flair12"),
        architecture=ArchitectureSpec(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
        metadata=MetadataSpec(dim=6, hidden=(8,)),
    )
    model = build_model(desc).eval()
    path = export_onnx(model, desc, tmp_path / "meta.onnx")
    x = tiles(desc, 2, (32, 32))
    meta = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    with create_backend(None, path) as ob, TorchBackend.from_module(model, desc) as tb:
        with pytest.raises(InputSpecError, match=r"needs a \(2, 6\) float32 metadata batch"):
            ob.infer(x)
        with pytest.raises(InputSpecError, match=r"metadata has shape \(1, 6\), expected \(2, 6\)"):
            tb.infer(x, meta[:1])
        np.testing.assert_allclose(ob.infer(x, meta), tb.infer(x, meta), atol=1e-3, rtol=1e-3)
        # The metadata input is live: changing it changes the logits.
        assert not np.allclose(tb.infer(x, meta), tb.infer(x, meta + 1))


# ---------------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("m.ckpt", "torch"),
        ("m.PTH", "torch"),
        ("m.pt", "torch"),
        ("m.safetensors", "torch"),
        ("m.onnx", "onnxruntime"),
        ("m.engine", "tensorrt"),
        ("m.plan", "tensorrt"),
        ("m.trt", "tensorrt"),
    ],
)
def test_registry_picks_backend_by_suffix(name, expected):
    assert backend_for_artifact(Path(name)) is BackendName(expected)


def test_unknown_suffix_lists_known_model_files():
    with pytest.raises(BackendError, match=r"'\.tif'.*\.onnx \(onnxruntime\).*--backend"):
        backend_for_artifact(Path("ortho.tif"))


def test_unknown_backend_lists_choices(onnx_path):
    with pytest.raises(
        BackendError, match="unknown backend 'openvino'; choose one of: torch, onnxruntime, tensorrt"
    ):
        create_backend("openvino", onnx_path)


def test_missing_model_file_is_an_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        create_backend(None, tmp_path / "nope.onnx")


def test_available_backends_reports_reasons():
    avail = available_backends()
    assert set(avail) == set(BackendName)
    assert avail[BackendName.TORCH] is None and avail[BackendName.ONNXRUNTIME] is None
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt is not installed" in avail[BackendName.TENSORRT]
    if not torch.cuda.is_available():
        assert "no CUDA device" in available_backends("cuda")[BackendName.TORCH]


# ---------------------------------------------------------------------- helpers and the double
def test_echo_backend_is_a_step_function_of_band0_and_position_independent(desc):
    echo = EchoBackend(desc)
    x = tiles(desc, 1, (8, 12))
    with echo:
        classes, _ = echo.predict_classes(x)
        whole = echo.infer(x)
        part = echo.infer(np.ascontiguousarray(x[:, :, 2:6, 3:9]))
    np.testing.assert_array_equal(classes, echo.value_to_class(x[:, 0]))
    np.testing.assert_array_equal(part, whole[:, :, 2:6, 3:9])
    x[:] = echo.class_value(4)
    with echo:
        assert (echo.predict_classes(x)[0] == 4).all()
    assert echo.calls[0] == (1, 5, 8, 12) and echo.activations == 2


def test_echo_backend_emulates_static_engines(desc):
    echo = EchoBackend(desc, max_batch=2, fixed_hw=(32, 32))
    with echo:
        with pytest.raises(InputSpecError, match="maximum batch 2"):
            echo.infer(tiles(desc, 3))
        with pytest.raises(InputSpecError, match="built for 32x32 px only"):
            echo.infer(tiles(desc, 1, (16, 32)))


# ---------------------------------------------------------------------- CUDA (GPU machines only)
@pytest.mark.gpu
@pytest.mark.parametrize(
    "options", [{}, {"timing": True}, {"channels_last": True}, {"cuda_graphs": True}, {"precision": "fp16"}]
)
def test_torch_cuda_matches_cpu(desc, model, options):  # pragma: no cover - needs a GPU
    x = tiles(desc, 2)
    with TorchBackend.from_module(model, desc) as cpu:
        ref_logits = cpu.infer(x)
        ref_classes = cpu.predict_classes(x)[0]
    with TorchBackend.from_module(model, desc, device="cuda", **options) as gpu:
        for _ in range(2):  # the second call replays the captured graph
            logits = gpu.infer(x)
            classes, _ = gpu.predict_classes(x)
            probs = gpu.predict_probabilities(x)
    tol = 5e-2 if options.get("precision") else 1e-3
    np.testing.assert_allclose(logits, ref_logits, atol=tol * np.abs(ref_logits).max(), rtol=tol)
    assert (classes == ref_classes).mean() > 0.98
    assert np.all(probs[:, ~np.array(desc.active_mask)] == 0)
    if options.get("timing"):
        assert gpu.last_times.h2d > 0 and gpu.last_times.d2h > 0


@pytest.mark.gpu
def test_torch_cuda_turns_cudnn_benchmark_on_while_active(desc, model):  # pragma: no cover - needs a GPU
    before = torch.backends.cudnn.benchmark
    with TorchBackend.from_module(model, desc, device="cuda"):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is before


@pytest.mark.gpu
def test_onnxruntime_cuda_iobinding_matches_cpu(desc, onnx_path):  # pragma: no cover - needs a GPU
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    x = tiles(desc, 2)
    with create_backend(None, onnx_path) as cpu, create_backend(None, onnx_path, device="cuda") as gpu:
        np.testing.assert_allclose(gpu.infer(x), cpu.infer(x), atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(gpu.predict_probabilities(x), cpu.predict_probabilities(x), atol=1e-4)
        assert (gpu.predict_classes(x)[0] == cpu.predict_classes(x)[0]).mean() > 0.999
