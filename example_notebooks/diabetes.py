# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Diabetes progression (a jupytext percent notebook)
#
# Ridge regression on scikit-learn's bundled diabetes data, served as JSON.
# `nb2prod split diabetes.py` works on this text file directly.

# %% tags=["parameters"]
alpha = 1.0

# %% tags=["imports"]
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split

# %% tags=["stage:train"]
X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
regressor = Ridge(alpha=alpha)
regressor.fit(X_train, y_train)

# %% tags=["metrics"]
r2 = regressor.score(X_test, y_test)
r2

# %% tags=["serve"]
def predict(payload):
    rows = np.asarray(payload["instances"], dtype=float)
    return {"predictions": regressor.predict(rows).round(2)}
