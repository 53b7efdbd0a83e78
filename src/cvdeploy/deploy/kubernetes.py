"""The kubernetes target: manifests for the server image, sized from the bundle's measurements.

Writes ``deployment.yaml`` (probes on ``/readyz`` and ``/healthz``, resources from the
measured peak memory and threads, non-root with a read-only root file system, the model key
and TLS from Secrets), ``service.yaml``, ``hpa.yaml``, ``pdb.yaml``, ``networkpolicy.yaml``,
``configmap.yaml`` (the server configuration), ``secret.example.yaml`` when the bundle is
encrypted, and with ``--kserve`` the KServe InferenceServices (``kserve/``): one for
Serverless mode, where KServe's ``canaryTrafficPercent`` splits traffic, and a pair plus a
Service for RawDeployment mode, where KServe ignores that field (kserve#5335) and the split is
made by replica counts behind one Service. The image itself is the docker target's
(``docker/`` beside the manifests).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.deploy.base import (
    CONTAINER_FORMATS,
    PackageOptions,
    PackageResult,
    check_key,
    default_image,
    target_artifact,
)
from cvdeploy.deploy.docker import serve_config, write_context
from cvdeploy.errors import UsageError

__all__ = ["kserve_manifests", "manifests", "package_kubernetes", "resources_for"]

PORT_NAME = "http"
KEY_SECRET_KEY = "model.key"
CONFIG_DIR = "/etc/cvdeploy"
TLS_DIR = "/etc/cvdeploy-tls"


def _labels(name: str, version: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "cvdeploy",
    }
    if version:
        out["app.kubernetes.io/version"] = version
    return out


def _k8s_name(bundle: Bundle) -> str:
    name = "".join(c if c.isalnum() else "-" for c in bundle.name.lower()).strip("-")
    return (name or "model")[:50]


def resources_for(art: Artifact, bundle: Bundle) -> tuple[dict[str, Any], list[str]]:
    """Container resources from the artifact's benchmarks, and notes on where they came from.

    Memory: the largest peak RSS measured (``cvdeploy bench``) x 1.5 as the request, twice
    that as the limit. CPU: the threads the recommended configuration (or the fastest
    benchmark) used, as the request; no CPU limit (a limit throttles a latency-bound
    server, and the HorizontalPodAutoscaler scales on the request).
    """
    notes = []
    lat = [c for c in art.checks if c.kind == "latency"]
    rss = [float(c.data["peak_rss_mb"]) for c in lat if c.data.get("peak_rss_mb")]
    if rss:
        mem = max(256, int(math.ceil(max(rss) * 1.5 / 64) * 64))
        notes.append(f"memory: request {mem}Mi = 1.5 x the peak RSS measured ({max(rss):.0f} MB)")
    else:
        mem = 1024
        notes.append("memory: not measured (run `cvdeploy bench`), 1024Mi assumed")
    rec = bundle.manifest.recommended
    threads = rec.options.threads if rec is not None and rec.artifact == art.id else None
    if threads is None:
        timed = [c for c in lat if c.data.get("threads") and c.data.get("e2e_ms")]
        if timed:
            best = min(timed, key=lambda c: float((c.data["e2e_ms"] or {}).get("p50") or 1e9))
            threads = int(best.data["threads"])
    if threads:
        notes.append(f"cpu: request {threads} = the threads of the measured configuration")
    else:
        threads = 1
        notes.append("cpu: threads not measured, 1 CPU assumed")
    res = {
        "requests": {"cpu": str(threads), "memory": f"{mem}Mi"},
        "limits": {"memory": f"{mem * 2}Mi"},
    }
    return res, notes


def _container(
    art: Artifact, options: PackageOptions, image: str, resources: dict[str, Any], tls: bool
) -> dict[str, Any]:
    scheme = "HTTPS" if tls else "HTTP"
    env: list[dict[str, Any]] = [
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "PORT", "value": str(options.port)},
        {"name": "CVDEPLOY_CONFIG", "value": f"{CONFIG_DIR}/serve.yaml"},
    ]
    if art.encryption is not None:
        env.append(
            {
                "name": str(options.key_env),
                "valueFrom": {"secretKeyRef": {"name": "MODEL_KEY_SECRET", "key": KEY_SECRET_KEY}},
            }
        )
    # the ConfigMap as a directory (no subPath: it follows ConfigMap updates, and podman
    # kube play mounts it too); CVDEPLOY_CONFIG points the entrypoint at it
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if tls:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": PORT_NAME, "containerPort": options.port, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": PORT_NAME, "scheme": scheme},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT_NAME, "scheme": scheme},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def manifests(
    bundle: Bundle,
    art: Artifact,
    options: PackageOptions,
    *,
    image: str,
    tls_secret: str | None = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The Kubernetes objects by file name, and notes on how they were sized."""
    name = _k8s_name(bundle)
    labels = _labels(name, image.rpartition(":")[2] if ":" in image else None)
    selector = {"app.kubernetes.io/name": name}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if options.namespace:
        meta["namespace"] = options.namespace
    resources, notes = resources_for(art, bundle)
    container = _container(art, options, image, resources, tls_secret is not None)
    key_secret = f"{name}-model-key"
    for e in container["env"]:
        if "valueFrom" in e:
            e["valueFrom"]["secretKeyRef"]["name"] = key_secret
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config", "defaultMode": 0o444}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if tls_secret is not None:
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
    cfg = serve_config(art, options, trusted=None)
    if tls_secret is not None:
        cfg["tls"] = {"cert": f"{TLS_DIR}/tls.crt", "key": f"{TLS_DIR}/tls.key"}
    objs: dict[str, dict[str, Any]] = {}
    objs["configmap.yaml"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**meta, "name": f"{name}-config"},
        "data": {"serve.yaml": yaml.safe_dump(cfg, sort_keys=False)},
    }
    objs["deployment.yaml"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(options.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    objs["service.yaml"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    objs["hpa.yaml"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas,
            "maxReplicas": max(options.replicas, options.max_replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }
    objs["pdb.yaml"] = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta,
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    objs["networkpolicy.yaml"] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            # Inference requests from anywhere in the cluster, on the server port only; no
            # egress at all: the server needs no network (the model is in the image).
            "ingress": [
                {
                    "from": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "TCP", "port": options.port}],
                }
            ],
            "egress": [],
        },
    }
    if art.encryption is not None:
        objs["secret.example.yaml"] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**meta, "name": key_secret},
            "type": "Opaque",
            "stringData": {KEY_SECRET_KEY: "REPLACE-with-the-content-of-model.key"},
        }
    return objs, notes


