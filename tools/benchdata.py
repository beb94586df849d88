"""Benchmark datasets: four simulated dynamical systems and four UCI regression sets.

The protocol is the one in ``shared/BENCHMARKS.md`` and ``shared/data/README.md``:

* dynamical systems (``glycolytic``, ``polymerization``, ``electrical``, ``rn``): the state
  x(t) of LSODA trajectories is the input, the exact right-hand side f(x(t)) the target,
  split 80/20 by trajectory;
* UCI sets (``abalone``, ``protein``, ``metro``, ``hepc``): read from a data folder given by
  the caller (never copied into the project), random 80/20 split.

Inputs and targets are standardised with training statistics only.

Run ``python -m tools.benchdata [DATA_DIR]`` to load every task and print shapes and timings.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

SYSTEMS = ("glycolytic", "polymerization", "electrical", "rn")
UCI = ("abalone", "protein", "metro", "hepc")
TASKS = SYSTEMS + UCI

TEST_FRACTION = 0.2
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


# eq=False: the generated __eq__ would compare arrays, whose element-wise result has no
# truth value.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A standardised regression task.

    ``x_*``/``y_*`` are float32 and standardised with the training mean/std; ``y`` is always
    2-D ``(n, d_out)``. ``x_mean``/``x_std``/``y_mean``/``y_std`` (float64) undo it:
    ``y_raw = y * y_std + y_mean``. For the dynamical systems the rows of each split are
    stored trajectory by trajectory, in time order.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray
    feature_names: list[str]


def _standardise(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    feature_names: list[str],
) -> Dataset:
    y_train = y_train.reshape(len(y_train), -1)
    y_test = y_test.reshape(len(y_test), -1)
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(axis=0), y_train.std(axis=0)
    # A column that is constant in training (e.g. a one-hot level seen only in test) keeps
    # unit scale instead of dividing by zero.
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_std = np.where(y_std > 0, y_std, 1.0)

    def scale(a: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    return Dataset(
        name=name,
        x_train=scale(x_train, x_mean, x_std),
        y_train=scale(y_train, y_mean, y_std),
        x_test=scale(x_test, x_mean, x_std),
        y_test=scale(y_test, y_mean, y_std),
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
        feature_names=feature_names,
    )


# --- Dynamical systems ------------------------------------------------------------------
# Each right-hand side takes the state along axis 0, so the same function serves
# solve_ivp (shape (d,)) and a whole data set at once (shape (d, n)).


def glycolytic_rhs(t: float, x: np.ndarray) -> np.ndarray:
    """Glycolytic oscillator of Ruoff et al. (2003), 7 species S1..S7."""
    j0, k1, k2, k3, k4, k5, k6, k = 2.5, 100.0, 6.0, 16.0, 100.0, 1.28, 12.0, 1.8
    kappa, q, big_k1, psi, n_total, a_total = 13.0, 4.0, 0.52, 0.1, 1.0, 4.0
    s1, s2, s3, s4, s5, s6, s7 = x
    v1 = k1 * s1 * s6 / (1.0 + (s6 / big_k1) ** q)
    v2 = k2 * s2 * (n_total - s5)
    v3 = k3 * s3 * (a_total - s6)
    v4 = k4 * s4 * s5
    v5 = k5 * s6
    v6 = k6 * s2 * s5
    flux = kappa * (s4 - s7)
    return np.stack(
        [
            j0 - v1,
            2.0 * v1 - v2 - v6,
            v2 - v3,
            v3 - v4 - flux,
            v2 - v4 - v6,
            -2.0 * v1 + 2.0 * v3 - v5,
            psi * flux - k * s7,
        ]
    )


POLYMER_LENGTH = 10


def polymerization_rhs(t: float, x: np.ndarray) -> np.ndarray:
    """Reversible chain growth M + P_i <-> P_{i+1}, state (P_1 = M, P_2, ..., P_10)."""
    k_on, k_off = 1.0, 0.5
    monomer = x[0]
    rates = k_on * monomer * x[:-1] - k_off * x[1:]  # r_i for i = 1..N-1
    dx = np.zeros_like(x)
    dx[1:] += rates
    dx[:-1] -= rates
    # Every step also consumes a free monomer; for i = 1 that is the second monomer.
    dx[0] -= rates.sum(axis=0)
    return dx


LADDER_SECTIONS = 5


def electrical_rhs(t: float, x: np.ndarray) -> np.ndarray:
    """Nonlinear RLC ladder, state (I_1..I_5, V_1..V_5), step input V_0 = 1."""
    resistance, inductance, capacitance = 0.1, 1.0, 1.0
    shunt, cubic_shunt, load, source = 0.05, 0.1, 1.0, 1.0
    currents, voltages = x[:LADDER_SECTIONS], x[LADDER_SECTIONS:]
    upstream = np.concatenate([np.full_like(voltages[:1], source), voltages[:-1]])
    downstream = np.concatenate([currents[1:], voltages[-1:] / load])
    d_currents = (upstream - voltages - resistance * currents) / inductance
    d_voltages = (
        currents - downstream - shunt * voltages - cubic_shunt * voltages**3
    ) / capacitance
    return np.concatenate([d_currents, d_voltages])


def repressilator_rhs(t: float, x: np.ndarray) -> np.ndarray:
    """Repressilator (Elowitz & Leibler 2000), state (m1, m2, m3, p1, p2, p3)."""
    alpha, alpha0, beta, hill = 216.0, 0.216, 5.0, 2.0
    mrna, protein = x[:3], x[3:]
    repressor = protein[[2, 0, 1]]  # gene 1 <- p3, gene 2 <- p1, gene 3 <- p2
    d_mrna = -mrna + alpha / (1.0 + repressor**hill) + alpha0
    d_protein = -beta * (protein - mrna)
    return np.concatenate([d_mrna, d_protein])


@dataclass(frozen=True)
class _System:
    rhs: Callable[[float, np.ndarray], np.ndarray]
    t_end: float
    state_names: list[str]
    draw_initial: Callable[[np.random.Generator], np.ndarray]


_GLYCOLYTIC_LOW = np.array([0.15, 0.19, 0.04, 0.10, 0.08, 0.14, 0.05])
_GLYCOLYTIC_HIGH = np.array([1.60, 2.16, 0.20, 0.35, 0.30, 2.67, 0.10])

_SYSTEM_SPECS = {
    "glycolytic": _System(
        glycolytic_rhs,
        10.0,
        [f"S{i}" for i in range(1, 8)],
        lambda rng: rng.uniform(_GLYCOLYTIC_LOW, _GLYCOLYTIC_HIGH),
    ),
    "polymerization": _System(
        polymerization_rhs,
        20.0,
        ["M"] + [f"P{i}" for i in range(2, POLYMER_LENGTH + 1)],
        lambda rng: np.concatenate(
            [rng.uniform(1.0, 2.0, 1), rng.uniform(0.0, 0.1, POLYMER_LENGTH - 1)]
        ),
    ),
    "electrical": _System(
        electrical_rhs,
        40.0,
        [f"I{i}" for i in range(1, 6)] + [f"V{i}" for i in range(1, 6)],
        lambda rng: rng.normal(0.0, 0.5, 2 * LADDER_SECTIONS),
    ),
    "rn": _System(
        repressilator_rhs,
        30.0,
        ["m1", "m2", "m3", "p1", "p2", "p3"],
        lambda rng: rng.uniform(0.0, 5.0, 6),
    ),
}


def simulate_system(name: str, n_traj: int = 40, n_points: int = 200, seed: int = 0) -> Dataset:
    """Simulate ``n_traj`` trajectories of a benchmark system and build its data set."""
    if name not in _SYSTEM_SPECS:
        raise ValueError(f"unknown dynamical system {name!r}; expected one of {SYSTEMS}")
    system = _SYSTEM_SPECS[name]
    rng = np.random.default_rng(seed)
    t_eval = np.linspace(0.0, system.t_end, n_points)
    trajectories = []
    for _ in range(n_traj):
        solution = solve_ivp(
            system.rhs,
            (0.0, system.t_end),
            system.draw_initial(rng),
            method="LSODA",
            t_eval=t_eval,
            rtol=1e-8,
            atol=1e-10,
        )
        if not solution.success:
            raise RuntimeError(f"{name}: integration failed: {solution.message}")
        trajectories.append(solution.y.T)
    states = np.stack(trajectories)  # (n_traj, n_points, d)
    derivatives = system.rhs(0.0, states.reshape(-1, states.shape[-1]).T).T
    derivatives = derivatives.reshape(states.shape)

    order = rng.permutation(n_traj)
    n_test = round(TEST_FRACTION * n_traj)
    test_ids, train_ids = np.sort(order[:n_test]), np.sort(order[n_test:])

    def rows(a: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return a[ids].reshape(-1, a.shape[-1])

    return _standardise(
        name,
        rows(states, train_ids),
        rows(derivatives, train_ids),
        rows(states, test_ids),
        rows(derivatives, test_ids),
        list(system.state_names),
    )


# --- UCI regression data sets -----------------------------------------------------------

_UCI_FILES = {
    "abalone": "abalone.data",
    "protein": "CASP.csv",
    "metro": "Metro_Interstate_Traffic_Volume.csv",
    "hepc": "household_power_consumption.txt",
}


def _cyclic(values: np.ndarray, period: float, label: str) -> tuple[list[np.ndarray], list[str]]:
    angle = 2.0 * np.pi * values / period
    return [np.sin(angle), np.cos(angle)], [f"{label}_sin", f"{label}_cos"]


def _read_abalone(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open(newline="") as handle:
        records = [row for row in csv.reader(handle) if row]
    sexes = ["F", "I", "M"]
    sex = np.array([[row[0] == s for s in sexes] for row in records], dtype=np.float64)
    numeric = np.array([row[1:] for row in records], dtype=np.float64)
    names = [f"Sex_{s}" for s in sexes] + [
        "Length",
        "Diameter",
        "Height",
        "Whole_weight",
        "Shucked_weight",
        "Viscera_weight",
        "Shell_weight",
    ]
    return np.hstack([sex, numeric[:, :-1]]), numeric[:, -1], names


def _read_protein(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open() as handle:
        header = handle.readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, 1:], table[:, 0], header[1:]


def _read_metro(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    # The file has a few physically impossible readings (temp 0 K, rain 9831 mm/h); left in,
    # one of them sets the whole column's scale or, in the test split, a huge input.
    records = [r for r in records if float(r["temp"]) > 0 and float(r["rain_1h"]) < 1000]
    stamps = [dt.datetime.fromisoformat(r["date_time"]) for r in records]
    hour = np.array([s.hour for s in stamps], dtype=np.float64)
    weekday = np.array([s.weekday() for s in stamps], dtype=np.float64)
    month = np.array([s.month - 1 for s in stamps], dtype=np.float64)
    columns: list[np.ndarray] = []
    names: list[str] = []
    for values, period, label in (
        (hour, 24, "hour"),
        (weekday, 7, "weekday"),
        (month, 12, "month"),
    ):
        cols, labels = _cyclic(values, period, label)
        columns += cols
        names += labels
    weathers = sorted({r["weather_main"] for r in records})
    for weather in weathers:
        columns.append(np.array([r["weather_main"] == weather for r in records], dtype=np.float64))
        names.append(f"weather_{weather}")
    columns.append(np.array([r["holiday"] != "None" for r in records], dtype=np.float64))
    names.append("holiday")
    for numeric in ("temp", "rain_1h", "snow_1h", "clouds_all"):
        columns.append(np.array([float(r[numeric]) for r in records]))
        names.append(numeric)
    target = np.array([float(r["traffic_volume"]) for r in records])
    return np.column_stack(columns), target, names


def _read_hepc(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        header = next(reader)
        records = [[field.strip() for field in row] for row in reader if row]
    records = [row for row in records if "?" not in row and "" not in row]
    column = {name: i for i, name in enumerate(header)}
    # Global_intensity x Voltage nearly determines the target; without them the task is real.
    kept = ["Voltage", "Sub_metering_1", "Sub_metering_2", "Sub_metering_3"]
    numeric = np.array([[float(row[column[c]]) for c in kept] for row in records])
    target = np.array([float(row[column["Global_active_power"]]) for row in records])
    minutes, weekday = [], []
    for row in records:
        day, month, year = (int(part) for part in row[column["Date"]].split("/"))
        hours, mins, _ = (int(part) for part in row[column["Time"]].split(":"))
        minutes.append(60 * hours + mins)
        weekday.append(dt.date(year, month, day).weekday())
    time_cols, time_names = _cyclic(np.array(minutes, dtype=np.float64), 24 * 60, "time_of_day")
    day_cols, day_names = _cyclic(np.array(weekday, dtype=np.float64), 7, "weekday")
    inputs = np.column_stack([numeric, *time_cols, *day_cols])
    return inputs, target, kept + time_names + day_names


_UCI_READERS = {
    "abalone": _read_abalone,
    "protein": _read_protein,
    "metro": _read_metro,
    "hepc": _read_hepc,
}


def load_uci(name: str, data_dir: str | Path, seed: int = 0) -> Dataset:
    """Load a UCI data set from ``data_dir`` with a seeded random 80/20 split."""
    if name not in _UCI_FILES:
        raise ValueError(f"unknown UCI data set {name!r}; expected one of {UCI}")
    path = Path(data_dir) / _UCI_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"data set {name!r} needs the file {path}, which does not exist "
            "(see shared/data/README.md for the expected files)"
        )
    inputs, target, names = _UCI_READERS[name](path)
    order = np.random.default_rng(seed).permutation(len(inputs))
    n_test = round(TEST_FRACTION * len(inputs))
    test_rows, train_rows = order[:n_test], order[n_test:]
    return _standardise(
        name,
        inputs[train_rows],
        target[train_rows],
        inputs[test_rows],
        target[test_rows],
        names,
    )


def load_task(name: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> Dataset:
    """Load any benchmark task; ``data_dir`` is only read for the UCI data sets."""
    if name in SYSTEMS:
        return simulate_system(name)
    if name in UCI:
        return load_uci(name, data_dir)
    raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0]) if argv else DEFAULT_DATA_DIR
    print(f"{'task':<15}{'seconds':>8}  {'x_train':<14}{'y_train':<12}{'x_test':<14}y_test")
    for name in TASKS:
        start = time.perf_counter()
        data = load_task(name, data_dir)
        seconds = time.perf_counter() - start
        print(
            f"{name:<15}{seconds:8.2f}  {data.x_train.shape!s:<14}"
            f"{data.y_train.shape!s:<12}{data.x_test.shape!s:<14}{data.y_test.shape}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
