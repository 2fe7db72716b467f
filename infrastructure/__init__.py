"""Infrastructure: settings, persistence wiring, the scheduler and the CLI."""
