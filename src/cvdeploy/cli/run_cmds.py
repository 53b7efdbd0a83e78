"""`cvdeploy predict`, `cvdeploy eval`: run a bundle on images and datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cvdeploy.bundle import Bundle
from cvdeploy.cli.common import err_console, handle_errors, out_console, parse_imgsz, print_json
from cvdeploy.cli.protect_cmds import KeyEnv, KeyFile
from cvdeploy.errors import UsageError
from cvdeploy.security.crypto import key_from_options, model_loader


@handle_errors
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    artifact: Annotated[str | None, typer.Option(help="artifact id (see `cvdeploy info`)")] = None,
    save: Annotated[Path | None, typer.Option(help="folder for images with results drawn")] = None,
    conf: Annotated[float | None, typer.Option(help="confidence threshold (default: spec)")] = None,
    iou: Annotated[float | None, typer.Option(help="NMS IoU threshold (default: spec)")] = None,
    max_det: Annotated[int | None, typer.Option(help="max detections per image")] = None,
    imgsz: Annotated[str | None, typer.Option(help="input size (dynamic artifacts only)")] = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads")] = None,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    json_out: Annotated[bool, typer.Option("--json", help="print results as JSON")] = False,
) -> None:
    """Predict on images; print detections (or classes) and optionally save drawn images."""
    import cv2

    from cvdeploy.data.folder import list_images
    from cvdeploy.data.io import read_image
    from cvdeploy.pipeline.draw import draw
    from cvdeploy.pipeline.predictor import Predictor, Thresholds
    from cvdeploy.runtime import RunnerOptions

    b = Bundle.load(bundle, loader=model_loader(key_from_options(key_file, key_env)))
    paths = list_images(images)
    opts = RunnerOptions(threads=threads) if threads else None
    pred = Predictor.from_bundle(
        b,
        artifact,
        options=opts,
        imgsz=parse_imgsz(imgsz),
        batch=1,
        thresholds=Thresholds(conf=conf, iou=iou, max_det=max_det),
    )
    names = b.spec.names
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
    records = []
    with pred:
        for p in paths:
            t0 = time.perf_counter()
            img = read_image(p)
            decode_ms = (time.perf_counter() - t0) * 1e3
            (res,), times = pred.predict_batch([img])
            rec = {
                "image": str(p),
                "width": img.shape[1],
                "height": img.shape[0],
                "results": res.to_dicts(names),
                "speed_ms": {"decode": decode_ms, **times.per_image()},
            }
            if save is not None:
                dst = save / f"{p.stem}.jpg"
                if not cv2.imwrite(str(dst), draw(img, res, names)):
                    raise UsageError(f"cannot write {dst}")
                rec["saved"] = str(dst)
            records.append(rec)
    if json_out:
        print_json({"artifact": pred.artifact_id, "predictions": records})
        return
    con = out_console()
    for rec in records:
        items = rec["results"]
        desc = ", ".join(
            f"{r.get('class_name', r.get('class_id'))} {r['score']:.2f}" for r in items[:12]
        )
        more = f" (+{len(items) - 12})" if len(items) > 12 else ""
        sp = rec["speed_ms"]
        con.print(
            f"{rec['image']}: {len(items)} result(s) {desc}{more}  "
            f"[{sp['decode']:.1f}+{sp['preprocess']:.1f}+{sp['inference']:.1f}"
            f"+{sp['postprocess']:.1f} ms]"
        )
    if records:
        err_console().print(
            "ms per image: [decode + preprocess + inference + postprocess] (the first image "
            "includes the runtime's warm-up)",
            markup=False,
        )
    if save is not None:
        err_console().print(f"saved {len(records)} image(s) to {save}")


@handle_errors
def eval_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    data: Annotated[
        Path,
        typer.Option(
            help="YOLO data.yaml (or its folder), COCO json, or a "
            "class-per-folder image tree (classifiers)"
        ),
    ],
    split: Annotated[str, typer.Option(help="dataset split")] = "val",
    images: Annotated[Path | None, typer.Option(help="image folder of a COCO json")] = None,
    artifact: Annotated[str | None, typer.Option(help="artifact id (default: recommended)")] = None,
    conf: Annotated[float, typer.Option(help="confidence threshold")] = 0.001,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold")] = 0.7,
    max_det: Annotated[int, typer.Option(help="max detections per image")] = 300,
    imgsz: Annotated[str | None, typer.Option(help="input size (default: the spec's)")] = None,
    batch: Annotated[int, typer.Option(help="images per inference call")] = 1,
    threads: Annotated[int | None, typer.Option(help="runtime threads")] = None,
    record: Annotated[bool, typer.Option(help="record the result in the bundle")] = True,
    per_class: Annotated[
        bool,
        typer.Option("--per-class", help="print a row per class (always in --json)"),
    ] = False,
    reference: Annotated[
        bool,
        typer.Option(
            help="with --record: also summarise the images (statistics, predictions, "
            "embeddings; up to 300) into the bundle as the drift reference of doctor and "
            "the server"
        ),
    ] = True,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """COCO mAP50-95 / mAP50 (pycocotools) with the Ultralytics validation protocol.

    With --record (the default) the result is recorded in the bundle, and the images are
    summarised as its drift reference (`cvdeploy doctor`, the server's drift check)."""
    from cvdeploy.runtime import RunnerOptions
    from cvdeploy.verify.evaluate import Protocol, evaluate_bundle

    b = Bundle.load(bundle, loader=model_loader(key_from_options(key_file, key_env)))
    proto = Protocol(conf=conf, iou=iou, max_det=max_det, imgsz=parse_imgsz(imgsz))
    rep = evaluate_bundle(
        b,
        data,
        artifact=artifact,
        split=split,
        images=images,
        protocol=proto,
        options=RunnerOptions(threads=threads) if threads else None,
        batch=batch,
        record=record,
        progress=not json_out,
    )
    ref_info = None
    if record and reference:
        from cvdeploy.diagnose import record_reference

        ref = record_reference(
            b,
            data,
            artifact=rep.artifact,
            split=split,
            images=images,
            name=rep.dataset,
            progress=not json_out,
            threads=threads,
        )
        ref_info = {"file": ref.file, "images": ref.images, "embedding_layer": ref.embedding_layer}
    if json_out:
        print_json({**rep.to_dict(), "reference": ref_info} if ref_info else rep.to_dict())
        return
    con = out_console()
    m = rep.metrics
    if "map50_95" in m:
        con.print(
            f"[bold]{rep.artifact}[/] ({rep.inference_precision} compute) on {rep.dataset} "
            f"({rep.images} images): mAP50-95 [bold]{m['map50_95']:.4f}[/]  "
            f"mAP50 {m['map50']:.4f}"
        )
        per = m.get("per_class", {})
        if per and not per_class:
            err_console().print(
                f"{len(per)} classes evaluated; --per-class prints each one's AP50-95"
            )
        elif per:
            t = Table(title="per-class AP50-95 (classes with ground truth)")
            t.add_column("class")
            t.add_column("AP50-95", justify="right")
            for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
                t.add_row(k, f"{v:.4f}")
            con.print(t)
    else:
        con.print(
            f"[bold]{rep.artifact}[/] ({rep.inference_precision} compute) on {rep.dataset} "
            f"({rep.images} images): top1 [bold]{m.get('top1', float('nan')):.4f}[/]  "
            f"top5 {m.get('top5', float('nan')):.4f}"
        )
    sp = rep.speed_ms
    con.print(
        f"speed per image: decode {sp['decode']:.1f} ms, preprocess "
        f"{sp['preprocess']:.1f} ms, inference {sp['inference']:.1f} ms, postprocess "
        f"{sp['postprocess']:.1f} ms"
    )
    if record:
        err_console().print(f"recorded in {b.path / 'bundle.json'}")
    if ref_info:
        err_console().print(
            f"drift reference: {ref_info['images']} images summarised into {ref_info['file']}"
        )
