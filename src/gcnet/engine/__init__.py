"""Training engine: config (typed sections, presets, overrides), builders, sampler, trainer loop, run state
(checkpoints, resume), logs, losses. Device and process-group helpers are in :mod:`gcnet.distributed`."""
