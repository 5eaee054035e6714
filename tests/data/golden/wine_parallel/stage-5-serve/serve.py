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
# nb2prod: left out imports this stage never uses: LogisticRegression, RandomForestClassifier, StandardScaler, load_wine, make_pipeline, train_test_split
import numpy as np

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
