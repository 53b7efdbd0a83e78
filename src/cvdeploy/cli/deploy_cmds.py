"""`cvdeploy package`, `cvdeploy batch`, `cvdeploy card`: deploy a bundle anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json


@handle_errors
def card_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[
        Path | None, typer.Option(help="write MODEL_CARD.md and CHANGELOG.md here [the bundle]")
    ] = None,
    intended_use: Annotated[
        str | None, typer.Option(help="intended use (kept in the bundle's card.yaml)")
    ] = None,
    limitations: Annotated[
        str | None, typer.Option(help="known limitations (kept in card.yaml)")
    ] = None,
    license_: Annotated[
        str | None, typer.Option("--license", help="licence id, e.g. apache-2.0 (card.yaml)")
    ] = None,
    authors: Annotated[str | None, typer.Option(help="authors (card.yaml)")] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="Ed25519 public key: verify the signature and say so in the card"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the paths as JSON")] = False,
) -> None:
    """Write MODEL_CARD.md (Hugging Face-style metadata, intended use and limitations, the
    preprocessing contract, every artifact with its hash, signature status, precision, mAP
    with a bootstrap interval and latency on named hardware, optimization settings, history)
    and CHANGELOG.md, both generated from bundle.json.

    Every command that changes the bundle refreshes them; run this to add the hand-written
    fields, to verify the signature with --public-key, or to write them elsewhere (--out).
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.deploy import write_card, write_notes

    b = Bundle.load(bundle)
    fields = {
        "intended_use": intended_use,
        "limitations": limitations,
        "license": license_,
        "authors": authors,
    }
    if any(v is not None for v in fields.values()):
        write_notes(b.path, **fields)
    files = write_card(b, out=out, public_key=public_key)
    if json_out:
        print_json({"card": files.card, "changelog": files.changelog})
        return
    out_console().print(f"wrote {files.card}")
    err_console().print(f"and {files.changelog}")


TARGET_NAMES = ("docker", "kubernetes", "triton", "sagemaker", "vertex", "azureml", "ray")


