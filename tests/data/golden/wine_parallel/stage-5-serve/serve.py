# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: *
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
random_state = 0
n_estimators = 50

# %% tags=["imports"]
import numpy as np
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

best_model = _nb2prod.load("best_model", producer="evaluate")
best_name = _nb2prod.load("best_name", producer="evaluate")
classes = _nb2prod.load("classes", producer="prepare")


# %% tags=["serve"]
def predict(payload):
    X = np.asarray(payload["instances"], dtype=float)
    return {"model": best_name, "predictions": [classes[i] for i in best_model.predict(X)]}
