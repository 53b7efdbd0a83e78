"""TensorRT backend: runs a serialized engine on an NVIDIA GPU (TensorRT 10 API).

Importing this module is cheap and never touches CUDA: :func:`tensorrt_unavailable` looks
for a GPU through the driver's files, and ``tensorrt`` is imported when a runner loads.
Device buffers come from torch (when it has CUDA) or from cuda-python.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.errors import BackendUnavailable, ModelLoadError
from cvdeploy.runtime.base import Runner, reject_unknown

_KNOWN = {"device_id"}


def nvidia_gpu_count(
    proc: Path = Path("/proc/driver/nvidia/gpus"), dev: Path = Path("/dev")
) -> int:
    """Number of NVIDIA GPUs the driver exposes (0 without a driver), without CUDA init."""
    if proc.is_dir():
        n = sum(1 for _ in proc.iterdir())
        if n:
            return n
    try:
        return sum(1 for p in dev.glob("nvidia[0-9]*"))
    except OSError:
        return 0


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot run here (``None`` when it can): no GPU, no driver, no package."""
    if nvidia_gpu_count() == 0:
        return "needs an NVIDIA GPU with CUDA (found none)"
    if ctypes.util.find_library("cuda") is None and not Path("/usr/lib/wsl/lib").is_dir():
        return "needs the NVIDIA CUDA driver (libcuda not found)"
    if importlib.util.find_spec("tensorrt") is None:
        return "pip install 'cvdeploy[tensorrt]' (missing tensorrt)"
    return None


class _TorchCuda:
    """Device memory and a stream from torch."""

    def __init__(self, device_id: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self.stream = torch.cuda.Stream(device=self.device)
        self._keep: list[Any] = []

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def upload(self, x: np.ndarray) -> int:
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=False)
        self._keep.append(t)
        return int(t.data_ptr())

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, Any]:
        tdt = self.torch.from_numpy(np.zeros(0, dtype)).dtype
        t = self.torch.empty(shape, dtype=tdt, device=self.device)
        self._keep.append(t)
        return int(t.data_ptr()), t

    def download(self, buf: Any) -> np.ndarray:
        return np.asarray(buf.cpu().numpy())

    def sync(self) -> None:
        self.stream.synchronize()

    def release(self) -> None:
        self._keep.clear()


class _CudaPython:
    """Device memory and a stream from cuda-python (``cuda.bindings.runtime``)."""

    def __init__(self, device_id: int) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6
            from cuda import cudart  # type: ignore[no-redef]
        self.rt = cudart
        self._check(cudart.cudaSetDevice(device_id))
        self.stream = self._check(cudart.cudaStreamCreate())
        self._ptrs: list[int] = []

    def _check(self, res: Any) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise ModelLoadError(f"CUDA call failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    @property
    def handle(self) -> int:
        return int(self.stream)

    def _malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))
        self._ptrs.append(ptr)
        return ptr

    def upload(self, x: np.ndarray) -> int:
        x = np.ascontiguousarray(x)
        ptr = self._malloc(x.nbytes)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, kind, self.stream))
        self.sync()
        return ptr

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, Any]:
        host = np.empty(shape, dtype)
        ptr = self._malloc(host.nbytes)
        return ptr, (ptr, host)

    def download(self, buf: Any) -> np.ndarray:
        ptr, host = buf
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))
        self.sync()
        return np.asarray(host)

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))

    def release(self) -> None:
        for p in self._ptrs:
            self.rt.cudaFree(p)
        self._ptrs.clear()


def _cuda_backend(device_id: int) -> _TorchCuda | _CudaPython:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return _TorchCuda(device_id)
    if importlib.util.find_spec("cuda") is not None:
        return _CudaPython(device_id)
    raise BackendUnavailable(
        "TensorRT needs device buffers: install torch with CUDA or cuda-python",
        hint="pip install cuda-python",
    )


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (``model.engine``) with ``execute_async_v3``."""

    format = "tensorrt"
    supports_bytes = True
    inference_precisions = frozenset({"f32", "f16"})  # fixed in the engine when it is built

    def _load(self) -> None:
        extra = dict(self.options.extra)
        reject_unknown(extra, _KNOWN, "tensorrt")
        reason = tensorrt_unavailable()
        if reason:
            raise BackendUnavailable(f"runtime 'tensorrt' is unavailable: {reason}")
        if self.model_bytes is None and not self.model_path.is_file():
            raise ModelLoadError(f"model file {self.model_path} does not exist")
        import tensorrt as trt

        self.trt = trt
        data = self.model_bytes if self.model_bytes is not None else self.model_path.read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelLoadError(
                f"TensorRT could not deserialize {self.model_path.name}",
                hint="engines are tied to the TensorRT version and GPU that built them; "
                "re-export on this machine",
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == mode]
        outs = [n for n in names if engine.get_tensor_mode(n) != mode]
        wanted = [o.name for o in self.io.outputs]
        self._outputs = wanted if sorted(wanted) == sorted(outs) else outs
        self.cuda = _cuda_backend(int(extra.get("device_id", 0)))

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        trt, ctx, engine = self.trt, self.context, self.engine
        name = self._inputs[0]
        want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        if x.dtype != want:
            x = x.astype(want)
        if not ctx.set_input_shape(name, tuple(x.shape)):
            raise ModelLoadError(
                f"the engine's optimisation profile does not cover input shape {list(x.shape)}"
            )
        try:
            ctx.set_tensor_address(name, self.cuda.upload(x))
            bufs = []
            for out in self._outputs:
                shape = tuple(ctx.get_tensor_shape(out))
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(out)))
                ptr, buf = self.cuda.empty(shape, dtype)
                ctx.set_tensor_address(out, ptr)
                bufs.append(buf)
            if not ctx.execute_async_v3(self.cuda.handle):
                raise ModelLoadError("TensorRT execute_async_v3 failed")
            self.cuda.sync()
            return [self.cuda.download(b).astype(np.float32, copy=False) for b in bufs]
        finally:
            self.cuda.release()

    def _close(self) -> None:
        self.cuda.release()
        del self.context, self.engine, self._runtime