@handle_errors
def package_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    target: Annotated[str, typer.Option(help=" | ".join(TARGET_NAMES))],
    out: Annotated[Path, typer.Option(help="directory to write (must be new or empty)")],
    artifact: Annotated[
        str | None, typer.Option(help="artifact id [the recommended, else by format]")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="image name:tag [cvdeploy-NAME:VERSION]")
    ] = None,
    base: Annotated[
        str, typer.Option(help="default of the Dockerfile's BASE build argument")
    ] = "python:3.11-slim",
    port: Annotated[int, typer.Option(help="port the server listens on in the container")] = 8080,
    wheels: Annotated[
        bool,
        typer.Option(help="download every wheel into the build context now (offline build)"),
    ] = False,
    python_version: Annotated[
        str, typer.Option(help="the base image's Python (--wheels)")
    ] = "3.11",
    cvdeploy_wheel: Annotated[
        Path | None, typer.Option(help="cvdeploy wheel to install [built from this checkout]")
    ] = None,
    extras: Annotated[
        str | None, typer.Option(help="more cvdeploy extras in the image, comma-separated")
    ] = None,
    key_env: Annotated[
        str | None,
        typer.Option(help="encrypted bundle: the variable the container reads the key from"),
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="encrypted bundle: check this key decrypts it now")
    ] = None,
    trusted_key: Annotated[
        Path | None, typer.Option(help="Ed25519 public key: the server loads only signed bundles")
    ] = None,
    replicas: Annotated[int, typer.Option(help="replicas (kubernetes, cloud, ray)")] = 2,
    max_replicas: Annotated[int, typer.Option(help="autoscaling upper bound")] = 8,
    max_batch: Annotated[int, typer.Option(help="largest batch per inference call")] = 8,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace")] = None,
    tls_secret: Annotated[
        str | None, typer.Option(help="Kubernetes TLS Secret: the server speaks HTTPS")
    ] = None,
    kserve: Annotated[bool, typer.Option(help="also write KServe InferenceServices")] = False,
    canary: Annotated[
        int | None, typer.Option(help="KServe: percent of traffic to this version")
    ] = None,
    stable_image: Annotated[
        str | None, typer.Option(help="KServe canary: the image serving now")
    ] = None,
    build: Annotated[
        bool, typer.Option(help="docker: build the image now and report its size")
    ] = False,
    engine: Annotated[
        str, typer.Option(envvar="CVDEPLOY_ENGINE", help="podman | docker | auto (--build)")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Write a directory that deploys the bundle to a target, usable as is.

    docker: a multi-stage Dockerfile (BASE build argument, non-root, HEALTHCHECK on /readyz,
    only the runtime the artifact needs), .dockerignore, the bundle, serve.yaml, a README with
    the two commands. kubernetes: Deployment, Service, HPA, PDB, NetworkPolicy, ConfigMap
    (+ KServe with --kserve). triton: a model repository and a client. sagemaker, vertex,
    azureml: the same image and the platform's deployment files. ray: a Ray Serve config.
    """
    from cvdeploy.deploy import PackageOptions, package_bundle

    if target not in TARGET_NAMES:
        from cvdeploy.errors import UsageError

        raise UsageError(f"unknown target {target!r}", hint=f"use one of {', '.join(TARGET_NAMES)}")
    opts = PackageOptions(
        artifact=artifact,
        image=image,
        base=base,
        port=port,
        wheels=wheels,
        python_version=python_version,
        cvdeploy_wheel=cvdeploy_wheel,
        extras=tuple(e.strip() for e in (extras or "").split(",") if e.strip()),
        key_env=key_env,
        key_file=key_file,
        trusted_key=trusted_key,
        replicas=replicas,
        max_replicas=max_replicas,
        max_batch=max_batch,
        namespace=namespace,
        tls_secret=tls_secret,
        kserve=kserve,
        canary=canary,
        stable_image=stable_image,
        progress=not json_out,
    )
    if build and target != "docker":
        from cvdeploy.errors import UsageError

        raise UsageError("--build builds the docker target's image", hint="use --target docker")
    eng = None
    if build:
        from cvdeploy.deploy import find_engine

        eng = find_engine(engine)  # before writing anything: no engine, no build
    if not json_out:
        err_console().print(f"packaging {bundle} for {target} into {out}")
    res = package_bundle(bundle, target, out, options=opts, overwrite=overwrite)
    result = res.to_dict()
    if eng is not None and res.image is not None:
        if not json_out:
            err_console().print(f"building {res.image} with {eng.name} (base {base})")
        eng.build(res.out, res.image, build_args={"BASE": base})
        result["image_size_mb"] = round(eng.image_size(res.image) / 1e6, 1)
    if json_out:
        print_json(result)
        return
    con = out_console()
    con.print(f"wrote {res.out} ({len(res.files)} files) for artifact {res.artifact}")
    if "image_size_mb" in result:
        con.print(f"built {res.image}: {result['image_size_mb']} MB")
    for note in res.notes:
        con.print(f"  note: {note}")
    con.print("then:")
    for c in res.commands:
        con.print(f"  {c}")


@handle_errors
def batch_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    images: Annotated[
        str,
        typer.Option(
            "--data",
            "--images",
            help="the images: a folder (recursive), a quoted glob, or a dataset yaml / COCO json",
        ),
    ],
    out: Annotated[Path, typer.Option(help="JSON-lines file (appended to when resuming)")],
    artifact: Annotated[str | None, typer.Option(help="artifact id [recommended]")] = None,
    batch: Annotated[int, typer.Option(help="images per inference call")] = 8,
    threads: Annotated[int | None, typer.Option(help="runtime threads per predictor")] = None,
    conf: Annotated[float | None, typer.Option(help="confidence threshold [spec]")] = None,
    iou: Annotated[float | None, typer.Option(help="NMS IoU threshold [spec]")] = None,
    max_det: Annotated[int | None, typer.Option(help="most detections per image [spec]")] = None,
    resume: Annotated[
        bool, typer.Option(help="skip images already in --out (--no-resume: start over)")
    ] = True,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="model key file")] = None,
    key_env: Annotated[
        str | None, typer.Option("--key-env", help="env variable holding the model key")
    ] = None,
    ray: Annotated[
        bool, typer.Option(help="run on Ray Data (pip install 'cvdeploy[ray]')")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [a local instance on 127.0.0.1]")
    ] = None,
    actors: Annotated[int, typer.Option(help="Ray actors, one predictor each")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Offline inference over a folder or a glob into JSON lines (one line per image).

    Resumable: a rerun skips the images already written. In-process by default; with --ray,
    on Ray Data (map_batches over an actor pool, one predictor per actor), locally or on a
    cluster (--address), with the same output.
    """
    from cvdeploy.deploy import BatchOptions, batch_predict

    if address is not None and not ray:
        from cvdeploy.errors import UsageError

        raise UsageError("--address is the Ray cluster's: add --ray")
    if ray:
        import os

        from cvdeploy.deploy.ray import LOOPBACK_ENV, require_ray

        if address is None:  # a local instance: every Ray process on the loopback
            os.environ.setdefault(LOOPBACK_ENV, "0")  # read when ray is imported
        require_ray()
    opts = BatchOptions(
        artifact=artifact,
        batch=batch,
        threads=threads,
        conf=conf,
        iou=iou,
        max_det=max_det,
        resume=resume,
        progress=not json_out,
        key_file=key_file,
        key_env=key_env,
        ray=ray,
        address=address,
        actors=actors,
    )
    rep = batch_predict(bundle, images, out, options=opts)
    if json_out:
        print_json(rep.to_dict())
        return
    out_console().print(
        f"{rep.processed} image(s) written to {rep.out} ({rep.done_before} already there, "
        f"{rep.errors} unreadable) in {rep.seconds:.1f} s with {rep.engine} ({rep.artifact})"
    )
