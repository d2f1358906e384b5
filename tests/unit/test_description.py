import json

import pytest

from flair_deploy.description import (
    ArchitectureSpec,
    ClassInfo,
    ModelDescription,
    Normalization,
    NormalizationKind,
    class_preset,
)
from flair_deploy.errors import ModelDescriptionError


def test_presets_follow_ign_conventions():
    assert [c.code for c in class_preset("flair19")] == list(range(1, 20))
    inactive15 = [c.code for c in class_preset("flair15") if not c.active]
    assert inactive15 == [15, 16, 17, 19]
    inactive12 = [c.code for c in class_preset("flair12") if not c.active]
    assert inactive12 == [13, 14, 15, 16, 17, 18, 19]
    ch = class_preset("flair13")
    assert len(ch) == 13 and ch[-1].name == "other" and ch[-1].aliases == (14, 15, 16, 17, 18, 19)


def test_code_lut_honours_codes_and_aliases():
    d = ModelDescription(classes=class_preset("flair13"))
    lut = d.code_lut()
    assert lut[1] == 0 and lut[12] == 11 and lut[13] == 12 and lut[19] == 12
    assert lut[0] == -1 and lut[20] == -1


def test_custom_class_table_keys_are_honoured():
    classes = (ClassInfo(code=2, name="b"), ClassInfo(code=0, name="a"), ClassInfo(code=1, name="c"))
    d = ModelDescription(classes=classes, bands=("R", "G", "B"), normalization=Normalization(kind="none"))
    assert d.code_lut()[:3] == [1, 2, 0]


def test_round_trip_through_json_and_onnx_props(tiny_description):
    props = tiny_description.to_metadata_props()
    assert ModelDescription.from_metadata_props(props) == tiny_description
    assert json.loads(props["tile_size"]) == 64
    assert json.loads(props["model_type"]) == "Segmentor"


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"tile_size": 100}, "not a multiple"),
        ({"overlap": 40}, "overlap"),
        ({"bands": ("R", "G", "B")}, "mean/std values for 3 bands"),
        ({"nodata": 1}, "collides"),
    ],
)
def test_inconsistent_descriptions_are_rejected(tiny_description, update, fragment):
    data = tiny_description.to_dict() | update
    with pytest.raises(ModelDescriptionError, match=fragment):
        ModelDescription.from_dict(data)


def test_missing_onnx_key_is_a_clear_error():
    with pytest.raises(ModelDescriptionError, match="no flair-deploy description"):
        ModelDescription.from_metadata_props({})


def test_normalization_affine_matches_definition():
    n = Normalization(kind=NormalizationKind.MEANSTD, mean=(10.0, 20.0), std=(2.0, 4.0))
    scale, offset = n.affine(2)
    assert [30 * s + o for s, o in zip(scale, offset, strict=False)] == [10.0, 2.5]
    assert Normalization(kind="scale", max_value=255).affine(1) == ([1 / 255], [0.0])


def test_output_stride_follows_depth():
    assert ArchitectureSpec(encoder_depth=4).output_stride == 16


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_deepness_keys_undo_deepness_division_by_255_for_any_raster_type(dtype):
    # Deepness feeds (raw / 255 - mean) / std whatever the type: std = divisor / 255 gives raw / divisor.
    props = ModelDescription(input_dtype=dtype).deepness_props()
    assert json.loads(props["standardization_mean"]) == [0.0] * 5
    assert json.loads(props["standardization_std"]) == pytest.approx([1 / 255] * 5)
    assert (
        json.loads(ModelDescription().deepness_props(input_divisor=65535.0)["standardization_std"])
        == [257.0] * 5
    )
    assert json.loads(props["seg_thresh"]) == 0.0 and json.loads(props["seg_small_segment"]) == 0
    assert "tiles_size" not in props and json.loads(props["tile_size"]) == 512
