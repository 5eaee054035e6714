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
alpha = 1.0

# %% tags=["imports"]
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

regressor = _nb2prod.load("regressor", producer="train")


# %% tags=["serve"]
def predict(payload):
    rows = np.asarray(payload["instances"], dtype=float)
    return {"predictions": regressor.predict(rows).round(2)}
