"""Model handlers and model loading; nothing here knows about windows, sources or sinks."""
