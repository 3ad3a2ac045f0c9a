"""A run's configuration: its recipe (what the run is), TrainConfig (the recipe and where and how this process
trains it), its command-line options, and configuration files."""
from .recipe import PRECISIONS, RECIPE_FIELDS, Recipe, canonical_config, recipe_differences
from .train_config import COMPILE_MODES, LAYOUTS, TrainConfig, resolve_device, saved_options

__all__ = ["Recipe", "TrainConfig", "RECIPE_FIELDS", "PRECISIONS", "LAYOUTS", "COMPILE_MODES", "canonical_config",
           "recipe_differences", "resolve_device", "saved_options"]
