"""Trains and evaluates one PETL run (or the built-in demo study) from a config file.

Usage:
  python run.py                                        # the offline demo study
  python run.py --config=configs/smoke.py --workdir=/tmp/smoke    # seconds, on a CPU
  python run.py --config=configs/vtab.py:dtd --workdir=workdirs/dtd
  python run.py --config=configs/vtab.py:dtd,method=lora,rank=8 --config.train.epochs=10

--config is a Python file whose get_config(arg) builds the config; the text after ':'
is its arg (see the file's docstring: configs/vtab.py, configs/smoke.py,
configs/demo.py). Any field can then be set with --config.<field>=<value>, e.g.
  --config.method.name=lora        {methods}
  --config.model.name=Swin-B       --config.model.pretrained=/path/to/ViT-B_16.npz
  --config.heat.budget=0.5         --config.optim.lr=1e-3  --config.seed=1
  --config.train.resume=False      start over instead of resuming in --workdir
Every field and its default: configs/common.py (base_config).

The workdir ends up with results.json, adapter.npz/json and metrics.jsonl. Rerunning a
command resumes it from its last checkpoint, or reports its results when it finished.

Exit codes: 0 done; 2 bad input (one line 'error: ...' on stderr says what to fix);
130 interrupted (rerun the same command to resume); 75 preempted (SIGTERM: a checkpoint
was saved; rerun the same command to resume). --verbosity=1 also shows the libraries'
INFO logs (orbax, jax); --helpfull lists every flag.
"""

from heat_jax import cli
from heat_jax.methods import available_methods

# --help prints this docstring: the method list is the registry's, never a copy.
__doc__ = __doc__.format(methods=" | ".join(available_methods()))

if __name__ == "__main__":
  cli.run()
