"""Runner choice and the compatibility layer that lets Beam 2.77's local runner stream."""
