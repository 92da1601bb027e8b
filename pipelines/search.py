"""Semantic search over the job's output.

  python -m pipelines.search "query text" --store DIR [-k 10] [--since T] [--until T]
      [--label L] [--json] [--queries FILE] [--model NAME_OR_PATH] [--table NAME]

DIR is the job's --output. When it holds a vector store (the job ran with
--sink vectors), or --store is lancedb:URI, the store's --table answers (default
events): queries are embedded by the model identity the table records
(models/identity.py), and a model that no longer gives that identity is refused.
Results are documents: the best chunk of each, with its offsets and text, never
one document twice. Otherwise the rows of DIR/enriched are ranked by exact search
over their Parquet embeddings, with the query embedded by the model named in the
rows (or --model). Both rank by score, then id, so ties come out alike. --json
prints one object per result: query, rank, id, score, text and the payload.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from models.identity import of_config
from models.loading import ModelConfig, load_sentence_transformer
from models.vectors import unit_rows
from transforms.eventtime import TimeParser, format_micros
from transforms.io.vector_store import TABLE, open_table, table_identity

_PAYLOAD = ('event_time', 'window_start', 'window_end', 'label', 'duplicate_of', 'source',
            'chunk', 'chunk_start', 'chunk_end', 'model', 'model_fingerprint')


def open_rows(store: str, since: Optional[str], until: Optional[str],
              label: Optional[str]) -> pa.Table:
  folder = os.path.join(store, 'enriched') if os.path.isdir(os.path.join(store, 'enriched')) \
      else store
  dataset = ds.dataset(folder, format='parquet', partitioning='hive')
  names = set(dataset.schema.names)
  if 'embedding' not in names:
    raise ValueError(f'{folder} holds no enriched rows')
  condition = None
  parser = TimeParser()
  for bound, op in ((since, pc.greater_equal), (until, pc.less)):
    if bound:
      moment = pa.scalar(parser.parse(bound), pa.timestamp('us', tz='UTC'))
      clause = op(ds.field('event_time'), moment)
      condition = clause if condition is None else condition & clause
  if label:
    if 'label' not in names:
      raise ValueError('--label: these rows carry no labels (run the job with --label_file)')
    clause = ds.field('label') == label
    condition = clause if condition is None else condition & clause
  columns = ['id', 'text', 'embedding', 'model'] + [c for c in _PAYLOAD
                                                    if c in names and c != 'model']
  return dataset.to_table(columns=columns, filter=condition)


def embed_queries(queries: List[str], model_name) -> np.ndarray:
  """Unit-length query embeddings from the model (a name or a ModelConfig) of the rows."""
  config = model_name if isinstance(model_name, ModelConfig) else ModelConfig(
      model=model_name, device='auto')
  model = load_sentence_transformer(config)
  vectors = model.encode(queries, normalize_embeddings=True, show_progress_bar=False)
  return np.asarray(vectors, np.float32)


def search(table: pa.Table, queries: List[str], k: int, model_name: Optional[str] = None):
  """Yields (query, rank, score, row index) for the k best rows of each query."""
  if table.num_rows == 0:
    return
  names = pc.unique(table.column('model')).to_pylist()
  if 'model_fingerprint' in table.column_names:
    prints = [p for p in pc.unique(table.column('model_fingerprint')).to_pylist() if p]
    if len(prints) > 1:
      raise ValueError(f'rows from several model identities ({", ".join(prints)}): vectors of '
                       'two models cannot be ranked together; narrow --since/--until')
  if model_name is None and len(names) > 1:
    raise ValueError(f'rows from several models ({", ".join(names)}): pass --model')
  embeddings = table.column('embedding').combine_chunks()
  matrix = embeddings.values.to_numpy(zero_copy_only=False).reshape(len(embeddings), -1)
  matrix = unit_rows(matrix)
  scores = embed_queries(queries, model_name or names[0]) @ matrix.T
  ids = np.asarray(table.column('id').to_pylist(), dtype=object)
  k = min(k, table.num_rows)
  for query, row_scores in zip(queries, scores):
    kth = np.partition(-row_scores, k - 1)[k - 1]
    best = np.flatnonzero(-row_scores <= kth)  # the k best and every row tied with the k-th
    best = best[np.lexsort((ids[best], -row_scores[best]))][:k]  # by score, then id
    for rank, index in enumerate(best, start=1):
      yield query, rank, float(row_scores[index]), int(index)


def vector_store_uri(store: str) -> Optional[str]:
  """The LanceDB store behind --store, if it names one (lancedb:URI or DIR with vectors/)."""
  if store.startswith('lancedb:'):
    return store[len('lancedb:'):]
  folder = os.path.join(store, 'vectors')
  return folder if os.path.isdir(folder) else None


def store_model(table, name: str, model_name: Optional[str]) -> ModelConfig:
  """The ModelConfig whose identity filled `table`; raises ValueError where the model found
  here (or --model) does not give that identity."""
  recorded = table_identity(table)
  if recorded is None:
    raise ValueError(f'the vector table {name} records no model identity: re-embed it into a '
                     'new table (docs/long-documents.md)')
  config = ModelConfig(model=model_name or recorded['model'], device='auto',
                       precision=recorded['precision'], backend=recorded['backend'],
                       quantize=recorded['quantize'], normalize=recorded['normalize'])
  found = of_config(config)
  if found.fingerprint != recorded['fingerprint']:
    raise ValueError(f'the vector table {name} holds vectors of {recorded["model"]}@'
                     f'{recorded["fingerprint"]}; the model here is {found}: its query vectors '
                     'would not compare (search the table that model filled)')
  return config


def search_vector_store(uri: str, queries: List[str], k: int, since, until, label,
                        model_name: Optional[str], table_name: str = TABLE):
  """Yields (query, rank, score, row dict) from the LanceDB store: the best chunk of each of
  the k best documents."""
  table = open_table(uri, table=table_name)
  config = store_model(table, table_name, model_name)
  clauses = []
  parser = TimeParser()
  for bound, op in ((since, '>='), (until, '<')):
    if bound:
      clauses.append(f"event_time {op} timestamp '{format_micros(parser.parse(bound))}'")
  if label:
    clauses.append("label = '{}'".format(label.replace("'", "''")))
  total = table.count_rows()
  for query, vector in zip(queries, embed_queries(queries, config)):
    limit, best = 4 * k, {}
    while True:  # chunks of one document crowd the top: ask for more until k documents
      request = table.search(vector).metric('cosine').limit(limit)
      if clauses:
        request = request.where(' AND '.join(clauses), prefilter=True)
      hits = request.to_arrow().drop_columns(['vector']).to_pylist()
      hits.sort(key=lambda row: (row['_distance'], row['id'], row.get('chunk', 0)))
      best = {}
      for row in hits:  # by distance: the first chunk of a document is its best
        best.setdefault(row['id'], row)
      ranked = list(best.values())
      # Enough documents, and none beyond the k-th could tie with it (exact search
      # orders ties by id: so does this).
      settled = len(ranked) >= k and hits[-1]['_distance'] > ranked[k - 1]['_distance']
      if settled or len(hits) < limit or limit >= total:
        break
      limit *= 4
    for rank, row in enumerate(ranked[:k], start=1):
      yield query, rank, 1.0 - float(row.pop('_distance')), row


def _payload(row: dict) -> dict:
  payload = {}
  for name in _PAYLOAD:
    if name in row:
      value = row[name]
      if hasattr(value, 'timestamp'):
        value = format_micros(round(value.timestamp() * 1_000_000))
      payload[name] = value
  return payload


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('query', nargs='?', help='The text to search for.')
  parser.add_argument('--store', required=True, help="The job's --output folder.")
  parser.add_argument('-k', type=int, default=10, help='Results per query.')
  parser.add_argument('--since', help='Only events at or after this time (ISO-8601 or epoch).')
  parser.add_argument('--until', help='Only events before this time.')
  parser.add_argument('--label', help='Only events with this label.')
  parser.add_argument('--queries', help='A file with one query per line.')
  parser.add_argument('--model', help='The model to embed queries with; default: the rows\'.')
  parser.add_argument('--table', default=TABLE,
                      help='The vector-store table to search (a re-embedded store\'s new one).')
  parser.add_argument('--json', action='store_true', help='One JSON object per result.')
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  queries = [args.query] if args.query else []
  try:
    if args.queries:
      with open(args.queries, encoding='utf-8') as f:
        queries += [line.strip() for line in f if line.strip()]
    if not queries:
      raise ValueError('give a query, or --queries FILE')
    if args.k < 1:
      raise ValueError('-k must be at least 1')
    uri = vector_store_uri(args.store)
    if uri is not None:
      results = list(search_vector_store(uri, queries, args.k, args.since, args.until,
                                         args.label, args.model, args.table))
    else:
      table = open_rows(args.store, args.since, args.until, args.label)
      rows = table.to_pylist()
      results = [(query, rank, score, rows[index])
                 for query, rank, score, index in search(table, queries, args.k, args.model)]
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  headed = 0
  for query, rank, score, row in results:
    if args.json:
      print(json.dumps({'query': query, 'rank': rank, 'id': row['id'], 'score': round(score, 6),
                        'text': row['text'], **_payload(row)}, ensure_ascii=False))
    else:
      if rank == 1 and len(queries) > 1:  # several queries: each one's results under it
        print(f'\n{query}' if headed else query)
        headed += 1
      text = row['text'].replace('\n', ' ')
      print(f'{rank:>3}. {score:.3f}  {row["id"]}  {text[:100]}')


if __name__ == '__main__':
  main()
