"""Load an ONNX file and map a raster with the QGIS Deepness plugin's own code, headless.

Run by the QGIS Python (see ``tests/gis_helpers.py``), never imported by pytest::

    python3 deepness_driver.py DEEPNESS_SRC ORT_SITE MODEL RASTER OUT.npy

``DEEPNESS_SRC`` is the plugin's ``src`` folder (used in place, nothing copied); ``ORT_SITE`` is a
site-packages folder holding onnxruntime, appended *after* the system's so numpy and QGIS stay the
system's. The script follows the dock widget's loading path (model type from the metadata, model
class, output check, tile size from the input shape, class names per output, the metadata defaults
of threshold, small-segment filter and overlap, else the dialog's defaults 0.5 and 9), then runs
``MapProcessorSegmentation._run`` (the QgsTask's body: tiling, per-tile threshold and argmax,
stitching, median filter, polygon layers) on the whole layer. Deepness needs OpenCV (``cv2``) as its
plugin does; Debian's ``python3-opencv`` provides it to the QGIS Python. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    deepness_src, ort_site, model_path, raster_path, out_path = sys.argv[1:6]
    sys.path.insert(0, deepness_src)
    sys.path.append(ort_site)
    import numpy as np
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], False)
    app.initQgis()
    try:
        import cv2  # noqa: F401 - Deepness imports it at module level
    except ImportError:
        print(json.dumps({"skip": "OpenCV is missing for the QGIS Python (apt-get install python3-opencv)"}))
        os._exit(0)
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import SegmentationParameters
    from deepness.processing.map_processor.map_processor_segmentation import MapProcessorSegmentation
    from deepness.processing.models.model_base import ModelBase
    from deepness.processing.models.model_types import ModelDefinition, ModelType

    try:
        type_name = ModelBase.get_model_type_from_metadata(model_path)
        model = ModelDefinition.get_definition_for_type(ModelType(type_name)).model_class(model_path)
        model.check_loaded_model_outputs()
        tile = model.get_input_shape()[-1]
        if not isinstance(tile, int):
            # The dock widget puts it in an integer spin box: a dynamic dimension is a string there.
            raise TypeError(f"tile size from the input shape is {tile!r}, not an integer")
        names = [
            [model.get_channel_name(i, c) for c in range(n)]
            for i, n in enumerate(model.get_number_of_output_channels())
        ]
    except Exception as exc:  # noqa: BLE001 - what the dock widget shows as "Failed to load the model"
        print(json.dumps({"loads": False, "error": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
        os._exit(0)

    thresh = model.get_metadata_segmentation_threshold()
    small = model.get_metadata_segmentation_small_segment()
    overlap = model.get_metadata_tiles_overlap()
    layer = QgsRasterLayer(raster_path, "ortho")
    QgsProject.instance().addMapLayer(layer)
    mapping = ChannelsMapping()
    mapping.set_image_channels(
        [
            ImageChannelStandaloneBand(band_number=b + 1, name=f"band {b + 1}")
            for b in range(layer.bandCount())
        ]
    )
    mapping.set_number_of_model_inputs(model.get_number_of_channels())
    params = SegmentationParameters(
        resolution_cm_per_px=model.get_metadata_resolution() or 10.0,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER,
        tile_size_px=tile,
        batch_size=model.get_model_batch_size() or 4,
        local_cache=False,
        input_layer_id=layer.id(),
        mask_layer_id=None,
        processing_overlap=ProcessingOverlap(
            ProcessingOverlapOptions.OVERLAP_IN_PERCENT, percentage=15 if overlap is None else overlap
        ),
        input_channels_mapping=mapping,
        postprocessing_dilate_erode_size=9 if small is None else small,
        model=model,
        pixel_classification__probability_threshold=0.5 if thresh is None else thresh,
    )
    processor = MapProcessorSegmentation(rlayer=layer, vlayer_mask=None, map_canvas=None, params=params)
    # The task's own body (tiling, per-tile threshold and argmax, stitching, median filter, the
    # polygon layers), run in this thread as QgsTask.run would.
    outcome = processor._run()
    result = processor.get_result_img()
    blur = int(params.postprocessing_dilate_erode_size // 2) * 2 + 1
    np.save(out_path, np.asarray(result))
    print(
        json.dumps(
            {
                "loads": True,
                "tile": tile,
                "outputs": len(model.get_number_of_output_channels()),
                "class_names": names,
                "threshold": params.pixel_classification__probability_threshold,
                "median_blur": blur,
                "message": type(outcome).__name__,
                "standardization_std": [float(v) for v in model.standardization_parameters.std],
            }
        ),
        flush=True,
    )
    os._exit(0)  # QgsApplication.exitQgis() crashes some headless builds on the way out


if __name__ == "__main__":
    main()
