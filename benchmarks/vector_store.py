"""Embedded vector stores compared on the job's own rows: Qdrant (local mode) and LanceDB.

  python -m benchmarks.vector_store --rows OUTPUT_DIR [--queries 200] [-k 10]

Reads the enriched rows of a job's output (e.g. a replay of the shared
Wikipedia archive), then for each store: upserts every row by id in batches of
1000 (write throughput), upserts them all again (the count must not change),
and runs the first `--queries` rows' embeddings as queries: search latency
(p50, p95) and recall@k against exact search with numpy (ties counted as hits).
"""
import argparse
import json
import pathlib
import shutil
import tempfile
import time
import uuid

import numpy as np
import pyarrow.dataset as ds

from benchmarks.common import RESULTS

BATCH = 1000


def load_rows(folder):
  table = ds.dataset(pathlib.Path(folder) / 'enriched', format='parquet',
                     partitioning='hive').to_table(columns=['id', 'text', 'embedding'])
  vectors = table.column('embedding').combine_chunks()
  matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
  matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
  return table.column('id').to_pylist(), table.column('text').to_pylist(), matrix.astype(np.float32)


def qdrant_store(folder, dim):
  from qdrant_client import QdrantClient, models
  client = QdrantClient(path=folder)
  client.create_collection('events', vectors_config=models.VectorParams(
      size=dim, distance=models.Distance.COSINE))

  def upsert(ids, texts, vectors):
    client.upsert('events', points=[
        models.PointStruct(id=str(uuid.uuid5(uuid.NAMESPACE_URL, i)), vector=v.tolist(),
                           payload={'id': i, 'text': t}) for i, t, v in zip(ids, texts, vectors)])

  def search(vector, k):
    hits = client.query_points('events', query=vector.tolist(), limit=k).points
    return [hit.payload['id'] for hit in hits]

  return upsert, search, lambda: client.count('events').count


def lance_store(folder, dim):
  import lancedb
  import pyarrow as pa
  db = lancedb.connect(folder)
  schema = pa.schema([('id', pa.string()), ('text', pa.string()),
                      ('vector', pa.list_(pa.float32(), dim))])
  table = db.create_table('events', schema=schema)

  def upsert(ids, texts, vectors):
    data = pa.table([pa.array(ids), pa.array(texts),
                     pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)],
                    schema=schema)
    table.merge_insert('id').when_matched_update_all().when_not_matched_insert_all().execute(data)

  def search(vector, k):
    return table.search(vector).metric('cosine').limit(k).select(['id']).to_arrow() \
        .column('id').to_pylist()

  return upsert, search, table.count_rows


STORES = {'qdrant': qdrant_store, 'lancedb': lance_store}


def measure(name, ids, texts, matrix, queries, k):
  folder = tempfile.mkdtemp(prefix=f'{name}-')
  try:
    upsert, search, count = STORES[name](folder, matrix.shape[1])
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
      upsert(ids[start:start + BATCH], texts[start:start + BATCH], matrix[start:start + BATCH])
    write_s = time.perf_counter() - started
    for start in range(0, len(ids), BATCH):  # the same rows again: an idempotent upsert
      upsert(ids[start:start + BATCH], texts[start:start + BATCH], matrix[start:start + BATCH])
    rows_after_rewrite = count()
    # The archive repeats many texts, so top-k lists tie: a found row counts as
    # a hit when its exact score reaches the k-th best exact score.
    scores = matrix[:queries] @ matrix.T
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    position = {row_id: n for n, row_id in enumerate(ids)}
    latencies, hits = [], 0
    for q in range(queries):
      started = time.perf_counter()
      found = search(matrix[q], k)
      latencies.append(time.perf_counter() - started)
      hits += sum(scores[q, position[f]] >= kth[q] - 1e-5 for f in found[:k])
    return {'rows': len(ids), 'rows_after_rewrite': rows_after_rewrite,
            'upsert_rows_per_s': round(len(ids) / write_s),
            'search_p50_ms': round(1000 * float(np.percentile(latencies, 50)), 2),
            'search_p95_ms': round(1000 * float(np.percentile(latencies, 95)), 2),
            f'recall_at_{k}': round(hits / (queries * k), 4)}
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', required=True, help="A job's --output folder.")
  parser.add_argument('--queries', type=int, default=200)
  parser.add_argument('-k', type=int, default=10)
  parser.add_argument('--stores', default='qdrant,lancedb')
  args = parser.parse_args(argv)
  ids, texts, matrix = load_rows(args.rows)
  results = {}
  for name in args.stores.split(','):
    results[name] = measure(name, ids, texts, matrix, args.queries, args.k)
    print(name, json.dumps(results[name]), flush=True)
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / 'vector_store.json').write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
