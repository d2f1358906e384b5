"""The FLAIR data format: statistics per band, the one patch-list rule, raster suffixes."""

from __future__ import annotations

import pytest

from flair_deploy.errors import ConfigError, InputDataError
from flair_deploy.flair_format import (
    FLAIR_BANDS,
    FLAIR_RVBIE_MEAN,
    FLAIR_RVBIE_STD,
    RASTER_SUFFIXES,
    PatchPair,
    flair_statistics,
    list_rasters,
    read_patch_csv,
)


def test_statistics_follow_the_bands_asked_for():
    assert flair_statistics(FLAIR_BANDS) == (FLAIR_RVBIE_MEAN, FLAIR_RVBIE_STD)
    mean, std = flair_statistics(("NIR", "r", "G"))
    assert mean == (106.38, 105.08, 110.87) and std == (39.69, 52.17, 45.38)
    assert flair_statistics((4, 1, 2)) == (mean, std)  # 1-based FLAIR band numbers
    with pytest.raises(ConfigError, match=r"band\(s\) \['SWIR', 6\] have no FLAIR statistics"):
        flair_statistics(("R", "SWIR", 6))


@pytest.fixture
def files(tmp_path):
    for name in ("IMG_1.tif", "MSK_1.tif", "IMG_2.tif", "MSK_2.tif"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_flair_list_without_header(files):
    csv = files / "train.csv"
    csv.write_text("IMG_1.tif,MSK_1.tif\n\n  IMG_2.tif , MSK_2.tif \n")
    pairs = read_patch_csv(csv)
    assert pairs == [
        PatchPair(files / "IMG_1.tif", files / "MSK_1.tif"),
        PatchPair(files / "IMG_2.tif", files / "MSK_2.tif"),
    ]
    assert [p.line for p in pairs] == [1, 3]  # blank lines skipped, lines still counted


def test_header_row_names_the_columns(files):
    csv = files / "val.csv"
    # A header (even with a BOM, as spreadsheets write it) picks columns by name; other columns are ignored.
    csv.write_text("\ufeffid,MSK,Image\n1,MSK_1.tif,IMG_1.tif\n2,MSK_2.tif,IMG_2.tif\n", encoding="utf-8")
    assert read_patch_csv(csv) == [
        PatchPair(files / "IMG_1.tif", files / "MSK_1.tif"),
        PatchPair(files / "IMG_2.tif", files / "MSK_2.tif"),
    ]
    csv.write_text("img\nIMG_1.tif\n")
    assert read_patch_csv(csv, require_masks=False) == [PatchPair(files / "IMG_1.tif", None)]
    with pytest.raises(InputDataError, match=r"val\.csv, line 1: the header names no mask column"):
        read_patch_csv(csv)


def test_relative_paths_resolve_against_the_csv_folder(files, monkeypatch, tmp_path_factory):
    lists = files / "lists"
    lists.mkdir()
    csv = lists / "test.csv"
    csv.write_text(f"../IMG_1.tif,{files / 'MSK_1.tif'}\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    (pair,) = read_patch_csv(csv)
    assert pair.image.resolve() == (files / "IMG_1.tif").resolve() and pair.mask == files / "MSK_1.tif"


def test_errors_name_the_csv_and_line(files):
    csv = files / "l.csv"
    csv.write_text("IMG_1.tif,MSK_1.tif\nIMG_3.tif,MSK_1.tif\n")
    with pytest.raises(
        InputDataError, match=r"l\.csv, line 2: image file .*IMG_3\.tif does not exist \(relative"
    ):
        read_patch_csv(csv)
    csv.write_text("IMG_1.tif,MSK_1.tif,extra\n")
    with pytest.raises(InputDataError, match=r"line 1: got 3 column"):
        read_patch_csv(csv, require_masks=False)
    csv.write_text("IMG_1.tif,\n")
    with pytest.raises(InputDataError, match=r"line 1: the mask column is empty"):
        read_patch_csv(csv)
    csv.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputDataError, match="cannot read patch list"):
        read_patch_csv(csv)


def test_raster_listing(tmp_path):
    assert set(RASTER_SUFFIXES) == {".tif", ".tiff", ".vrt", ".jp2"}
    for name in ("b.TIF", "a.jp2", "c.vrt", "notes.txt", ".a.tif.123.part", "d.tiff"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.tif").write_bytes(b"")
    assert [p.name for p in list_rasters(tmp_path)] == ["a.jp2", "b.TIF", "c.vrt", "d.tiff"]
    assert [p.name for p in list_rasters(tmp_path, recursive=True)][-1] == "e.tif"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match=r"holds no raster \(\.tif, \.tiff, \.vrt, \.jp2\)"):
        list_rasters(tmp_path / "empty")


def test_detect_takes_the_same_rasters_from_a_folder(tmp_path):
    # One suffix table: a .jp2 that export --calibration accepts is also a detect input.
    from flair_deploy.inference.detect import expand_inputs

    for name in ("ortho.jp2", "ortho.tif", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    assert (
        expand_inputs([tmp_path])
        == list_rasters(tmp_path)
        == [tmp_path / "ortho.jp2", tmp_path / "ortho.tif"]
    )
