"""Training engine: losses, config presets, trainer."""
