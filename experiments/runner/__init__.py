"""The machinery shared by every experiment of `experiments/run_all.py`.

- `variants`: the methods compared (every registered correction and fusion), their options and defaults.
- `units`: a unit (one measurement: a key and the `finetune.py` options that produce it), the recipe every unit
  starts from, and the default measurement of a trained model (layer profile and head input).
- `worker`: running one unit in a worker process.
- `plan`: a plan (what one invocation measures, with each experiment's settings) and an experiment (its units, report
  section and findings).
- `cache`: the result cache (a JSON file per plan; a unit is cached while its options are unchanged).
- `scheduling`: the scheduler (units alone on every core, or one per core side by side, longest first).
- `statistics`: mean ± std over seeds, differences with the `*` rule, and lookups of cached results.
- `report`: the generated report and README headline, and what every experiment's plots share.

Importing this package puts the repository root first on `sys.path`, so that a script run from anywhere (and every
worker it spawns) uses the `hf_centered` of this checkout.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
