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
# nb2prod: left out imports this stage never uses: Ridge, load_diabetes, train_test_split
import numpy as np

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

regressor = _nb2prod.load("regressor", producer="train")


# %% tags=["serve"]
def predict(payload):
    rows = np.asarray(payload["instances"], dtype=float)
    return {"predictions": regressor.predict(rows).round(2)}
