"""Typed run configuration: dataclasses loaded from YAML, overridden by `--set key=value`, validated
before any work starts.

Every field's type comes from its annotation; `Literal[...]` lists the allowed values and a field's
`metadata` may carry bounds (`ge`, `gt`, `le`, `lt`). Errors name the full dotted key, what was
expected and what was given, and suggest the nearest valid key for a typo.

Three files: `schema` (the dataclasses), `validate` (typed coercion, bounds, cross-key rules) and `files`
(YAML, bases and overrides).
"""
from rfengine.config.files import apply_overrides, compose, load, merge, parse_override, read_yaml, save
from rfengine.config.schema import (ADRConfig, Config, ConfigError, DataConfig, FCConfig, IPConfig, ModelConfig,
                                    ObjectiveConfig, OptimConfig, ParallelConfig, SampleConfig, TrainConfig)
from rfengine.config.validate import from_dict, resolve_steps, to_dict

__all__ = ["apply_overrides", "compose", "load", "merge", "parse_override", "read_yaml", "save", "ADRConfig", "Config",
           "ConfigError", "DataConfig", "FCConfig", "IPConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig",
           "ParallelConfig", "SampleConfig", "TrainConfig", "from_dict", "resolve_steps", "to_dict"]
