"""Flow-matching math: the path, time samplers and ODE samplers. Pure tensor code."""
from rfengine.flow.path import expand_t, interpolate, sample_times, shift_time, unshift_time, velocity
from rfengine.flow.samplers import (CALLS_PER_STEP, DIFFUSIONS, FIXED_GRID, LAST_STEPS, METHODS, Guided,
                                    diffusion_coefficient, integrate, score_from_velocity, sde_grid, time_grid,
                                    with_cfg)

__all__ = ["expand_t", "interpolate", "velocity", "sample_times", "shift_time", "unshift_time", "integrate",
           "time_grid", "with_cfg", "Guided", "score_from_velocity", "diffusion_coefficient", "sde_grid", "METHODS",
           "DIFFUSIONS", "LAST_STEPS", "FIXED_GRID", "CALLS_PER_STEP"]
