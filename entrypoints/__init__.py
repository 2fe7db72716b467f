"""Entry points: the command line, the worker and the demo. They call the facade only."""