def kserve_manifests(
    bundle: Bundle,
    art: Artifact,
    options: PackageOptions,
    *,
    image: str,
) -> dict[str, list[dict[str, Any]]]:
    """KServe InferenceServices: ``serverless.yaml`` and ``raw.yaml`` (see the module doc)."""
    name = _k8s_name(bundle)
    resources, _ = resources_for(art, bundle)

    def container(img: str) -> dict[str, Any]:
        c = _container(art, options, img, resources, tls=False)
        c["name"] = "kserve-container"
        c.pop("volumeMounts")
        c["securityContext"]["readOnlyRootFilesystem"] = False  # no /tmp volume here
        if art.encryption is not None:
            for e in c["env"]:
                if "valueFrom" in e:
                    e["valueFrom"]["secretKeyRef"]["name"] = f"{name}-model-key"
        return c

    def isvc(
        isvc_name: str, img: str, mode: str, *, replicas: tuple[int, int], extra: dict[str, Any]
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": isvc_name,
            "labels": {**_labels(name), "app.kubernetes.io/part-of": name},
            "annotations": {"serving.kserve.io/deploymentMode": mode},
        }
        if options.namespace:
            meta["namespace"] = options.namespace
        predictor: dict[str, Any] = {
            "minReplicas": replicas[0],
            "maxReplicas": replicas[1],
            "labels": {"app.kubernetes.io/part-of": name},
            "containers": [container(img)],
            **extra,
        }
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": meta,
            "spec": {"predictor": predictor},
        }

    canary = options.canary
    serverless_extra = {"canaryTrafficPercent": canary} if canary is not None else {}
    out: dict[str, list[dict[str, Any]]] = {
        "serverless.yaml": [
            isvc(
                name,
                image,
                "Serverless",
                replicas=(options.replicas, max(options.replicas, options.max_replicas)),
                extra=serverless_extra,
            )
        ]
    }
    if canary is None:
        out["raw.yaml"] = [
            isvc(
                name,
                image,
                "RawDeployment",
                replicas=(options.replicas, max(options.replicas, options.max_replicas)),
                extra={},
            )
        ]
        return out
    if options.stable_image is None:
        raise UsageError(
            "--canary needs --stable-image: the image of the version serving now",
            hint="e.g. --stable-image registry.example.com/cvdeploy-model:1.0",
        )
    # the split is made by replica counts: enough replicas for the percentage (at most 20)
    total = max(options.replicas, min(20, math.ceil(100 / max(min(canary, 100 - canary), 1))))
    n_canary = max(1, round(total * canary / 100))
    n_stable = max(1, total - n_canary)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": _labels(name),
            **({"namespace": options.namespace} if options.namespace else {}),
        },
        "spec": {
            "selector": {"app.kubernetes.io/part-of": name},
            "ports": [{"name": PORT_NAME, "port": 80, "targetPort": options.port}],
        },
    }
    out["raw.yaml"] = [
        isvc(
            f"{name}-stable",
            options.stable_image,
            "RawDeployment",
            replicas=(n_stable, n_stable),
            extra={},
        ),
        isvc(f"{name}-canary", image, "RawDeployment", replicas=(n_canary, n_canary), extra={}),
        service,
    ]
    return out


