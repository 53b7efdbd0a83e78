#!/bin/sh
# cvdeploy container entrypoint: `cvdeploy serve` on the baked-in bundle, or on the bundle a
# platform mounts (SageMaker /opt/ml/model, Azure ML $AZUREML_MODEL_DIR), answering that
# platform's contract as well (cvdeploy serve --platform auto reads the environment).
set -eu
if [ "${1:-}" = serve ]; then  # SageMaker starts the container as `IMAGE serve`
    shift
    export CVDEPLOY_PLATFORM="${CVDEPLOY_PLATFORM:-sagemaker}"
fi
BUNDLE="${CVDEPLOY_BUNDLE:-/opt/cvdeploy/bundle}"
for d in /opt/ml/model "${AZUREML_MODEL_DIR:-}"; do
    if [ -n "$d" ] && [ -f "$d/bundle.json" ]; then
        BUNDLE="$d"
    fi
done
exec cvdeploy serve "$BUNDLE" --config "${CVDEPLOY_CONFIG:-/opt/cvdeploy/serve.yaml}" \
    --host "${HOST:-0.0.0.0}" --port "${AIP_HTTP_PORT:-${PORT:-@@PORT@@}}" \
    --platform "${CVDEPLOY_PLATFORM:-auto}" "$@"
