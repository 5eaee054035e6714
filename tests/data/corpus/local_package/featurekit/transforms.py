import numpy as np

NUMERIC = ["tenure", "monthly_charges", "support_calls", "charges_per_tenure",
           "calls_per_year", "is_monthly"]


def add_ratios(frame):
    out = frame.copy()
    tenure = np.maximum(out["tenure"], 1)
    out["charges_per_tenure"] = out["monthly_charges"] / tenure
    out["calls_per_year"] = out["support_calls"] * 12 / tenure
    out["is_monthly"] = (out["contract"] == "month").astype(int)
    return out
