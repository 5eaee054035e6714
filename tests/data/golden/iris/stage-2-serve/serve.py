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
test_size = 0.2
random_state = 42
max_iter = 200

# %% tags=["imports"]
# nb2prod: left out imports this stage never uses: LogisticRegression, load_iris, train_test_split
import numpy as np

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

model = _nb2prod.load("model", producer="train")
species = _nb2prod.load("species", producer="train")


# %% tags=["serve"]
def predict(payload):
    X = np.asarray(payload["instances"], dtype=float)
    return {"predictions": [species[i] for i in model.predict(X)]}
