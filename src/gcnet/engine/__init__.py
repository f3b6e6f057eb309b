"""Training engine: config (typed sections, presets, overrides), builders, sampler, trainer loop, run state
(checkpoints, resume), logs, losses, device / process-group helpers."""
