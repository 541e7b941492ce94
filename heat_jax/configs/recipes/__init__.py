"""Released recipes as data: what a method's authors published, one module per method.

`configs/vtab.py:<task>,method=<m>,recipe=released` applies `recipe_for(method)`; the
default `recipe=project` is the PETL recipe of `configs.common.base_config()`. Each module
names its source (repository, path, commit) in `SOURCE` and defines
`apply(config, task) -> None`, which overwrites only the fields the release fixes.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from heat_jax.errors import ConfigError

RECIPES = ("project", "released")
# Methods whose authors published a recipe that is transcribed here.
RELEASED = {"hst": "heat_jax.configs.recipes.hst", "kadaptation": "heat_jax.configs.recipes.kadaptation",
            "lora": "heat_jax.configs.recipes.noah", "adapter": "heat_jax.configs.recipes.noah"}
# Published elsewhere only for other benchmarks / not per task: why there is no table.
NOT_RELEASED = {
    "heat": "HEAT / Heart-LoRA released no code or per-task settings",
    "vpt": "VPT's per-task CSVs (KMnP/vpt#19) were not transcribed and NOAH's VPT script "
           "takes the prompt length per run",
}


def recipe_for(method: str) -> Callable[[Any, str], None]:
  """`apply(config, task)` of the released recipe of `method` (ConfigError if none)."""
  if method not in RELEASED:
    why = NOT_RELEASED.get(method, "no released recipe is transcribed for it")
    raise ConfigError(f"recipe=released: method {method}: {why}; released recipes exist for "
                      f"{', '.join(sorted(RELEASED))}; use recipe=project")
  return importlib.import_module(RELEASED[method]).apply
