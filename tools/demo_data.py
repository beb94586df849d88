"""Write the demo models' calibration and test inputs into ``models/``.

The demo task ("rn", the repressilator of ``tools/benchdata.py``) is simulated with fixed
seeds, so these files can be regenerated exactly without retraining the models:

* ``models/rn_calib_2048.npz``: ``input``, 2,048 standardised training inputs (a seeded
  sample of the 6,400 training rows), for ``--calib``;
* ``models/rn_test.npz``: ``input`` and ``target``, the 1,600 test rows (trajectories the
  models never saw), to measure what a compressed model really loses.

Run from the project root::

    python -m tools.demo_data [--out models]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tools.benchdata import DEFAULT_DATA_DIR, load_task

TASK = "rn"
CALIBRATION_ROWS = 2048
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    data = load_task(TASK, args.data)
    rows = np.random.default_rng(SEED).choice(len(data.x_train), CALIBRATION_ROWS, replace=False)
    calib = args.out / f"{TASK}_calib_{CALIBRATION_ROWS}.npz"
    np.savez(calib, input=data.x_train[np.sort(rows)].astype(np.float32))
    test = args.out / f"{TASK}_test.npz"
    np.savez(
        test,
        input=data.x_test.astype(np.float32),
        target=data.y_test.astype(np.float32),
    )
    for path in (calib, test):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
