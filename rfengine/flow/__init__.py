"""Flow-matching math: the path, time samplers and ODE samplers. Pure tensor code."""
from rfengine.flow.path import expand_t, interpolate, sample_times, shift_time, velocity
from rfengine.flow.samplers import integrate, time_grid, with_cfg

__all__ = ["expand_t", "interpolate", "velocity", "sample_times", "shift_time",
           "integrate", "time_grid", "with_cfg"]
