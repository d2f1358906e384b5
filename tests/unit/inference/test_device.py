"""Device arrays and host↔device copies (``inference/device.py``), on the host and on torch CPU tensors.

The CUDA path (pinned ring, events, own stream) is the same code with pinning switched on; its
behaviour that needs a GPU is checked in the ``gpu``-marked test at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flair_deploy.inference.device import HOST, TorchDevice


@pytest.mark.parametrize("device", [HOST, TorchDevice("cpu")], ids=["numpy", "torch-cpu"])
def test_staged_uint8_batches_round_trip_unchanged(device):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 5, 16, 16), dtype=np.uint8)
    staged = device.staging(data.shape, data.dtype)
    assert staged.shape == data.shape and staged.dtype == np.uint8
    staged[...] = data
    on_device = device.upload(staged)
    xp = device.xp
    assert on_device.dtype == xp.uint8  # raw values cross as they are; casting is the device's job
    doubled = xp.astype(on_device, xp.float32) * 2.0
    back = device.download(doubled).result()
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, data.astype(np.float32) * 2)


def test_a_download_is_a_copy_the_device_may_overwrite_afterwards():
    dev = TorchDevice("cpu")
    band = dev.asarray(np.arange(6, dtype=np.float32))
    rows = dev.download(dev.xp.asarray(band[:3], copy=True))
    band[:] = -1  # the stitcher shifts and clears its band right after queuing a copy
    np.testing.assert_array_equal(rows.result(), [0, 1, 2])


def test_torch_device_names_itself_and_has_no_stream_on_cpu():
    dev = TorchDevice("cpu")
    assert dev.name == "cpu" and dev.is_host and dev.cuda_stream is None
    with dev.stream():
        dev.synchronize()  # no-ops on the host, so CPU runs take the GPU code unchanged


@pytest.mark.gpu
def test_cuda_staging_ring_reuses_a_slot_only_after_its_upload_landed():  # pragma: no cover - GPU only
    dev = TorchDevice("cuda", slots=2)
    shapes = (16, 5, 512, 512)
    slots = [dev.staging(shapes, np.uint8) for _ in range(2)]
    for i, s in enumerate(slots):
        s[...] = i
    ups = [dev.upload(s) for s in slots]
    again = dev.staging(shapes, np.uint8)  # the first slot again, after its copy finished
    assert again.__array_interface__["data"][0] == slots[0].__array_interface__["data"][0]
    again[...] = 9
    dev.synchronize()
    assert int(ups[0].max()) == 0 and int(ups[1].max()) == 1  # the in-flight copy was not spoiled
    assert ups[0].is_cuda and torch.cuda.current_stream() != dev.cuda_stream
