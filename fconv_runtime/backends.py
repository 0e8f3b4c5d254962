"""The two runtimes of an exported model, behind one interface (:class:`fconv_runtime.search.Backend`):
numpy arrays in, numpy arrays out.

* ``onnx``: two onnxruntime sessions (``encoder.onnx``, ``step.onnx``).  torch is never imported.
* ``aoti``: two AOTInductor packages (``encoder.pt2``, ``step.pt2``) loaded with
  ``torch._inductor.aoti_load_package``; torch is imported here only, and fairseq never.
  numpy arrays cross to torch without copies (``torch.from_numpy``, ``Tensor.numpy``).
"""

import os
from typing import Any, Dict, List, Optional

import numpy as np

from .artifact import ArtifactError


class OnnxBackend:
    def __init__(self, directory: str, manifest: Dict[str, Any], threads: Optional[int] = None):
        try:
            import onnxruntime
        except ImportError:
            raise ArtifactError("the onnx runtime needs onnxruntime: pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(
            os.path.join(directory, manifest["encoder"]["file"]), options, providers=providers
        )
        self.stepper = onnxruntime.InferenceSession(
            os.path.join(directory, manifest["step"]["file"]), options, providers=providers
        )
        self.encoder_inputs = [i.name for i in self.encoder.get_inputs()]
        self.step_inputs = [i.name for i in self.stepper.get_inputs()]
        self.window_shapes = [tuple(shape) for shape in manifest["step"]["window_shapes"]]
        bias = next((i for i in self.stepper.get_inputs() if i.name == "bias"), None)
        if bias is None or len(bias.shape) != 1:
            raise ArtifactError(
                f"{manifest['step']['file']} has no 'bias' input: it is not a step graph of this format; export again"
            )
        # the graph's own vocabulary (the output projection's rows); with a shortlist the bias is one
        # entry per scored word, a dynamic size, and the manifest's number is the one to check against
        fixed = isinstance(bias.shape[0], int) and not manifest.get("shortlist")
        self.vocabulary = bias.shape[0] if fixed else manifest["model"]["target_vocabulary"]

    def encode(self, src_tokens: np.ndarray) -> List[np.ndarray]:
        return self.encoder.run(None, {self.encoder_inputs[0]: src_tokens})

    def step(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        return self.stepper.run(None, dict(zip(self.step_inputs, inputs)))


class AotiBackend:
    def __init__(self, directory: str, manifest: Dict[str, Any], threads: Optional[int] = None):
        try:
            import torch
            from torch._inductor import aoti_load_package
        except ImportError:
            raise ArtifactError(
                "an aoti export needs torch (the version that exported it: "
                f"{manifest.get('exporter', {}).get('torch', '?')}); or export with --format onnx"
            ) from None
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.encoder = aoti_load_package(os.path.join(directory, manifest["encoder"]["file"]))
        self.stepper = aoti_load_package(os.path.join(directory, manifest["step"]["file"]))
        self.window_shapes = [tuple(shape) for shape in manifest["step"]["window_shapes"]]
        self.vocabulary = manifest["model"]["target_vocabulary"]

    def _run(self, runner, inputs: List[np.ndarray]) -> List[np.ndarray]:
        with self.torch.inference_mode():
            # the package was compiled for contiguous inputs; a window the previous call returned may be a view
            outputs = runner(*[self.torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [y.numpy() for y in outputs]

    def encode(self, src_tokens: np.ndarray) -> List[np.ndarray]:
        return self._run(self.encoder, [src_tokens])

    def step(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        return self._run(self.stepper, inputs)


BACKENDS = {"onnx": OnnxBackend, "aoti": AotiBackend}


def load_backend(directory: str, manifest: Dict[str, Any], threads: Optional[int] = None):
    runtime = manifest.get("runtime")
    if runtime not in BACKENDS:
        raise ArtifactError(
            f"{directory!r} was exported for runtime {runtime!r}; this fconv_runtime runs "
            f"{', '.join(sorted(BACKENDS))}: upgrade fconv-ext or export again"
        )
    return BACKENDS[runtime](directory, manifest, threads)
