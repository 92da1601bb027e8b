"""Sources and sinks: archives, live streams, Redis, cloud IO, Parquet, the vector store."""
