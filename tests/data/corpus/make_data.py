"""Write the corpus notebooks' small data files (run from anywhere; output is committed).

Everything is generated here with a fixed seed or taken from scikit-learn's bundled
datasets: no downloads, and the files stay small enough to keep the corpus fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets

HERE = Path(__file__).resolve().parent


def write(notebook: str, name: str, frame: pd.DataFrame) -> None:
    path = HERE / notebook / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")


def passengers(rng: np.random.Generator, rows: int = 400) -> pd.DataFrame:
    """A made-up passenger list in the shape of the well-known survival data."""
    pclass = rng.choice([1, 2, 3], rows, p=[0.25, 0.25, 0.5])
    sex = rng.choice(["male", "female"], rows, p=[0.6, 0.4])
    age = np.round(rng.normal(30, 13, rows).clip(1, 80))
    sibsp = rng.poisson(0.5, rows)
    parch = rng.poisson(0.4, rows)
    fare = np.round(rng.gamma(2.0, 12.0, rows) * (4 - pclass), 2)
    embarked = rng.choice(["S", "C", "Q"], rows, p=[0.7, 0.2, 0.1]).astype(object)
    logit = 1.2 * (sex == "female") * 2 - 0.9 * (pclass - 2) - 0.03 * (age - 30) - 0.8
    survived = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"PassengerId": np.arange(1, rows + 1), "Survived": survived,
                          "Pclass": pclass, "Name": [f"Passenger {i}" for i in range(rows)],
                          "Sex": sex, "Age": age, "SibSp": sibsp, "Parch": parch,
                          "Fare": fare, "Embarked": embarked})
    frame.loc[rng.random(rows) < 0.15, "Age"] = np.nan
    frame.loc[rng.random(rows) < 0.02, "Embarked"] = np.nan
    return frame


def customers(rng: np.random.Generator, rows: int = 360) -> pd.DataFrame:
    """Telecom-style churn table: numbers, categories and a binary label."""
    tenure = rng.integers(1, 72, rows)
    monthly = np.round(rng.uniform(20, 110, rows), 2)
    contract = rng.choice(["month", "one_year", "two_year"], rows, p=[0.55, 0.25, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows)
    support_calls = rng.poisson(1.5, rows)
    logit = (0.03 * (monthly - 65) - 0.05 * (tenure - 30) + 0.45 * support_calls
             + 1.1 * (contract == "month") - 1.0)
    churn = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"customer_id": [f"C{i:04d}" for i in range(rows)], "tenure": tenure,
                         "monthly_charges": monthly, "contract": contract, "region": region,
                         "support_calls": support_calls, "churn": churn})


def reviews(rng: np.random.Generator, rows: int = 300) -> pd.DataFrame:
    """Short product reviews built from word lists, with a sentiment label."""
    good = ["great", "excellent", "love", "perfect", "fast", "reliable", "happy", "recommend"]
    bad = ["broken", "slow", "terrible", "refund", "awful", "disappointed", "poor", "noisy"]
    neutral = ["the", "product", "arrived", "box", "it", "was", "and", "this", "after", "week"]
    texts, labels = [], []
    for _ in range(rows):
        label = int(rng.random() < 0.5)
        words = list(rng.choice(neutral, 6)) + list(rng.choice(good if label else bad, 2))
        words += list(rng.choice(bad if label else good, int(rng.random() < 0.2)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels})


def sales(rng: np.random.Generator, days: int = 240) -> pd.DataFrame:
    """Daily sales of two stores with a weekly cycle, a trend and noise."""
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    frames = []
    for store, base in (("A", 120.0), ("B", 80.0)):
        weekly = 15 * np.sin(2 * np.pi * dates.day_of_week / 7)
        trend = np.linspace(0, 20, days)
        units = np.round(base + weekly + trend + rng.normal(0, 6, days), 1)
        frames.append(pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "store": store,
                                    "units": units, "promo": rng.random(days) < 0.1}))
    return pd.concat(frames, ignore_index=True).sort_values(["date", "store"])


def bundled(loader, rows: int | None = None, columns: int | None = None) -> pd.DataFrame:
    bunch = loader(as_frame=True)
    frame = bunch.frame
    if columns is not None:
        frame = frame[[*frame.columns[:columns], "target"]]
    return frame.head(rows) if rows else frame


def main() -> None:
    rng = np.random.default_rng(20261201)
    write("titanic_kaggle", "train.csv", passengers(rng))
    write("kale_titanic", "passengers.csv", passengers(rng, 300))
    write("churn_gridsearch", "customers.csv", customers(rng))
    write("csv_handoff", "raw_customers.csv", customers(rng, 240))
    write("local_package", "customers.csv", customers(rng, 240))
    write("text_reviews", "reviews.csv", reviews(rng))
    (HERE / "text_reviews" / "data" / "labels.json").write_text(
        json.dumps({"0": "negative", "1": "positive"}, indent=2) + "\n")
    write("sales_forecast", "sales.csv", sales(rng))
    write("xgb_dmatrix", "breast_cancer.csv", bundled(datasets.load_breast_cancer, columns=10))
    write("lightgbm_native", "wine.csv", bundled(datasets.load_wine))
    write("polars_features", "diabetes.csv", bundled(datasets.load_diabetes))
    write("regression_plots", "diabetes.csv", bundled(datasets.load_diabetes))
    write("kmeans_segments", "wine.csv", bundled(datasets.load_wine))
    write("parallel_evaluation", "breast_cancer.csv",
          bundled(datasets.load_breast_cancer, columns=10))
    write("boosting_bakeoff", "churn.csv", customers(rng, 300))
    write("env_config", "wine.csv", bundled(datasets.load_wine))


if __name__ == "__main__":
    main()
