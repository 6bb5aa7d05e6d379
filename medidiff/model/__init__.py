"""Model pieces: configuration, network, schedules, noise, sampler settings, and model folders
on disk (:mod:`.folder`: the mechanics every kind of model shares; :mod:`.store`: the pixel model).
Nothing here imports scoring, training, the generator or synthesis: they all build on it."""

from .config import Config, ConfigError, load_config
from .diffusion import (SchedulerFactory, add_noise, build_scheduler, predict_eps, predict_x0,
                        training_target)
from .network import build_network, count_parameters
from .noise import make_noise

__all__ = [
    "Config", "ConfigError", "load_config", "SchedulerFactory", "add_noise", "build_scheduler",
    "predict_eps", "predict_x0", "training_target", "build_network", "count_parameters", "make_noise",
]
