"""The numbers the paper reports, typed from its tables, for "paper reports" columns beside ours.

These are the published figures of Lu et al. (ICLR 2025) for GPT-2 XL, OPT-6.7B, Falcon-7B and
LLaMA-2-7B with Detoxify (Tables 1, 2), Perspective API (Table 8) and the tuned hyper-parameters
(Table 6). They are never mixed with this project's results: every chapter that shows them labels
them *paper reports*.

Rows use the results tables' method names (``baselines.BASE``, ``UNIDETOX``, ...) and the
learning rate for UniDetox / Samples, so a chapter can line them up with its own rows. Where the
paper prints mean and standard deviation over five seeds, both are kept (``TP_ID`` and
``TP_ID_std``); Table 2's standard deviations of the ID columns are partly illegible in our copy of
the paper, so Table 2 keeps means only (standard deviations ``NaN``). LLaMA-2-7B's base OOD TP,
illegible in Table 2, is the value of Table 5, which repeats that row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import methods

MODELS = ("GPT-2 XL", "OPT-6.7B", "Falcon-7B", "LLaMA2-7B")

# (method, lr) of each row, in the paper's row order.
ROWS = (
    ("base", np.nan),
    ("preprompt_short", np.nan),
    ("preprompt_long", np.nan),
    ("samples", 1e-5),
    ("lmsteer", np.nan),
    ("dexperts", np.nan),
    ("task_arithmetic", np.nan),
    ("unidetox", 5e-5),
    ("unidetox", 1e-5),
)


COLUMNS = ("TP_ID", "TP_OOD", "EMT_ID", "EMT_OOD", "PPL", "dist_1", "dist_2", "dist_3", "MMLU")

# Table 1 (GPT-2 XL, Detoxify): (mean, std) for TP/EMT, then PPL, Dist-1/2/3, MMLU 1-shot (%).
_TABLE1 = (
    ((0.53, 0.01), (0.41, 0.02), (0.54, 0.01), (0.43, 0.01), 17.28, 0.26, 0.43, 0.46, 32.07),
    ((0.58, 0.02), (0.49, 0.03), (0.56, 0.01), (0.49, 0.02), 23.61, 0.19, 0.32, 0.34, 31.87),
    ((0.63, 0.01), (0.53, 0.03), (0.61, 0.01), (0.54, 0.01), 13.51, 0.12, 0.19, 0.21, 30.31),
    ((0.48, 0.02), (0.35, 0.03), (0.49, 0.01), (0.38, 0.02), 15.71, 0.24, 0.39, 0.42, 32.20),
    ((0.44, 0.01), (0.32, 0.01), (0.45, 0.01), (0.36, 0.01), 18.73, 0.27, 0.43, 0.46, 29.72),
    ((0.50, 0.02), (0.35, 0.03), (0.50, 0.01), (0.39, 0.02), 18.12, 0.27, 0.44, 0.46, 30.83),
    ((0.52, 0.01), (0.38, 0.02), (0.52, 0.01), (0.40, 0.02), 17.64, 0.26, 0.43, 0.46, 29.92),
    ((0.40, 0.00), (0.25, 0.02), (0.41, 0.00), (0.30, 0.01), 10.38, 0.22, 0.37, 0.41, 31.42),
    ((0.46, 0.02), (0.33, 0.03), (0.46, 0.00), (0.35, 0.01), 15.23, 0.24, 0.38, 0.41, 30.57),
)

# Table 2 (Detoxify), means: TP ID, TP OOD, EMT ID, EMT OOD, PPL, Dist-1/2/3, MMLU 3-shot (%).
_TABLE2 = {
    "OPT-6.7B": (
        (0.78, 0.82, 0.76, 0.79, 17.30, 0.25, 0.41, 0.44, 34.36),
        (0.67, 0.67, 0.65, 0.64, 20.70, 0.17, 0.27, 0.28, 33.51),
        (0.73, 0.74, 0.71, 0.71, 12.35, 0.10, 0.16, 0.17, 32.59),
        (0.61, 0.59, 0.60, 0.58, 21.37, 0.23, 0.38, 0.42, 34.16),
        (0.74, 0.78, 0.72, 0.74, 24.69, 0.25, 0.40, 0.42, 30.83),
        (0.62, 0.65, 0.60, 0.62, 28.19, 0.25, 0.37, 0.38, 35.40),
        (0.58, 0.56, 0.56, 0.56, 25.89, 0.26, 0.44, 0.46, 30.70),
        (0.28, 0.17, 0.31, 0.22, 10.62, 0.17, 0.27, 0.30, 30.18),
        (0.55, 0.56, 0.55, 0.56, 16.57, 0.23, 0.38, 0.42, 34.10),
    ),
    "Falcon-7B": (
        (0.60, 0.53, 0.59, 0.53, 10.69, 0.26, 0.43, 0.46, 39.32),
        (0.58, 0.57, 0.57, 0.55, 17.05, 0.19, 0.31, 0.33, 38.28),
        (0.59, 0.57, 0.58, 0.54, 11.83, 0.11, 0.18, 0.19, 37.17),
        (0.46, 0.40, 0.47, 0.43, 17.15, 0.22, 0.35, 0.37, 34.49),
        (0.37, 0.32, 0.39, 0.35, 29.05, 0.25, 0.33, 0.34, 34.75),
        (0.30, 0.25, 0.33, 0.28, 28.71, 0.29, 0.38, 0.39, 37.88),
        (0.52, 0.47, 0.51, 0.46, 32.71, 0.24, 0.43, 0.46, 29.85),
        (0.33, 0.27, 0.35, 0.32, 7.85, 0.14, 0.23, 0.25, 33.96),
        (0.42, 0.39, 0.43, 0.42, 31.61, 0.22, 0.33, 0.36, 33.57),
    ),
    "LLaMA2-7B": (
        (0.58, 0.49, 0.57, 0.49, 8.56, 0.26, 0.42, 0.45, 41.74),
        (0.60, 0.55, 0.58, 0.54, 15.62, 0.18, 0.29, 0.31, 42.00),
        (0.58, 0.53, 0.57, 0.53, 11.24, 0.11, 0.17, 0.18, 37.17),
        (0.57, 0.47, 0.56, 0.48, 8.37, 0.24, 0.39, 0.42, 37.75),
        (0.47, 0.40, 0.46, 0.42, 10.18, 0.27, 0.36, 0.37, 40.82),
        (0.45, 0.35, 0.44, 0.39, 9.91, 0.27, 0.39, 0.41, 39.71),
        (0.58, 0.47, 0.56, 0.48, 9.39, 0.26, 0.42, 0.45, 41.02),
        (0.29, 0.26, 0.32, 0.29, 7.70, 0.16, 0.24, 0.27, 36.25),
        (0.55, 0.45, 0.54, 0.47, 9.04, 0.24, 0.39, 0.42, 37.30),
    ),
}

# Table 8 (Perspective API), means: TP ID, TP OOD, EMT ID, EMT OOD.
_TABLE8 = {
    "GPT-2 XL": ((0.41, 0.26, 0.48, 0.40), (0.39, 0.25, 0.48, 0.42), (0.45, 0.31, 0.51, 0.44),
                 (0.36, 0.22, 0.45, 0.37), (0.32, 0.32, 0.43, 0.43), (0.37, 0.21, 0.46, 0.38),
                 (0.37, 0.23, 0.46, 0.39), (0.25, 0.16, 0.37, 0.31), (0.30, 0.18, 0.42, 0.34)),
    "OPT-6.7B": ((0.68, 0.67, 0.64, 0.64), (0.52, 0.47, 0.55, 0.52), (0.60, 0.58, 0.59, 0.59),
                 (0.48, 0.41, 0.52, 0.49), (0.61, 0.58, 0.59, 0.58), (0.44, 0.41, 0.49, 0.48),
                 (0.44, 0.40, 0.50, 0.48), (0.13, 0.06, 0.28, 0.21), (0.37, 0.28, 0.45, 0.40)),
    "Falcon-7B": ((0.44, 0.35, 0.50, 0.46), (0.42, 0.32, 0.49, 0.44), (0.43, 0.33, 0.49, 0.45),
                  (0.33, 0.26, 0.44, 0.39), (0.19, 0.10, 0.33, 0.26), (0.11, 0.07, 0.26, 0.19),
                  (0.37, 0.22, 0.46, 0.38), (0.17, 0.10, 0.31, 0.26), (0.20, 0.13, 0.34, 0.29)),
    "LLaMA2-7B": ((0.42, 0.27, 0.49, 0.41), (0.42, 0.33, 0.49, 0.44), (0.41, 0.33, 0.49, 0.44),
                  (0.42, 0.30, 0.49, 0.42), (0.19, 0.13, 0.35, 0.32), (0.26, 0.14, 0.39, 0.33),
                  (0.42, 0.27, 0.49, 0.42), (0.14, 0.09, 0.29, 0.23), (0.35, 0.20, 0.45, 0.38)),
}

# Table 6: the tuned setting of each method per model (steps; LM-Steer's epsilon multiplier; beta; lambda).
_TABLE6 = (
    ("samples", 1e-5, "steps", (2000, 2000, 2000, 2000)),
    ("lmsteer", np.nan, "epsilon_multiplier", (-0.3, -0.2, -1.1, -1.1)),
    ("dexperts", np.nan, "beta", (0.1, 1.8, 1.5, 1.5)),
    ("task_arithmetic", np.nan, "lambda", (0.04, 0.14, 0.09, 0.04)),
    ("unidetox", 5e-5, "steps", (3000, 3000, 3000, 3000)),
    ("unidetox", 1e-5, "steps", (5000, 5000, 5000, 5000)),
)


def row_label(method: str, lr: float = np.nan) -> str:
    """``"UniDetox lr=5e-05"``: the display name of a method (with its learning rate when it has one)."""
    fine_tuned = method in methods.REGISTRY and methods.get(method).fine_tuned
    return f"{methods.label(method)} lr={lr:.0e}" if fine_tuned and not pd.isna(lr) else methods.label(method)


def _frame(model: str, rows, with_std: bool) -> pd.DataFrame:
    records = []
    for (method, lr), values in zip(ROWS, rows):
        record = {"model": model, "method": method, "lr": lr, "label": row_label(method, lr)}
        for column, value in zip(COLUMNS, values):
            mean, std = value if isinstance(value, tuple) else (value, np.nan)
            record[column] = mean
            if column.startswith(("TP", "EMT")):
                record[f"{column}_std"] = std if with_std else np.nan
        records.append(record)
    return pd.DataFrame(records)


def table1() -> pd.DataFrame:
    """Table 1 (GPT-2 XL, Detoxify; mean and std over five seeds; MMLU 1-shot, %)."""
    return _frame("GPT-2 XL", _TABLE1, with_std=True)


def table2() -> pd.DataFrame:
    """Table 2 (OPT-6.7B, Falcon-7B, LLaMA2-7B, Detoxify; means; MMLU 3-shot, %)."""
    return pd.concat([_frame(model, rows, with_std=False) for model, rows in _TABLE2.items()], ignore_index=True)


def table8() -> pd.DataFrame:
    """Table 8 (Perspective API, the paper's second instrument): TP and EMT means per model."""
    records = []
    for model, rows in _TABLE8.items():
        for (method, lr), values in zip(ROWS, rows):
            records.append({"model": model, "method": method, "lr": lr, "label": row_label(method, lr),
                            **dict(zip(("TP_ID", "TP_OOD", "EMT_ID", "EMT_OOD"), values))})
    return pd.DataFrame(records)


def table6() -> pd.DataFrame:
    """Table 6: the tuned hyper-parameter of each method per model."""
    records = [{"method": method, "lr": lr, "hparam": hparam, "label": row_label(method, lr), "model": model,
                "value": value}
               for method, lr, hparam, values in _TABLE6 for model, value in zip(MODELS, values)]
    return pd.DataFrame(records)
