"""The input shape an export target must produce, checked against the source artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvdeploy.errors import UsageError

if TYPE_CHECKING:
    from cvdeploy.export.base import ExportContext


def target_input_shape(
    ctx: ExportContext, fmt: str, *, dynamic_size_ok: bool
) -> tuple[int, int, int, int]:
    """The NCHW input shape a target must produce (``-1``: dynamic), checked against the source.

    Batch: ``-1`` with ``--dynamic``, else ``--batch``. Height and width: ``--imgsz``, else
    the source's static size, else the spec's; they stay dynamic only when the source's are
    and the format takes dynamic sizes (``dynamic_size_ok``) and ``--dynamic`` is given.

    Raises:
        UsageError: The source graph cannot give that shape (a fixed batch or size differs).
    """
    src = ctx.source.io
    opts = ctx.options
    c = ctx.spec.preprocess.channels
    batch = -1 if opts.dynamic else opts.batch
    if ctx.torch_module is None:
        if src.layout != "NCHW" or len(src.input.shape) != 4:
            raise UsageError(
                f"{fmt} export needs an NCHW image input; the source artifact {ctx.source.id} "
                f"takes {list(src.input.shape)} ({src.layout})"
            )
        sb = src.input.shape[0]
        if sb != -1 and sb != batch:
            want = "a dynamic batch (--dynamic)" if batch == -1 else f"batch {batch}"
            raise UsageError(
                f"the source artifact {ctx.source.id} has a fixed batch of {sb}; {fmt} cannot "
                f"be exported with {want} from it",
                hint="re-export the ONNX source with --dynamic (from the torch model), or drop "
                "--dynamic/--batch",
            )
        shw = src.input.shape[2:4]
        if -1 not in shw:
            if opts.imgsz is not None and tuple(opts.imgsz) != tuple(shw):
                raise UsageError(
                    f"the source artifact {ctx.source.id} has a fixed input size "
                    f"{shw[0]}x{shw[1]}; {fmt} cannot be exported at "
                    f"{opts.imgsz[0]}x{opts.imgsz[1]} from it",
                    hint="drop --imgsz, or export from a source with a dynamic input size",
                )
            return (batch, c, int(shw[0]), int(shw[1]))
        if opts.imgsz is None and opts.dynamic and dynamic_size_ok:
            return (batch, c, -1, -1)
    h, w = opts.imgsz or ctx.spec.imgsz
    return (batch, c, int(h), int(w))
