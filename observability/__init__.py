"""What a run tells about itself: Beam metrics, Prometheus, the run report and its charts."""