def _dump(path: Path, docs: list[dict[str, Any]] | dict[str, Any]) -> None:
    items = docs if isinstance(docs, list) else [docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(items, sort_keys=False), encoding="utf-8")


def package_kubernetes(bundle: Bundle, out: Path, options: PackageOptions) -> PackageResult:
    """The kubernetes target (registered in :data:`cvdeploy.deploy.base.TARGETS`)."""
    art = target_artifact(bundle, options.artifact, formats=CONTAINER_FORMATS, target="kubernetes")
    check_key(bundle, art, options)
    if options.canary is not None and not 0 < options.canary < 100:
        raise UsageError(f"--canary must be a percentage in 1..99, got {options.canary}")
    if options.canary is not None and not options.kserve:
        raise UsageError("--canary splits traffic between KServe InferenceServices: add --kserve")
    image = options.image or default_image(bundle)
    objs, notes = manifests(bundle, art, options, image=image, tls_secret=options.tls_secret)
    for fname, obj in objs.items():
        _dump(out / fname, obj)
    files = sorted(objs)
    if options.kserve:
        for fname, docs in kserve_manifests(bundle, art, options, image=image).items():
            _dump(out / "kserve" / fname, docs)
    write_context(bundle, out / "docker", options)
    apply = " ".join(f"-f {f}" for f in files if f != "secret.example.yaml")
    commands = [
        f"docker build -t {image} docker/ && docker push {image}",
        f"kubectl apply {apply}",
    ]
    if art.encryption is not None:
        commands.insert(
            1,
            f"kubectl create secret generic {_k8s_name(bundle)}-model-key "
            f"--from-file={KEY_SECRET_KEY}=model.key",
        )
    if options.kserve:
        commands.append("kubectl apply -f kserve/serverless.yaml   # or kserve/raw.yaml")
    notes.append(
        f"the server listens on 0.0.0.0:{options.port} inside its pod; the NetworkPolicy "
        "admits only that port and no egress"
    )
    return PackageResult(
        target="kubernetes",
        out=out,
        artifact=art.id,
        image=image,
        commands=commands,
        notes=notes,
    )
