"""Infrastructure: settings, persistence per dialect, content keys, hash chains and seals,
the scheduler."""
