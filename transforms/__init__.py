"""PTransforms of the enrichment job: sources, parsing, event time, windows, embedding, sinks."""
