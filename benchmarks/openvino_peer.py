"""OpenVINO int8 of a float torch model, as the peer of ``benchmarks/search.py``'s searched policies.

The model is exported to ONNX and quantized post-training by ``nncf.quantize`` on real calibration
images (the task's), exactly as ``benchmarks/peers.py`` does for ResNet-18; its accuracy is scored
here on the task's test split, and its latency is timed by ``peers.py``'s child process (a fresh
process per round, ``ONEDNN_MAX_CPU_ISA=AVX2`` for an AVX2 target), so the caller can interleave
it with its own rounds. Needs the peers extra: ``pip install -e ".[peers]"``.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402

#: NNCF's default calibration subset: batch-1 images drawn from the task's calibration batches.
CALIBRATION_IMAGES = 300


def available() -> str | None:
    """None when the peer can run here, else why not."""
    missing = peers._missing_packages().get("openvino")
    return peers._missing_message(missing) if missing else None


class OpenVINOInt8:
    """``model`` (float, eval mode) through ONNX and NNCF into ``workdir``; ``isa`` is ``"host"`` or ``"avx2"``."""

    def __init__(self, model, calibration_inputs: list, workdir: str, isa: str = "host", number: int = 20, repeat: int = 3):
        import torch

        os.makedirs(workdir, exist_ok=True)
        self.dir, self.isa = workdir, isa
        images = torch.cat([batch[0] for batch in calibration_inputs])[:CALIBRATION_IMAGES]
        x = images[:1]
        with torch.no_grad():
            ref = model(x).numpy()
        np.save(os.path.join(workdir, "x.npy"), x.numpy())
        np.save(os.path.join(workdir, "ref.npy"), ref)
        onnx_path = peers._export_onnx(model, x, workdir)
        peers._prepare_openvino(onnx_path, images.unsqueeze(1).numpy(), workdir)
        self.child_args = SimpleNamespace(isa=isa, number=number, repeat=repeat, input_size=int(x.shape[-1]))
        self.isa_seen: dict = {}

    def accuracy(self, split) -> float:
        """Top-1 accuracy on ``split`` (a :class:`~tvm_mpq.data.Split`), batch 1 as compiled, in this process."""
        import openvino as ov

        compiled = ov.Core().compile_model(os.path.join(self.dir, "ov_int8.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        images, labels = split.images.numpy(), split.labels.numpy()
        hits = sum(int(request.infer({0: images[i:i + 1]})[0].argmax() == labels[i]) for i in range(len(labels)))
        return hits / len(labels)

    def time_round(self, threads: int) -> float:
        """Seconds per batch-1 run, one round in a fresh process (``peers.py``'s OpenVINO child)."""
        res = peers._run_child("openvino", "model", threads, self.dir, self.child_args)
        if "error" in res:
            raise RuntimeError(f"OpenVINO child: {res['error']}")
        self.isa_seen = res.get("isa", {})
        return res["seconds"]
